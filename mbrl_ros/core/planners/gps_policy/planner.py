"""``gps_policy`` planner: returns the global policy of a guided-policy-search artifact.

Guided policy search (:mod:`mbrl_ros.core.algorithms.gps`) trains a state-feedback policy
offline; this planner makes it one more entry of the controller's planner map, so
``active_planner: gps_policy`` switches the robot to it at the next replan and back to an
MPC planner the same way. ``optimize`` does no optimisation: it (re)loads the artifact when
``latest`` moved (a freshly trained version is picked up at run time), checks that the
policy is for the planner's dimensions and, when the model has names, for the same joints,
and returns the policy stamped with ``t0`` and ``t_end = t0 + horizon * dt`` (the control
loop holds when a plan is older than that, as with any planner).

With ``rollout_nominal`` the model is rolled out under the policy for ``horizon`` steps:
that nominal is what the controller publishes as the planned trajectory and what another
planner is warm-started from on a switch (bumpless hand-over). A model that cannot be
rolled out that far (a TVLG model fitted for fewer steps) only loses the nominal.

A *target-conditioned* policy (``mbrl-ros gps`` trains one: the network's inputs are the
state and the target joint positions) is bound at every plan to the controller's current
target, read from the cost the controller passes (``cost.x_target``: its first ``n_task``
entries are the target joint positions), so a new target needs no new policy.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.policies.neural import NeuralPolicy, load_policy
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.planners.base import Planner, check_artifact_model
from mbrl_ros.core.planners.gps_policy.settings import GPSPolicySettings

__all__ = ["GPSPolicyPlanner"]


@registry.register("planner", "gps_policy")
class GPSPolicyPlanner(Planner):
    """Hands out a GPS global policy (see the module docstring).

    ``stats`` after ``optimize``: artifact (resolved path), version, reloaded (bool),
    cost (of the nominal, if rolled out), nominal (bool), dt_trained (the control period
    the policy was trained at [s]), task (the target bound to a target-conditioned policy,
    else None), solve_time_s.

    Raises (from ``optimize``): ValueError if no artifact is set, it cannot be loaded, it
    is for other dimensions or joints than the planner / model, or it is target-conditioned
    and the cost has no joint-space target.
    """
    name = "gps_policy"
    Settings = GPSPolicySettings

    def __init__(self, settings: GPSPolicySettings | None, nx: int, nu: int, u_min, u_max,
                 dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self.policy: NeuralPolicy | None = None
        self.meta: dict[str, Any] = {}
        self._path: Path | None = None

    def _load(self) -> bool:
        """Load the artifact if none is loaded or (reload) ``latest`` moved; True if it
        loaded one."""
        s = self.settings
        if not s.artifact:
            raise ValueError("gps_policy: no artifact set (parameter '<id>.artifact': a "
                             "gps_policy version directory or <root>/<name>/latest)")
        path = Path(s.artifact).expanduser().resolve()
        if self.policy is not None and (path == self._path or not s.reload):
            return False
        try:
            policy, meta = load_policy(path)
        except ModelError as e:
            raise ValueError(f"gps_policy: {e}") from e
        if (policy.nx, policy.nu) != (self.nx, self.nu):
            raise ValueError(f"gps_policy: {path} is for nx={policy.nx}, nu={policy.nu}; the "
                             f"controller has nx={self.nx}, nu={self.nu}")
        # The controller clamps to its (possibly scaled) effort limits: so does the policy.
        self.policy = dataclasses.replace(policy, u_min=np.maximum(policy.u_min, self.u_min),
                                          u_max=np.minimum(policy.u_max, self.u_max))
        self.meta = meta
        self._path = path
        return True

    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any) -> NeuralPolicy:
        t_start = time.perf_counter()
        reloaded = self._load()
        check_artifact_model("gps_policy", "policy", model, self.meta)
        policy = self.policy.at(float(t0), self.horizon * self.dt)
        task = None
        if policy.n_task:
            # the controller's cost is the task cost plus a joint-limit barrier (SumCost)
            target = next((getattr(c, "x_target") for c in (cost, *getattr(cost, "terms", ()))
                           if getattr(c, "x_target", None) is not None), None)
            if target is None or np.asarray(target).shape[-1] < policy.n_task:
                raise ValueError(f"gps_policy: {self.meta.get('path', '')} is target-"
                                 f"conditioned ({policy.n_task} target joint positions) but "
                                 f"the cost has no joint-space target (x_target)")
            task = np.asarray(target, dtype=np.float64)[:policy.n_task]
            policy = policy.with_task(task)
        stats = {"artifact": self.meta.get("path", ""), "version": self.meta.get("version"),
                 "reloaded": reloaded, "nominal": False, "cost": None,
                 "dt_trained": float(self.meta["spec"].dt),
                 "task": None if task is None else task.tolist()}
        self._xs = self._us = None
        self._t_nominal = None
        if self.settings.rollout_nominal and model is not None:
            tv = bool(getattr(model, "time_varying", False))
            x = np.asarray(x0, dtype=np.float64)
            xs, us = [x], []
            try:
                for i in range(self.horizon):
                    u = policy.action(x, t0 + i * self.dt)
                    x = (model.predict(x[None], u[None], i) if tv
                         else model.predict(x[None], u[None]))[0][0]
                    xs.append(x)
                    us.append(u)
            except ModelError:
                xs = None
            if xs is not None and np.all(np.isfinite(xs)):
                self._xs, self._us, self._t_nominal = np.array(xs), np.array(us), float(t0)
                stats["nominal"] = True
                if cost is not None:
                    stats["cost"] = float(cost.total(self._xs, self._us))
        stats["solve_time_s"] = time.perf_counter() - t_start
        self.stats = stats
        return policy
