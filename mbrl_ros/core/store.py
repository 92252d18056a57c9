"""Versioned model artifacts with atomic publication.

Layout::

    <root>/<name>/v0001/model.json    kind, version, spec, settings, checksum, fit report
    <root>/<name>/v0001/weights.npz   every learned number (numpy, allow_pickle=False)
    <root>/<name>/latest -> v0001     symlink, repointed atomically

A version is written into a hidden temporary directory and renamed into place, and
``latest`` is replaced with ``os.replace`` of a fresh symlink, so a reader never sees a
half-written model. Loading verifies the weights' SHA-256 against model.json and, when
asked, that the model is for the expected joints: a truncated file or a model of another
robot is refused with the reason.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import DynamicsModel, FitReport, ModelError, ModelSpec
from mbrl_ros.core.settings import as_dict, from_mapping

FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ArtifactInfo:
    """Announcement of a published model (what the fitter sends to controllers)."""
    uri: str            # absolute path of the version directory
    kind: str
    version: int
    checksum: str       # sha256 of weights.npz
    metrics: dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ArtifactInfo":
        d = json.loads(text)
        return cls(str(d["uri"]), str(d["kind"]), int(d["version"]), str(d["checksum"]),
                   dict(d.get("metrics", {})))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(root: str | Path, name: str) -> list[int]:
    d = Path(root) / name
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_RE.match(p.name)))


def publish(model: DynamicsModel, root: str | Path, name: str,
            report: FitReport | None = None) -> ArtifactInfo:
    """Write ``model`` as the next version of ``name`` and repoint ``latest`` to it."""
    if model.spec is None:
        raise ModelError("cannot publish a model that was never fitted (no spec)")
    base = Path(root).expanduser().resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        arrays = model.state_arrays()
        with open(tmp / "weights.npz", "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        checksum = _sha256(tmp / "weights.npz")
        # Claim the version number by renaming: concurrent publishers cannot collide.
        while True:
            version = (versions(root, name) or [0])[-1] + 1
            meta = {"format": FORMAT, "kind": model.kind, "version": version,
                    "spec": model.spec.to_json(), "settings": as_dict(model.settings),
                    "checksum": checksum,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "report": report.to_json() if report else None}
            with open(tmp / "model.json", "w") as f:
                f.write(json.dumps(meta, indent=2))
                f.flush()
                os.fsync(f.fileno())
            target = base / f"v{version:04d}"
            try:
                os.rename(tmp, target)
                break
            except OSError:
                if not target.exists():
                    raise
        link_tmp = base / f".latest-{os.getpid()}"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(target.name, link_tmp)
        os.replace(link_tmp, base / "latest")
        _fsync_dir(base)            # the renames survive a power cut once this returns
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics = dict(report.metrics) if report else {}
    return ArtifactInfo(str(target), model.kind, version, checksum, metrics)


def read_meta(uri: str | Path) -> dict[str, Any]:
    path = Path(str(uri).removeprefix("file://"))
    try:
        meta = json.loads((path / "model.json").read_text())
    except FileNotFoundError as e:
        raise ModelError(f"{path}: not a model artifact (no model.json)") from e
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}/model.json is corrupt: {e}") from e
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: artifact format {meta.get('format')!r} is not {FORMAT}")
    return meta


def read_verified(uri: str | Path, expect: ModelSpec | None = None,
                  checksum: str | None = None
                  ) -> tuple[Path, dict[str, Any], ModelSpec, dict[str, np.ndarray]]:
    """Read an artifact of any kind and verify it, without building anything from it.

    Args:
        uri: a version directory, or ``<root>/<name>/latest`` (resolved once, so a publish
            repointing it meanwhile cannot pair one version's model.json with another's
            weights).
        expect: refuse the artifact unless it has these state and action names.
        checksum: refuse unless the weights have this SHA-256 (from an announcement).

    Returns:
        The resolved version directory, model.json, its spec and the weight arrays.

    Raises:
        ModelError: missing/corrupt/truncated files, checksum mismatch, other robot.
    """
    path = Path(str(uri).removeprefix("file://")).resolve()
    meta = read_meta(path)
    weights = path / "weights.npz"
    if not weights.exists():
        raise ModelError(f"{path}: weights.npz is missing")
    actual = _sha256(weights)
    if actual != meta["checksum"]:
        raise ModelError(f"{weights}: checksum {actual[:12]}… does not match model.json "
                         f"({meta['checksum'][:12]}…): truncated or modified")
    if checksum is not None and actual != checksum:
        raise ModelError(f"{weights}: checksum {actual[:12]}… is not the announced "
                         f"{checksum[:12]}…")
    spec = ModelSpec.from_json(meta["spec"])
    if expect is not None:
        expect.check_compatible(spec)
    try:
        with np.load(weights, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ModelError(f"{weights}: unreadable: {e}") from e
    return path, meta, spec, arrays


def load(uri: str | Path, expect: ModelSpec | None = None,
         checksum: str | None = None) -> DynamicsModel:
    """Load and verify a dynamics-model artifact (see :func:`read_verified`).

    Raises:
        ModelError: missing/corrupt/truncated files, checksum mismatch, other robot,
            unknown model kind.
    """
    path, meta, spec, arrays = read_verified(uri, expect, checksum)
    try:
        cls = registry.lookup("model", meta["kind"])
    except KeyError as e:
        raise ModelError(f"{path}: {e.args[0]}") from e
    settings = from_mapping(cls.Settings, meta.get("settings") or {})
    model = cls(settings, spec)
    model.load_state_arrays(arrays)
    return model


def pack(uri: str | Path) -> bytes:
    """The artifact directory as one zip (for hosts without a shared file system)."""
    path = Path(str(uri).removeprefix("file://"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in ("model.json", "weights.npz"):
            z.write(path / name, name)
    return buf.getvalue()


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def unpack(data: bytes, root: str | Path, name: str, version: int,
           checksum: str | None = None) -> Path:
    """Write a packed artifact under ``root/name/vNNNN`` (atomically) and return it.

    An existing copy is reused only if its weights have ``checksum`` (a fitter restarted
    with a fresh store numbers its versions from 1 again); otherwise the artifact goes to
    ``vNNNN-<checksum prefix>``. ``name`` comes from the network: path separators and
    '..' are refused.
    """
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ModelError(f"received artifact name {name!r} is not a plain name")
    base = Path(root).expanduser().resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    target = base / f"v{int(version):04d}"
    if target.exists():
        if checksum is None or _sha256(target / "weights.npz") == checksum:
            return target
        target = base / f"v{int(version):04d}-{checksum[:12]}"
        if target.exists():
            return target
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for member in ("model.json", "weights.npz"):
                (tmp / member).write_bytes(z.read(member))
        os.rename(tmp, target)
    except (zipfile.BadZipFile, KeyError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"received artifact for {name} v{version} is corrupt: {e}") from e
    return target
