"""The last stage before an effort command leaves the controller.

Whatever the planner asks for, :class:`SafetyFilter` makes the command safe to send:

1. non-finite commands are refused (the caller latches an error and holds);
2. efforts are clamped to ``effort_scale`` x the robot's effort limits;
3. near a joint limit (inside ``joint_limit_margin``) effort pushing further out is removed
   and a damping term brakes motion toward the limit;
4. the change per control period is limited to ``max_effort_rate`` x dt, so switching
   planners or models never makes the command jump.

Damping gains (the hold's and the joint-limit brake's) are capped per joint at
``STABLE_DAMPING`` x inertia / control period. A velocity feedback applied for one period
of a sampled loop changes the velocity by a factor 1 - b dt / I per period (and with the
one period of delay a timer-driven loop adds, it oscillates once b dt / I > 1): 2 N·m·s/rad
on arm2's elbow (0.0097 kg·m²) at 100 Hz is b dt / I = 2.06, so the "safe" hold itself
drove the elbow into a full-torque oscillation (found by the hostile-state node test with
the control thread on a loaded machine). The cap keeps the hold a damper on any arm.

:meth:`SafetyFilter.hold` gives the safe-hold command (joint damping or zero effort) used
when the state is stale, a fault is latched, or no model is available yet.

:class:`SafetySettings` also carries the joint-state plausibility bounds
(:class:`~mbrl_ros.core.control.plausibility.PlausibilitySettings`, inherited): the
controller's safety parameters are one schema, and the excitation node declares the same
plausibility fields from the same class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.control.plausibility import PlausibilitySettings
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import setting


@dataclass(frozen=True)
class SafetySettings(PlausibilitySettings):
    effort_scale: float = setting(1.0, "fraction of the robot's effort limits the controller "
                                  "may use", low=0.0, high=1.0, dynamic=True)
    max_effort_rate: float = setting(500.0, "largest change of any effort command per second "
                                     "(the controller's planners plan within it: "
                                     "plan_within_rate)", unit="N·m/s", low=1e-3, high=1e7,
                                     dynamic=True)
    joint_limit_margin: float = setting(0.05, "inside this distance of a joint limit, effort "
                                        "toward the limit is removed", unit="rad|m",
                                        low=0.0, high=1.0, dynamic=True)
    limit_damping: float = setting(1.0, "damping applied toward a near joint limit (capped "
                                   "per joint for a stable sampled loop)",
                                   unit="N·m·s/rad", low=0.0, high=1e4, dynamic=True)
    hold_mode: str = setting("damping", "safe hold: 'damping' (effort = -gain x velocity) or "
                             "'zero' effort", choices=("damping", "zero"), dynamic=True)
    hold_damping: float = setting(2.0, "damping gain of the safe hold (capped per joint at "
                                  "0.3 x inertia / control period)", unit="N·m·s/rad",
                                  low=0.0, high=1e4, dynamic=True)
    state_timeout: float = setting(0.1, "hold safely when no fresh joint state arrived for "
                                   "this long", unit="s", low=0.001, high=60.0, dynamic=True)


# Largest b dt / I of a damping gain b on a joint of inertia I sampled every dt: well inside
# the stable range (< 1 with one period of delay), so a hold damps within a few periods.
STABLE_DAMPING = 0.3


class SafetyFilter:
    """Clamp, joint-limit guard and rate limit for effort commands.

    Args:
        settings: the limits to enforce.
        effort_limits: (nu,) symmetric effort limits of the command joints [N·m or N].
        position_limits: (nu, 2) position limits of the command joints (±inf: none).
        command_index: (nu,) index of each command joint in the state's joint vector.
        n_joints: number of state joints (state x = [q (n), qd (n)]).
        inertia: (nu,) effective inertia of each command joint [kg·m² or kg] (the MJCF's,
            e.g. ``RobotDescription.min_effective_inertia()``); with ``period`` it caps the
            damping gains (None: no cap). :meth:`for_robot` takes them from a robot.
        period: control period [s].
    """

    def __init__(self, settings: SafetySettings, effort_limits: np.ndarray,
                 position_limits: np.ndarray, command_index: np.ndarray, n_joints: int,
                 inertia: np.ndarray | None = None, period: float | None = None):
        self.settings = settings
        self.damping_cap = (np.full(len(effort_limits), np.inf) if inertia is None
                            or not period else
                            STABLE_DAMPING * np.asarray(inertia, dtype=float) / float(period))
        self.effort_limits = np.asarray(effort_limits, dtype=float)
        self.position_limits = np.asarray(position_limits, dtype=float)
        self.index = np.asarray(command_index, dtype=np.intp)
        self.n = int(n_joints)
        self.last = np.zeros(self.effort_limits.shape)
        self.counters = {"clamped": 0, "rate_limited": 0, "limit_guard": 0}

    @classmethod
    def for_robot(cls, settings: SafetySettings, robot: RobotDescription, period: float,
                  inertia: np.ndarray | None = None) -> "SafetyFilter":
        """The filter for a robot's command joints: their effort and position limits, and
        damping caps from ``inertia`` ((m,) kg·m² or kg; default: the smallest effective
        inertia over the joint ranges, :meth:`RobotDescription.min_effective_inertia`)
        at control period ``period`` [s]."""
        idx = np.asarray(robot.command_index)
        if inertia is None:
            inertia = robot.min_effective_inertia()
        return cls(settings, robot.effort_limits, robot.position_limits[idx], idx,
                   robot.n_joints, inertia, period)

    @property
    def u_max(self) -> np.ndarray:
        return self.settings.effort_scale * self.effort_limits

    def reset(self, last: np.ndarray | None = None) -> None:
        """Forget the previous command (the rate limit starts from ``last`` or zero)."""
        self.last = np.zeros_like(self.last) if last is None else np.asarray(last, float).copy()

    def hold(self, x: np.ndarray | None) -> np.ndarray:
        """Safe-hold effort for state ``x`` (None or non-finite: zero effort)."""
        s = self.settings
        if s.hold_mode == "zero" or x is None or not np.all(np.isfinite(x)):
            u = np.zeros_like(self.last)
        else:
            u = -np.minimum(s.hold_damping, self.damping_cap) * x[self.n + self.index]
        return np.clip(u, -self.u_max, self.u_max)

    def __call__(self, u: np.ndarray, x: np.ndarray, dt: float) -> np.ndarray:
        """The command to send for desired effort ``u`` at state ``x``, one control period
        ``dt`` [s] after the previous call. ``u`` and ``x`` must be finite."""
        s = self.settings
        u_max = self.u_max
        out = np.clip(u, -u_max, u_max)
        if np.any(out != u):
            self.counters["clamped"] += 1
        q = x[self.index]
        qd = x[self.n + self.index]
        lo = self.position_limits[:, 0] + s.joint_limit_margin
        hi = self.position_limits[:, 1] - s.joint_limit_margin
        above, below = q > hi, q < lo
        if above.any() or below.any():
            self.counters["limit_guard"] += 1
            brake = -np.minimum(s.limit_damping, self.damping_cap) * qd
            out = np.where(above, np.minimum(out, 0.0) + np.minimum(brake, 0.0), out)
            out = np.where(below, np.maximum(out, 0.0) + np.maximum(brake, 0.0), out)
            out = np.clip(out, -u_max, u_max)
        return self.rate_limit(out, dt)

    def rate_limit(self, u: np.ndarray, dt: float) -> np.ndarray:
        """Limit the change from the previous command to ``max_effort_rate * dt`` (also
        applied to safe-hold commands, so entering a hold never jumps either)."""
        s = self.settings
        out = np.clip(u, -self.u_max, self.u_max)
        if s.max_effort_rate > 0 and dt > 0:
            step = s.max_effort_rate * dt
            limited = np.clip(out, self.last - step, self.last + step)
            if np.any(limited != out):
                self.counters["rate_limited"] += 1
            out = limited
        self.last = out
        return out
