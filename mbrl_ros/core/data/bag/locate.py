"""Finding bags on disk: rosbag2 directories, their metadata.yaml and bare storage files.

A path given to :func:`~mbrl_ros.core.data.bag.read_bag` resolves to *units*: a rosbag2
directory (with metadata.yaml), or a bare ``.mcap`` / ``.db3`` file (also the storage files
of a recorder killed before it wrote metadata.yaml). Files are recognised by their magic
bytes, not their names; directories of bag directories are read in natural name order
(``bag_2`` before ``bag_10``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import BagError


MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"


def bag_info(bagdir: Path) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` mapping of ``bagdir/metadata.yaml``.

    Raises whatever reading or parsing raises (OSError, yaml.YAMLError, KeyError,
    TypeError): each caller decides what a missing or unreadable metadata.yaml means.
    """
    import yaml  # PyYAML

    return yaml.safe_load((bagdir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


@dataclass
class _Unit:
    kind: str  # 'rosbag2' (directory with metadata.yaml) or 'mcap' / 'db3' (bare file)
    path: Path


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _sniff(p: Path) -> str:
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise BagError(f"{p}: cannot open: {exc}") from None
    if size == 0:
        raise BagError(f"{p}: empty file (0 bytes), not a bag")
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "db3"
    if head.startswith(MCAP_MAGIC[: min(len(head), 8)]):
        raise BagError(f"{p}: truncated MCAP file ({size} bytes, shorter than the magic)")
    raise BagError(f"{p}: not a bag file (no MCAP or SQLite3 magic; starts with {head[:8]!r})")


def _has_bag_content(d: Path, depth: int = 0) -> bool:
    if (d / "metadata.yaml").is_file():
        return True
    try:
        entries = list(d.iterdir())
    except OSError:
        return False
    if any(e.is_file() and e.suffix in (".mcap", ".db3") for e in entries):
        return True
    return depth < 4 and any(e.is_dir() and _has_bag_content(e, depth + 1) for e in entries)


def _resolve(p: Path) -> list[_Unit]:
    if not p.exists():
        raise BagError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name == "metadata.yaml":
            return _resolve(p.parent)
        return [_Unit(_sniff(p), p)]
    if not p.is_dir():
        raise BagError(f"{p}: not a file or directory")
    if (p / "metadata.yaml").is_file():
        return [_Unit("rosbag2", p)]
    entries = sorted(p.iterdir(), key=_natural_key)
    files = [e for e in entries if e.is_file() and e.suffix in (".mcap", ".db3")]
    if files:  # a bag directory whose recorder never wrote metadata.yaml (killed), or loose files
        return [_Unit(_sniff(f), f) for f in files]
    units: list[_Unit] = []
    for sub in entries:
        if sub.is_dir() and not sub.name.startswith(".") and _has_bag_content(sub):
            units.extend(_resolve(sub))
    if not units:
        raise BagError(f"{p}: no rosbag2 bag (metadata.yaml) and no .mcap/.db3 file in this directory")
    return units


def _storage_files(bagdir: Path) -> list[Path]:
    """Storage files of a rosbag2 directory: those listed in metadata.yaml, else all .mcap/.db3."""
    try:
        listed = [bagdir / Path(x).name for x in bag_info(bagdir)["relative_file_paths"]]
    except Exception:  # noqa: BLE001 - unreadable metadata: fall back to globbing
        listed = []
    present = sorted((e for e in bagdir.iterdir() if e.is_file() and e.suffix in (".mcap", ".db3")), key=_natural_key)
    out = [p for p in listed if p.exists()]
    out += [p for p in present if p not in out]
    return out


def _rosbag2_compressed(bagdir: Path) -> bool:
    """True if metadata.yaml says the bag uses rosbag2 compression (message or file mode)."""
    try:
        info = bag_info(bagdir)
        return bool(info.get("compression_mode") or info.get("compression_format"))
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the files tell
        return False
