"""``lg_controller`` artifacts: one time-varying linear-Gaussian controller (and, for a GPS
sample, the exploration noise it is to be executed with) in the model store.

Arrays (weights.npz): ``K`` (T, nu, nx), ``k`` (T, nu), ``xbar`` (T, nx), ``cov``
(T, nu, nu), ``u_min``/``u_max`` (nu,), optional ``noise`` (T, nu) standard-normal draws
(step t's action is ``K_t x + k_gps_t + chol(cov_t) noise_t``, the exact arithmetic of
:meth:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy.sample`). The spec
names the state and action (joint) names, so a controller for another robot is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core import store
from mbrl_ros.core.models.base import ModelError, ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import setting

__all__ = ["LG_KIND", "publish_lg_controller", "load_lg_controller"]

LG_KIND = "lg_controller"


@dataclass(frozen=True)
class LGArtifactSettings:
    """What model.json records of an lg_controller artifact."""
    steps: int = setting(1, "steps T of the controller", low=1)
    noise: bool = setting(False, "the artifact carries its exploration noise")


@dataclass
class _LGArtifact:
    spec: ModelSpec
    settings: LGArtifactSettings
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    kind: str = LG_KIND

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.arrays


def publish_lg_controller(controller: LinearGaussianPolicy, root: str | Path, name: str,
                          spec: ModelSpec, noise: np.ndarray | None = None,
                          report=None) -> store.ArtifactInfo:
    """Write ``controller`` (with ``noise`` (T, nu), if given) as the next version of
    ``<root>/<name>`` (atomic, ``latest`` repointed).

    Raises:
        ValueError: no covariance, spec dimensions or noise shape differ from the
            controller's.
        ModelError: a NaN/inf array (never published).
    """
    if controller.cov is None:
        raise ValueError("lg_controller: the controller has no covariance")
    T, nu, nx = controller.K.shape
    if (spec.nx, spec.nu) != (nx, nu):
        raise ValueError(f"spec is for nx={spec.nx}, nu={spec.nu}; the controller has "
                         f"nx={nx}, nu={nu}")
    arrays = {"K": controller.K, "k": controller.k, "xbar": controller.xbar,
              "cov": controller.cov, "u_min": controller.u_min, "u_max": controller.u_max}
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (T, nu):
            raise ValueError(f"noise must have shape {(T, nu)}, got {noise.shape}")
        arrays["noise"] = noise
    return store.publish(_LGArtifact(spec, LGArtifactSettings(T, noise is not None), arrays),
                         root, name, report)


def load_lg_controller(uri: str | Path, expect: ModelSpec | None = None
                       ) -> tuple[LinearGaussianPolicy, np.ndarray | None, dict[str, Any]]:
    """Load and verify an lg_controller artifact.

    Returns:
        (controller with t0 = 0, noise (T, nu) or None, model.json plus ``spec`` and
        ``path``, the resolved version directory).

    Raises:
        ModelError: not an lg_controller artifact, missing/corrupt files, inconsistent
            arrays, or (with ``expect``) other state/action names.
    """
    meta = store.read_meta(Path(str(uri).removeprefix("file://")).resolve())
    if meta.get("kind") != LG_KIND:
        raise ModelError(f"{uri}: artifact kind {meta.get('kind')!r} is not {LG_KIND!r}")
    path, meta, spec, a = store.read_verified(uri, expect)
    try:
        ctrl = LinearGaussianPolicy(K=a["K"], k=a["k"], xbar=a["xbar"], cov=a["cov"], t0=0.0,
                                    dt=spec.dt, u_min=a["u_min"], u_max=a["u_max"])
        noise = a.get("noise")
        if noise is not None and noise.shape != ctrl.k.shape:
            raise ValueError(f"noise has shape {noise.shape}, the controller {ctrl.k.shape}")
    except (KeyError, ValueError, np.linalg.LinAlgError) as e:
        raise ModelError(f"{path}: inconsistent lg_controller arrays: {e}") from e
    if (ctrl.nx, ctrl.nu) != (spec.nx, spec.nu):
        raise ModelError(f"{path}: arrays are for nx={ctrl.nx}, nu={ctrl.nu} but model.json "
                         f"says nx={spec.nx}, nu={spec.nu}")
    return ctrl, noise, dict(meta, spec=spec, path=str(path))
