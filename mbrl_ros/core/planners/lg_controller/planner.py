"""``lg_controller`` planner: executes a given time-varying linear-Gaussian controller with
seeded exploration noise (no optimisation).

Guided policy search (:mod:`mbrl_ros.core.algorithms.gps`) samples each condition's local
controller p(u|x, t) = N(K_t x + k_t, S_t) on the system. On a robot that runs through the
controller node, this planner is how: the GPS driver publishes the controller (and the
noise of the sample) as an ``lg_controller`` artifact, sets ``<id>.artifact`` and switches
``active_planner`` to it. ``optimize`` (re)loads the artifact when its resolved version
changes and returns an :class:`ExecutedLG` policy whose step 0 is the time of the first
plan after that load (or after :meth:`reset`, which the node calls at a new episode): the
controller's step t is the sample's step t, however often the node replans.

The action at step t is ``clip(K_t x + k_t + chol(S_t) eps_t, u_min, u_max)`` in the same
floating-point order as :meth:`LinearGaussianPolicy.sample`, with eps_t the artifact's
noise row t (a GPS sample: the driver drew it from the GPS generator, so both paths use the
same numbers), else ``N(0, 1)`` draws seeded by ``seed`` (re-drawn at every load: the same
artifact and seed explore the same way), or zero with ``noise: false``. After the
controller's T steps the policy is stale (``t_end``): the control loop holds.

The policy is only evaluated in the node (``plan_mode: sync`` or ``planning: thread``);
it does not cross to the planning worker process.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.planners.base import Planner, check_artifact_model
from mbrl_ros.core.policies.lg_artifact import load_lg_controller
from mbrl_ros.core.planners.lg_controller.settings import LGControllerSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["ExecutedLG", "LGControllerPlanner"]


@dataclass(frozen=True, eq=False)
class ExecutedLG:
    """A linear-Gaussian controller executed with fixed noise: u_t = clip(K_t x + k_gps_t
    + chol_t eps_t, u_min, u_max) at step t = round((t - t0) / dt) (:meth:`step`).

    Attributes:
        controller: the controller (its ``t0`` is step 0's time [s]).
        noise: (T, nu) standard-normal draws, or None (the mean).
        u_min, u_max: (nu,) limits applied after the noise.
    """
    controller: LinearGaussianPolicy
    noise: np.ndarray | None
    u_min: np.ndarray
    u_max: np.ndarray

    def __post_init__(self):
        c = self.controller
        if self.noise is not None:
            n = np.array(self.noise, dtype=np.float64)
            if n.shape != (c.horizon, c.nu):
                raise ValueError(f"noise must have shape {(c.horizon, c.nu)}, got {n.shape}")
            if c.cov is None:
                raise ValueError("a controller without covariance cannot add noise")
            n.setflags(write=False)
            object.__setattr__(self, "noise", n)
        for name in ("u_min", "u_max"):
            a = np.array(np.broadcast_to(getattr(self, name), (c.nu,)), dtype=np.float64)
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def t0(self) -> float:
        return self.controller.t0

    @property
    def dt(self) -> float:
        return self.controller.dt

    @property
    def horizon(self) -> int:
        return self.controller.horizon

    @property
    def t_end(self) -> float:
        """Time [s] the controller's last step ends: later, the plan is stale."""
        return self.controller.t_end

    def step(self, t: float) -> int:
        """The controller step of a state stamped t: the nearest one, (t - t0) / dt rounded
        and clamped to [0, T-1] -- one state per step; a real-time arm's stamps jitter
        around the period (floor would put a state stamped a hair early on the step
        before), lockstep stamps are exact."""
        c = self.controller
        return c.index(t + 0.5 * c.dt)

    def action(self, x: np.ndarray, t: float) -> np.ndarray:
        c = self.controller
        i = self.step(t)
        if self.noise is None:
            u = c.K[i] @ x + c.k_gps[i]
        else:       # LinearGaussianPolicy.sample's arithmetic, with eps_t from the array
            u = c.K[i] @ x + c.k_gps[i] + c._chol[i] @ self.noise[i]
        np.maximum(u, self.u_min, out=u)
        return np.minimum(u, self.u_max, out=u)

    def at(self, t0: float) -> "ExecutedLG":
        """The same execution with step 0 at time t0 [s]."""
        return dataclasses.replace(self, controller=dataclasses.replace(self.controller,
                                                                        t0=float(t0)))


@registry.register("planner", "lg_controller")
class LGControllerPlanner(Planner):
    """Executes an lg_controller artifact (see the module docstring).

    ``stats`` after ``optimize``: artifact (resolved path), version, reloaded (bool),
    step (the controller step at t0), t_start (time of step 0 [s]), noise ('artifact',
    'seeded' or 'none'), solve_time_s.

    Raises (from ``optimize``): ValueError if no artifact is set, it cannot be loaded, or
    it is for other dimensions, joints or control period than the planner / model.
    """
    name = "lg_controller"
    Settings = LGControllerSettings
    needs_model = False

    def __init__(self, settings: LGControllerSettings | None, nx: int, nu: int, u_min, u_max,
                 dt: float):
        self.controller: LinearGaussianPolicy | None = None
        self.noise: np.ndarray | None = None
        self.meta: dict[str, Any] = {}
        self._path: Path | None = None
        self._loaded_with: tuple | None = None
        self._t_start: float | None = None
        super().__init__(settings, nx, nu, u_min, u_max, dt)

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        """Forget the previous plan; the next ``optimize`` starts the controller at step 0."""
        super().reset(horizon, initial_actions)
        self._t_start = None

    def _load(self) -> bool:
        s = self.settings
        if not s.artifact:
            raise ValueError("lg_controller: no artifact set (parameter '<id>.artifact': an "
                             "lg_controller version directory or <root>/<name>/latest)")
        path = Path(s.artifact).expanduser().resolve()
        key = (path, s.noise, s.seed)
        if self.controller is not None and key == self._loaded_with:
            return False
        try:
            ctrl, noise, meta = load_lg_controller(path)
        except ModelError as e:
            raise ValueError(f"lg_controller: {e}") from e
        if (ctrl.nx, ctrl.nu) != (self.nx, self.nu):
            raise ValueError(f"lg_controller: {path} is for nx={ctrl.nx}, nu={ctrl.nu}; the "
                             f"controller has nx={self.nx}, nu={self.nu}")
        if not math.isclose(ctrl.dt, self.dt, rel_tol=1e-9):
            raise ValueError(f"lg_controller: {path} steps every {ctrl.dt:g} s; the "
                             f"controller every {self.dt:g} s")
        if not s.noise:
            noise, source = None, "none"
        elif noise is not None:
            source = "artifact"
        else:
            noise = np.random.default_rng(s.seed).standard_normal((ctrl.horizon, ctrl.nu))
            source = "seeded"
        self.controller, self.noise, self.meta = ctrl, noise, dict(meta, noise=source)
        self._path = path
        self._loaded_with = key
        self._t_start = None
        return True

    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any) -> ExecutedLG:
        t_start = time.perf_counter()
        reloaded = self._load()
        check_artifact_model("lg_controller", "controller", model, self.meta)
        if self._t_start is None:
            self._t_start = float(t0)
        # The controller clamps to its (possibly scaled) effort limits: so does the policy.
        policy = ExecutedLG(dataclasses.replace(self.controller, t0=self._t_start),
                            self.noise, np.maximum(self.controller.u_min, self.u_min),
                            np.minimum(self.controller.u_max, self.u_max))
        self._xs = self._us = None
        self._t_nominal = None
        self.stats = {"artifact": self.meta.get("path", ""),
                      "version": self.meta.get("version"), "reloaded": reloaded,
                      "step": policy.step(float(t0)), "t_start": self._t_start,
                      "noise": self.meta["noise"],
                      "solve_time_s": time.perf_counter() - t_start}
        return policy
