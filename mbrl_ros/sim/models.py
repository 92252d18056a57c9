"""Shipped MuJoCo (MJCF) models and lookup of model files by name or path.

The models live in ``mbrl_ros/sim/assets/*.xml`` and are installed as package data, so they
are located with :mod:`importlib.resources` rather than relative to the source tree.
"""
from __future__ import annotations

import pathlib
from importlib import resources

__all__ = ["available_models", "resolve_model"]

_ASSET_PACKAGE = "mbrl_ros.sim"
_ASSET_DIR = "assets"


def _assets_dir() -> pathlib.Path:
    """Directory holding the shipped MJCF files.

    ``mbrl_ros`` is installed as a regular (unzipped) package, so the resource traversable
    is a real directory and MuJoCo can open files from it by path.
    """
    return pathlib.Path(str(resources.files(_ASSET_PACKAGE).joinpath(_ASSET_DIR)))


def available_models() -> list[str]:
    """Names of the shipped models.

    Returns:
        Sorted model names, i.e. the stems of ``mbrl_ros/sim/assets/*.xml``
        (``['arm2', 'arm7', 'cartpole']``).
    """
    return sorted(p.stem for p in _assets_dir().glob("*.xml") if p.is_file())


def resolve_model(name_or_path: str) -> pathlib.Path:
    """Find an MJCF file from a shipped model name or a filesystem path.

    A shipped name takes precedence, so ``"arm2"`` always means the packaged model even if
    the working directory happens to contain a file called ``arm2``.

    Args:
        name_or_path: A name from :func:`available_models`, or the path of an existing
            ``.xml`` file (``~`` is expanded).

    Returns:
        Absolute path of the MJCF file.

    Raises:
        ValueError: If the input is neither a shipped model name nor an existing ``.xml``
            file; the message names the input and lists the available model names.
    """
    name = str(name_or_path)
    if name in available_models():
        return (_assets_dir() / f"{name}.xml").resolve()
    path = pathlib.Path(name).expanduser()
    if path.suffix.lower() == ".xml" and path.is_file():
        return path.resolve()
    raise ValueError(
        f"unknown model {name!r}: not a shipped model and not an existing .xml file; "
        f"available models: {', '.join(available_models())}"
    )
