"""Versioned model artifacts with atomic publication.

Layout::

    <root>/<name>/v0001/model.json    kind, version, spec, settings, checksum, fit report
    <root>/<name>/v0001/weights.npz   every learned number (numpy, allow_pickle=False)
    <root>/<name>/latest -> v0001     symlink, repointed atomically

A version is written into a hidden temporary directory and renamed into place, and
``latest`` is replaced with ``os.replace`` of a fresh symlink, so a reader never sees a
half-written model. A writer killed half way leaves its ``.tmp-*`` directory behind: those
older than :data:`STALE_SECONDS` are removed when a store is opened (:func:`open_store`,
which every writer calls).

Loading refuses, with :class:`ModelError` naming the file and the key, anything that is not
a usable model: model.json not matching its schema (:func:`validate_meta`: every key, type
and shape), weights that fail the SHA-256 in model.json, lack an array or hold a NaN/inf
(:func:`~mbrl_ros.core.models.base.check_finite_arrays`), a model of other joints than
expected, and (given a state) a model whose one-step prediction is not finite.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, ModelError, ModelSpec,
                                       check_finite_arrays, check_one_step)
from mbrl_ros.core.settings import SettingsError, as_dict, from_mapping

FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")       # a model's folder name
# A temporary directory untouched for this long [s] belongs to a writer that died (a
# publish takes well under a second per MB of weights).
STALE_SECONDS = 60.0


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
        """Parse an announcement (it comes from the network).

        Raises:
            ModelError: not JSON, or a key missing or of the wrong type (named).
        """
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError, RecursionError) as e:
            raise ModelError(f"model announcement is not JSON: {e}") from e
        if not isinstance(d, dict):
            raise ModelError(f"model announcement must be a JSON object; got {_short(d)}")
        checks = (("uri", "a non-empty string", lambda v: isinstance(v, str) and v != ""),
                  ("kind", "a string", lambda v: isinstance(v, str)),
                  ("version", "an integer >= 0", lambda v: _is_int(v) and v >= 0),
                  ("checksum", "a SHA-256 (64 hex digits)",
                   lambda v: isinstance(v, str) and bool(_SHA256_RE.match(v))))
        for key, what, ok in checks:
            if key not in d or not ok(d[key]):
                got = _short(d[key]) if key in d else "it is missing"
                raise ModelError(f"model announcement: key {key!r} must be {what}; "
                                 f"got {got}")
        metrics = d.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ModelError(f"model announcement: key 'metrics' must be an object; got "
                             f"{_short(metrics)}")
        return cls(d["uri"], d["kind"], d["version"], d["checksum"], dict(metrics))


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


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` or anything directly in it last changed (a writer that is
    still at work touches the files it writes)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for p in path.iterdir():
            try:
                newest = max(newest, p.lstat().st_mtime)
            except FileNotFoundError:
                pass
    return now - newest


def remove_stale(base: Path, max_age: float = STALE_SECONDS) -> list[str]:
    """Remove the ``.tmp-*`` directories and ``.latest-*`` links a killed writer left in
    ``base`` (one model's folder) once untouched for ``max_age`` [s]; younger ones may
    belong to a writer at work. Returns the names removed. Errors are not raised: a folder
    another process removes first, or one without permission, stays for the next time."""
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not (p.name.startswith(".tmp-") or p.name.startswith(".latest-")):
            continue
        try:
            if _age(p, now) < max_age:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed


def open_store(root: str | Path, name: str) -> Path:
    """The folder of model ``name`` under ``root`` (created), with what killed writers
    left behind removed (:func:`remove_stale`). Every writer calls it."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ModelError(f"artifact name {name!r} is not a plain name")
    base = Path(root).expanduser().resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    return base


def point_latest(base: str | Path, version: int) -> None:
    """Repoint ``base/latest`` (``base``: a model's folder, ``<root>/<name>``) to version
    ``vNNNN``: a fresh symlink renamed over the old one, so a reader sees either.

    Raises:
        OSError: the folder cannot be written.
    """
    base = Path(base)
    link_tmp = base / f".latest-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(f"v{version:04d}", link_tmp)
    os.replace(link_tmp, base / "latest")


def publish(model: DynamicsModel, root: str | Path, name: str,
            report: FitReport | None = None) -> ArtifactInfo:
    """Write ``model`` as the next version of ``name`` and repoint ``latest`` to it.

    Raises:
        ModelError: the model was never fitted, or a weight is NaN/inf (never published).
        OSError: the store cannot be written.
    """
    if model.spec is None:
        raise ModelError("cannot publish a model that was never fitted (no spec)")
    arrays = model.state_arrays()
    check_finite_arrays(arrays, f"{model.kind} model {name!r}")
    base = open_store(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
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
        point_latest(base, version)
        _fsync_dir(base)            # the renames survive a power cut once this returns
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics = dict(report.metrics) if report else {}
    return ArtifactInfo(str(target), model.kind, version, checksum, metrics)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_meta(meta: Any, where: str | Path) -> dict[str, Any]:
    """Check a parsed model.json against its schema (format :data:`FORMAT`).

    ====================  ============================================================
    key                   type
    ====================  ============================================================
    format                int, equal to FORMAT
    kind                  non-empty str (a registered model kind, or a policy kind)
    version               int >= 0
    checksum              str, SHA-256 of weights.npz (64 lower-case hex digits)
    spec.nx, spec.nu      int >= 1
    spec.state_names      list of nx distinct str
    spec.action_names     list of nu distinct str
    spec.dt               finite number > 0 [s]
    spec.robot            str (optional)
    spec.periodic         list of distinct int in [0, nx) (optional)
    settings              object or null (optional)
    report                object or null (optional)
    created               str (optional)
    ====================  ============================================================

    Keys not listed are ignored (kept in the returned dict).

    Args:
        meta: the parsed JSON.
        where: the file, named in errors.

    Returns:
        ``meta`` (unchanged).

    Raises:
        ModelError: naming ``where`` and the first key that is missing or wrong.
    """
    def bad(key: str, what: str, value: Any = None, missing: bool = False) -> ModelError:
        got = "it is missing" if missing else f"got {_short(value)}"
        return ModelError(f"{where}: key {key!r} must be {what}; {got}")

    def need(d: dict, key: str, full: str, what: str, ok: Callable[[Any], bool]) -> Any:
        if key not in d:
            raise bad(full, what, missing=True)
        if not ok(d[key]):
            raise bad(full, what, d[key])
        return d[key]

    def names(v: Any, n: int) -> bool:
        return (isinstance(v, list) and len(v) == n and all(isinstance(x, str) for x in v)
                and len(set(v)) == n)

    if not isinstance(meta, dict):
        raise ModelError(f"{where}: must hold a JSON object; got {type(meta).__name__}")
    need(meta, "format", "format", f"the integer {FORMAT}",
         lambda v: _is_int(v) and v == FORMAT)
    need(meta, "kind", "kind", "a non-empty string", lambda v: isinstance(v, str) and v != "")
    need(meta, "version", "version", "an integer >= 0", lambda v: _is_int(v) and v >= 0)
    need(meta, "checksum", "checksum", "the SHA-256 of weights.npz (64 hex digits)",
         lambda v: isinstance(v, str) and bool(_SHA256_RE.match(v)))
    spec = need(meta, "spec", "spec", "an object", lambda v: isinstance(v, dict))
    nx = need(spec, "nx", "spec.nx", "an integer >= 1", lambda v: _is_int(v) and v >= 1)
    nu = need(spec, "nu", "spec.nu", "an integer >= 1", lambda v: _is_int(v) and v >= 1)
    need(spec, "state_names", "spec.state_names", f"a list of {nx} distinct strings",
         lambda v: names(v, nx))
    need(spec, "action_names", "spec.action_names", f"a list of {nu} distinct strings",
         lambda v: names(v, nu))
    need(spec, "dt", "spec.dt", "a finite number > 0 (seconds)",
         lambda v: _is_number(v) and v > 0)
    if "robot" in spec and not isinstance(spec["robot"], str):
        raise bad("spec.robot", "a string", spec["robot"])
    if "periodic" in spec and not (
            isinstance(spec["periodic"], list)
            and all(_is_int(i) and 0 <= i < nx for i in spec["periodic"])
            and len(set(spec["periodic"])) == len(spec["periodic"])):
        raise bad("spec.periodic", f"a list of distinct state indices in [0, {nx})",
                  spec["periodic"])
    for key in ("settings", "report"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, "an object or null", meta[key])
    if "created" in meta and not isinstance(meta["created"], str):
        raise bad("created", "a string", meta["created"])
    return meta


def read_meta(uri: str | Path) -> dict[str, Any]:
    """The artifact's model.json, checked against the schema (:func:`validate_meta`).

    Raises:
        ModelError: no model.json, unreadable, not JSON, or not matching the schema.
    """
    path = Path(str(uri).removeprefix("file://"))
    file = path / "model.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise ModelError(f"{path}: not a model artifact (no model.json)") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{file} is corrupt: {e}") from e
    except OSError as e:
        raise ModelError(f"{file}: unreadable: {e}") from e
    return validate_meta(meta, file)


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
        ModelError: missing/corrupt/truncated files, model.json not matching its schema,
            checksum mismatch, NaN/inf weights, other robot.
    """
    path = Path(str(uri).removeprefix("file://")).resolve()
    meta = read_meta(path)
    weights = path / "weights.npz"
    if not weights.exists():
        raise ModelError(f"{path}: weights.npz is missing")
    try:
        actual = _sha256(weights)
    except OSError as e:
        raise ModelError(f"{weights}: unreadable: {e}") from e
    if actual != meta["checksum"]:
        raise ModelError(f"{weights}: checksum {actual[:12]}… does not match model.json "
                         f"({meta['checksum'][:12]}…): truncated or modified")
    if checksum is not None and actual != checksum:
        raise ModelError(f"{weights}: checksum {actual[:12]}… is not the announced "
                         f"{checksum[:12]}…")
    spec = ModelSpec.from_json(meta["spec"])
    if expect is not None:
        try:
            expect.check_compatible(spec)
        except ModelError as e:
            raise ModelError(f"{path}/model.json: key 'spec': {e}") from e
    try:
        z = np.load(weights, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive (a single .npy array)")
        with z:
            arrays = {k: z[k] for k in z.files}
    # zipfile raises NotImplementedError for a compression method it lacks (a weights file
    # written by another tool), RuntimeError for an encrypted member: both are bad input.
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error,
            NotImplementedError, RuntimeError) as e:
        raise ModelError(f"{weights}: unreadable: {type(e).__name__}: {e}") from e
    check_finite_arrays(arrays, str(weights))
    return path, meta, spec, arrays


# What building a model from untrusted settings and arrays may raise besides ModelError
# (a model's own checks, numpy/torch on arrays of the wrong shape or type).
_BUILD_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, RuntimeError,
                 ArithmeticError, OSError)


def load(uri: str | Path, expect: ModelSpec | None = None,
         checksum: str | None = None, state: np.ndarray | None = None) -> DynamicsModel:
    """Load and verify a dynamics-model artifact (see :func:`read_verified`).

    Args:
        uri, expect, checksum: as :func:`read_verified`.
        state: (nx,) a state [rad, m, rad/s, m/s] the model must predict one finite step
            from (with zero effort): the robot's current or home state. None: not checked.

    Raises:
        ModelError: missing/corrupt/truncated files, model.json not matching its schema,
            checksum mismatch, other robot, unknown model kind, settings or arrays that do
            not make a model of that kind (a missing array is named), NaN/inf weights, a
            non-finite one-step prediction from ``state``.
    """
    path, meta, spec, arrays = read_verified(uri, expect, checksum)
    json_file, weights = path / "model.json", path / "weights.npz"
    kind = meta["kind"]
    try:
        cls = registry.lookup("model", kind)
    except KeyError as e:
        raise ModelError(f"{json_file}: key 'kind': {e.args[0]}") from e
    try:
        settings = from_mapping(cls.Settings, meta.get("settings") or {})
    except (SettingsError, ValueError, TypeError) as e:
        raise ModelError(f"{json_file}: key 'settings': {e}") from e
    try:
        model = cls(settings, spec)
    except _BUILD_ERRORS as e:
        raise ModelError(f"{json_file}: keys 'settings'/'spec' do not make a {kind} model: "
                         f"{type(e).__name__}: {e}") from e
    try:
        model.load_state_arrays(arrays)
    except KeyError as e:
        raise ModelError(f"{weights}: lacks array {e.args[0]!r} (a {kind} model needs it)"
                         ) from e
    except ModelError as e:
        raise ModelError(f"{weights}: {e}") from e
    except _BUILD_ERRORS as e:
        raise ModelError(f"{weights}: the arrays do not make a {kind} model with the spec "
                         f"in model.json: {type(e).__name__}: {e}") from e
    if state is not None:
        check_one_step(model, state, str(path))
    return model


def pack(uri: str | Path) -> bytes:
    """The artifact directory as one zip (for hosts without a shared file system)."""
    path = Path(str(uri).removeprefix("file://"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in ("model.json", "weights.npz"):
            z.write(path / name, name)
    return buf.getvalue()



def unpack(data: bytes, root: str | Path, name: str, version: int,
           checksum: str | None = None) -> Path:
    """Write a packed artifact under ``root/name/vNNNN`` (atomically) and return it.

    An existing copy is reused only if its weights have ``checksum`` (a fitter restarted
    with a fresh store numbers its versions from 1 again); otherwise the artifact goes to
    ``vNNNN-<checksum prefix>``. ``name`` comes from the network: path separators and
    '..' are refused.
    """
    base = open_store(root, name)           # refuses a name with separators or '..'
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
