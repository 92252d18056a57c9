"""Artifacts with faults a store loader must refuse: a small arm2 linear model, published
through the store, then damaged on disk as a broken fitter or a hand edit would (with the
checksum in model.json made to match again, so only the fault under test is left)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mbrl_ros.core import store
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.models.linear import LinearModel

ARM2_JOINTS = ("shoulder", "elbow")
DT = 0.01


def arm2_linear(actions: tuple[str, ...] = ARM2_JOINTS, joints=ARM2_JOINTS) -> LinearModel:
    """A stable linear model x' = A x + B u + c of a double integrator per joint, with
    the arm2 layout (or the given joints / action names); dt = 10 ms."""
    n, nu = len(joints), len(actions)
    spec = ModelSpec(2 * n, nu, tuple(f"{j}/position" for j in joints)
                     + tuple(f"{j}/velocity" for j in joints), tuple(actions), DT, "arm2")
    m = LinearModel(spec=spec)
    m.A = np.eye(2 * n) + np.diag(np.full(n, DT), n)
    m.B = np.zeros((2 * n, nu))
    m.B[n:, :min(n, nu)] = 0.5 * DT * np.eye(n)[:, :min(n, nu)]
    m.c = np.zeros(2 * n)
    m.var = np.full(2 * n, 1e-8)
    return m


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """An .npz file of ``arrays`` under any names (np.savez(buf, **arrays) refuses an array
    named 'file', its own argument: a fuzz example found it)."""
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, a in arrays.items():
            item = io.BytesIO()
            np.lib.format.write_array(item, np.asanyarray(a), allow_pickle=False)
            z.writestr(f"{name}.npy", item.getvalue())
    return buf.getvalue()


def rewrite(uri: str | Path, arrays: dict[str, Any] | None = None,
            meta: Callable[[dict], Any] | None = None, weights: bytes | None = None,
            meta_text: str | None = None) -> Path:
    """Damage an artifact in place: new weight ``arrays`` (or raw ``weights`` bytes), then
    ``meta(d)`` edits model.json (or ``meta_text`` replaces it). The checksum is updated to
    the new weights before ``meta`` runs, so a test can still remove or break it."""
    path = Path(uri)
    if arrays is not None:
        weights = npz_bytes(arrays)
    if weights is not None:
        (path / "weights.npz").write_bytes(weights)
    d = json.loads((path / "model.json").read_text())
    d["checksum"] = sha256((path / "weights.npz").read_bytes())
    if meta is not None:
        meta(d)
    (path / "model.json").write_text(meta_text if meta_text is not None else json.dumps(d))
    return path


def published(tmp_path: Path, model=None, name: str = "arm2") -> store.ArtifactInfo:
    model = arm2_linear() if model is None else model
    return store.publish(model, tmp_path, name)


def with_nan(arrays: dict[str, np.ndarray], key: str = "A") -> dict[str, np.ndarray]:
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    out[key].flat[0] = np.nan
    return out
