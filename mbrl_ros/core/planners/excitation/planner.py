"""``excitation`` planner: exploration without a model, behind the planner interface.

A learning controller has no model at first, and later models can be too uncertain where
the arm is. Holding still then teaches the fitter nothing (an arm at rest identifies no
model), so the controller explores instead: this planner hands out the excitation of
:class:`~mbrl_ros.core.policies.excitation.ExcitationPolicy` -- PD toward random in-range
targets, gains from each joint's effective inertia, plus Ornstein-Uhlenbeck noise -- as
an ordinary plan. The MPC controller uses it while it has no model and as the
uncertainty fallback (:class:`~mbrl_ros.core.control.mpc.MPCController`), so every safety
layer of the control step (plausibility, latch, holds, clamp, rate limit, joint-limit
guard) stays in front of it, and the command topic keeps one publisher.

Plan = feedback policy. Each ``optimize(x0, t0)`` returns a
:class:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy` over the next
``horizon`` control steps, u_i = noise_i - kp (q - target_i) - kd qd, clipped to the
limits: K_i has -kp on each command joint's position and -kd on its velocity, xbar_i holds
the target (velocities 0), k_i the noise. The policy is immutable and crosses the planning
process boundary like any iLQR plan. The excitation stream (targets, noise) is generated
once per control step k = round(t / dt) and kept, so overlapping plans of successive
replans agree on every step they share: replanning at 50 Hz yields one continuous
excitation, not a new noise draw per replan. A time before the kept stream (a new episode)
restarts it. Continuous joints: the target is taken within pi of the plan's start
position, so the linear error equals the wrapped one near x0.

``model`` and ``cost`` are ignored (:attr:`needs_model` is False); the plan has no
nominal state trajectory (nothing to warm-start another planner from). The robot's
layout (command joints, their effective inertia) must be given with :meth:`set_robot`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.planners.base import Planner, RobotLayout
from mbrl_ros.core.planners.excitation.settings import ExcitationPlannerSettings
from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import as_dict

__all__ = ["ExcitationPlanner"]


@registry.register("planner", "excitation")
class ExcitationPlanner(Planner):
    """Exploration plans from :class:`ExcitationPolicy` (see the module docstring).

    ``stats`` after ``optimize``: exploring (True), target (n_cmd,) of the plan's first
    step, solve_time_s.

    Raises (from ``optimize``): ValueError without :meth:`set_robot`, or for a state of
    another size.
    """
    name = "excitation"
    Settings = ExcitationPlannerSettings
    needs_model = False

    def __init__(self, settings: ExcitationPlannerSettings | None, nx: int, nu: int, u_min,
                 u_max, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self._policy: ExcitationPolicy | None = None
        self._layout: RobotLayout | None = None
        self._stream: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # k -> (target, noise)
        self._k_last: int | None = None

    def set_robot(self, layout: RobotLayout) -> None:
        """The robot's joints: build the excitation for them (limits from ``layout``,
        efforts within this planner's ``u_min``/``u_max``)."""
        n = self.nx // 2
        if layout.position_limits.shape[0] != n or layout.command_index.size != self.nu:
            raise ValueError(f"excitation: robot layout for {layout.position_limits.shape[0]} "
                             f"joints / {layout.command_index.size} command joints, planner "
                             f"for nx={self.nx}, nu={self.nu}")
        idx = layout.command_index
        # Symmetric effort bound within the planner's limits (effort_scale applied).
        effort = np.minimum(np.abs(self.u_min), np.abs(self.u_max))
        fields = {k: v for k, v in as_dict(self.settings).items()
                  if k in ExcitationSettings.__dataclass_fields__}
        self._policy = ExcitationPolicy(ExcitationSettings(**fields),
                                        layout.position_limits[idx], effort, idx, n,
                                        layout.inertia, seed=self.settings.seed, dt=self.dt)
        self._layout = layout
        self._stream, self._k_last = {}, None

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        if getattr(self, "_policy", None) is not None:     # a new episode: restart the stream
            self._policy.reset()
            self._stream, self._k_last = {}, None

    def _reference(self, k0: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Targets and noise (steps, n_cmd) of control steps k0 .. k0+steps-1."""
        if self._k_last is None or k0 < min(self._stream, default=k0):
            self._policy.reset()                 # time went back: a new episode
            self._stream, self._k_last = {}, k0 - 1
        # A gap since the last plan (k0 beyond the stream) is not filled in: the stream
        # continues at k0 (the policy draws a new target if one is due).
        for k in range(max(self._k_last + 1, k0), k0 + steps):
            self._stream[k] = self._policy.reference(k * self.dt)
            self._k_last = k
        for k in [k for k in self._stream if k < k0]:      # steps in the past
            del self._stream[k]
        targets = np.array([self._stream[k][0] for k in range(k0, k0 + steps)])
        noise = np.array([self._stream[k][1] for k in range(k0, k0 + steps)])
        return targets, noise

    def optimize(self, x0: np.ndarray, t0: float, model: Any = None,
                 cost: Any = None) -> LinearGaussianPolicy:
        t_start = time.perf_counter()
        if self._policy is None:
            raise ValueError("excitation: no robot layout (set_robot) -- the controller "
                             "passes its robot's joints")
        x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        if x0.shape != (self.nx,):
            raise ValueError(f"excitation: state must have shape ({self.nx},), got {x0.shape}")
        n, T = self.nx // 2, self.horizon
        idx = self._policy.command_index
        targets, noise = self._reference(int(round(float(t0) / self.dt)), T)
        cont = self._policy.continuous
        if cont.any():          # within pi of the start: the linear error is the wrapped one
            q0 = x0[idx]
            wrapped = q0 + (targets - q0 + np.pi) % (2.0 * np.pi) - np.pi
            targets = np.where(cont, wrapped, targets)
        cols = np.arange(self.nu)
        K = np.zeros((T, self.nu, self.nx))
        K[:, cols, idx] = -self._policy.kp
        K[:, cols, n + idx] = -self._policy.kd
        xbar = np.repeat(x0[None], T, axis=0)
        xbar[:, idx] = targets
        xbar[:, n:] = 0.0
        policy = LinearGaussianPolicy(K=K, k=noise, xbar=xbar, cov=None, t0=float(t0),
                                      dt=self.dt, u_min=self.u_min, u_max=self.u_max)
        self._xs = self._us = None           # no model: no nominal states to hand over
        self._t_nominal = None
        self.stats = {"exploring": True, "target": targets[0].copy(),
                      "solve_time_s": time.perf_counter() - t_start}
        return policy
