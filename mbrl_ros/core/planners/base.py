"""The planner interface: *plan* (slow, replanning loop) split from *act* (fast control timer).

Following mujoco_mpc's Planner design, a planner's :meth:`Planner.optimize` improves a
nominal trajectory from the current state and returns an immutable :class:`Policy`; a
control timer evaluates ``policy.action(x, t)`` at a higher rate until the next plan is
ready. The dynamics model and the cost are arguments of every ``optimize`` call, so swapping
a model (a freshly fitted one) or a cost (a new target) needs no planner rebuild.

Planners keep their last solution (:attr:`Planner.nominal`) to warm-start the next call
(shifted by the time elapsed since it was computed) and to hand it over to another planner
(:meth:`Planner.warm_start`) so switching planners does not restart from scratch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import math
import time

import numpy as np

__all__ = ["Policy", "Planner", "RobotLayout", "resize_actions", "shift_trajectory"]


@dataclass(frozen=True, eq=False)
class RobotLayout:
    """What a model-free planner needs of the robot (planners that define ``set_robot``
    get it from the controller when they are built).

    Attributes:
        position_limits: (n_joints, 2) [lower, upper] of every state joint [rad or m];
            ±inf for a continuous joint.
        command_index: (n_cmd,) index of each command joint among the state joints.
        inertia: (n_cmd,) effective inertia 1/(M^-1)_jj of each command joint at the home
            pose [kg·m² or kg] (:meth:`mbrl_ros.sim.env.MujocoSim.effective_inertia`).
    """
    position_limits: np.ndarray
    command_index: np.ndarray
    inertia: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "position_limits",
                           np.asarray(self.position_limits, dtype=float).reshape(-1, 2))
        object.__setattr__(self, "command_index",
                           np.asarray(self.command_index, dtype=np.intp).reshape(-1))
        object.__setattr__(self, "inertia", np.asarray(self.inertia, dtype=float).reshape(-1))
        if self.inertia.size != self.command_index.size:
            raise ValueError(f"RobotLayout: {self.inertia.size} inertias for "
                             f"{self.command_index.size} command joints")

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (to cross a process boundary); ``RobotLayout(**d)`` rebuilds it."""
        return {"position_limits": self.position_limits, "command_index": self.command_index,
                "inertia": self.inertia}


@runtime_checkable
class Policy(Protocol):
    """Immutable result of a plan, evaluated by a fast control timer.

    ``t0`` [s]: the time the policy takes over from (a plan started ahead of its state
    waits until then); ``t_end`` [s]: the time after which it is stale (a control loop
    holds instead of applying it). ``-inf``/``inf``: no such bound.
    """

    @property
    def t0(self) -> float: ...

    @property
    def t_end(self) -> float: ...

    def action(self, x: np.ndarray, t: float) -> np.ndarray:
        """Action (nu,) for state x (nx,) at time t [s], clamped to the action limits."""
        ...


def check_artifact_model(plugin: str, what: str, model: Any, meta: dict) -> None:
    """Refuse a trained artifact (``meta["spec"]``: the model spec it was trained for) whose
    states and actions are not the controller's model's: ValueError naming the plugin."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return
    from mbrl_ros.core.models.base import ModelError
    try:
        spec.check_compatible(meta["spec"])
    except ModelError as e:
        raise ValueError(f"{plugin}: the {what} and the model disagree: {e}") from e


def shift_trajectory(a: np.ndarray | None, steps: int) -> np.ndarray | None:
    """Drop the first ``steps`` rows of a (T, ...) array and repeat the last row at the end,
    keeping the length (the receding-horizon warm start)."""
    if a is None or steps <= 0:
        return a
    steps = min(steps, a.shape[0] - 1)
    return np.concatenate([a[steps:], np.repeat(a[-1:], steps, axis=0)], axis=0)


def resize_actions(us: np.ndarray, horizon: int) -> np.ndarray:
    """Truncate, or pad by repeating the last row, a (T', nu) array to (horizon, nu)."""
    us = np.asarray(us, dtype=np.float64)
    if us.shape[0] >= horizon:
        return us[:horizon].copy()
    return np.concatenate([us, np.repeat(us[-1:], horizon - us.shape[0], axis=0)], axis=0)


class Planner(ABC):
    """Base class of trajectory optimisers used for model-predictive control.

    Subclasses set ``name`` (registry name) and ``Settings`` (frozen dataclass with at least
    a ``horizon`` field, in steps) and implement :meth:`optimize`.

    Args:
        settings: a ``Settings`` instance (None: defaults).
        nx, nu: state and action dimensions.
        u_min, u_max: (nu,) action limits (scalars broadcast; +-inf allowed).
        dt: control period of a plan step [s] (the model's step).
    """
    name: ClassVar[str]
    Settings: ClassVar[type]
    # False: plans without a dynamics model (exploration); the MPC controller uses such a
    # planner while it has no model yet.
    needs_model: ClassVar[bool] = True

    def __init__(self, settings: Any, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        self.settings = settings if settings is not None else self.Settings()
        self.nx = int(nx)
        self.nu = int(nu)
        self.u_min = np.broadcast_to(np.asarray(u_min, dtype=np.float64), (self.nu,)).copy()
        self.u_max = np.broadcast_to(np.asarray(u_max, dtype=np.float64), (self.nu,)).copy()
        if np.any(self.u_min > self.u_max):
            raise ValueError(f"u_min {self.u_min} must be <= u_max {self.u_max}")
        if not (dt > 0 and np.isfinite(dt)):
            raise ValueError(f"dt must be positive and finite, got {dt}")
        self.dt = float(dt)
        self.stats: dict[str, Any] = {}
        self.horizon = int(self.settings.horizon)
        self._xs: np.ndarray | None = None        # (T+1, nx) nominal states
        self._us: np.ndarray | None = None        # (T, nu) nominal actions
        self._t_nominal: float | None = None      # time [s] of step 0 of the nominal
        self.deadline: float | None = None        # wall-clock budget of optimize [s]
        self.effort_rate: np.ndarray | None = None   # (nu,) largest action change [1/s]
        self._last_action: tuple[np.ndarray, float] | None = None
        self.reset(self.horizon)

    # -- time budget ------------------------------------------------------------------------
    def set_deadline(self, seconds: float | None) -> None:
        """The wall-clock time one :meth:`optimize` call should take at most [s], or None.

        A real-time controller sets it (the node in timer mode: its replan period
        1/plan_rate); planners that can trade quality for time use it -- iLQR stops
        iterating when another iteration would end past it, the sampling planners choose
        their number of samples from the solve times they measured. None (the default;
        lockstep simulation, benchmarks, tests): no limit, and the planners do the same
        work every call, so their plans do not depend on the machine's speed or load.

        Raises:
            ValueError: not positive and finite.
        """
        if seconds is not None:
            seconds = float(seconds)
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(f"deadline must be positive and finite (or None), got "
                                 f"{seconds}")
        self.deadline = seconds

    def out_of_time(self, started: float, rounds: int, now: float | None = None,
                    rounds_started: float | None = None) -> bool:
        """True if one more round of an iterative solver would end past the deadline: the
        time since ``started`` (``time.perf_counter()`` at the start of ``optimize``) plus
        the average of the ``rounds`` rounds done so far exceeds :attr:`deadline`. Always
        False without a deadline or before the first round (a solver does at least one).

        Args:
            started: perf_counter time the optimisation started [s].
            rounds: rounds done since then (>= 0).
            now: the current perf_counter time (default: read it).
            rounds_started: perf_counter time the rounds began, if other work came first
                (the average is over the rounds only; default: ``started``).
        """
        if self.deadline is None or rounds <= 0:
            return False
        now = time.perf_counter() if now is None else now
        first = started if rounds_started is None else rounds_started
        return now - started + (now - first) / rounds > self.deadline

    # -- action rate ------------------------------------------------------------------------
    def set_effort_rate(self, rate: float | np.ndarray | None) -> None:
        """Plan within a limit on how fast the actions may change [action units per s]:
        the robot's command path (the safety filter's ``max_effort_rate``) delays a larger
        change, and a plan that assumes it can jump drives a delayed loop that can
        oscillate (arm7 behind 500-1000 N·m/s). With a rate and the last applied action
        (:meth:`set_last_action`), :meth:`action_bounds` narrows the box of the first plan
        steps to the actions the rate lets the robot reach. None or 0: no rate limit.

        Raises:
            ValueError: negative or not finite.
        """
        if rate is None:
            self.effort_rate = None
            return
        r = np.broadcast_to(np.asarray(rate, dtype=np.float64), (self.nu,)).copy()
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError(f"effort rate must be finite and >= 0, got {r.tolist()}")
        self.effort_rate = None if np.all(r == 0) else np.where(r == 0, np.inf, r)

    def set_last_action(self, u: np.ndarray | None, t: float | None = None) -> None:
        """The action (nu,) the robot last applied and the time [s] it was applied (on the
        planner's clock, the one ``optimize`` gets), or None (unknown: no rate bounds)."""
        if u is None or t is None:
            self._last_action = None
            return
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        if u.shape != (self.nu,) or not np.all(np.isfinite(u)) or not math.isfinite(t):
            raise ValueError(f"last action must be {self.nu} finite numbers at a finite time, "
                             f"got {u.tolist()} at {t}")
        self._last_action = (u, float(t))

    def action_bounds(self, t0: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (T, nu) of the plan's actions from time t0 [s]: the
        action limits, and with an effort rate and a last action u_l applied at t_l, step
        k (applied at t0 + k dt) within ``u_l ± rate * max(t0 + k dt - t_l, dt)`` -- the
        actions the rate can reach by then (an outer bound: the steps' changes between
        each other are not limited, so later steps stay free to use the full range)."""
        T = self.horizon
        lo = np.broadcast_to(self.u_min, (T, self.nu)).copy()
        hi = np.broadcast_to(self.u_max, (T, self.nu)).copy()
        if self.effort_rate is None or self._last_action is None:
            return lo, hi
        u, t_last = self._last_action
        elapsed = np.maximum(float(t0) + self.dt * np.arange(T) - t_last, self.dt)
        reach = elapsed[:, None] * self.effort_rate[None, :]
        # Clipped into the limits (a last action outside them -- a lowered effort_scale --
        # gives the limit it is beyond: lo <= hi always).
        return np.clip(u - reach, lo, hi), np.clip(u + reach, lo, hi)

    def rate_steps(self, t0: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The last action (nu,) and each plan step's largest change (T, nu) from the one
        before (the first: from the last action, over the time since it, at least one
        step), or None without an effort rate or a last action."""
        if self.effort_rate is None or self._last_action is None:
            return None
        u, t_last = self._last_action
        gaps = np.full(self.horizon, self.dt)
        gaps[0] = max(float(t0) - t_last, self.dt)
        return u, gaps[:, None] * self.effort_rate[None, :]

    def project_rate(self, us: np.ndarray, t0: float,
                     bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Action sequences us (..., T, nu) within :meth:`action_bounds` and, with an
        effort rate and a last action, each step within the rate's reach of the one before
        (the first of the last action): projected step by step, so the sequence is one
        the command path can follow without limiting it. The set of such sequences is
        convex, so a weighted average of projected sequences stays in it. ``bounds``:
        :meth:`action_bounds` of t0, if the caller has them already."""
        lo, hi = self.action_bounds(t0) if bounds is None else bounds
        out = np.clip(us, lo, hi)
        chain = self.rate_steps(t0)
        if chain is None:
            return out
        prev, step = chain
        for t in range(out.shape[-2]):
            prev = np.minimum(np.maximum(out[..., t, :], prev - step[t]), prev + step[t])
            out[..., t, :] = prev
        return np.clip(out, lo, hi)

    # -- nominal trajectory ---------------------------------------------------------------
    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        """Forget the previous solution.

        Args:
            horizon: number of steps T of the next plans.
            initial_actions: (T', nu) actions to start from (resized to T, clipped);
                default the zero action clipped into the limits.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)
        self._xs = None
        self._t_nominal = None
        self._us = (None if initial_actions is None
                    else self.clip(resize_actions(initial_actions, self.horizon)))

    @property
    def nominal(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(xs (T+1, nx), us (T, nu)) of the last solution, or None before the first."""
        if self._xs is None or self._us is None:
            return None
        return self._xs.copy(), self._us.copy()

    @property
    def nominal_time(self) -> float | None:
        """Time [s] of step 0 of :attr:`nominal` (pass it to another planner's
        :meth:`warm_start` so the hand-over is shifted correctly), or None."""
        return self._t_nominal

    def warm_start(self, us: np.ndarray, t0: float | None = None) -> None:
        """Start the next optimisation from the actions ``us`` (T', nu), e.g. another
        planner's nominal (resized to the horizon, clipped).

        Args:
            us: (T', nu) actions.
            t0: time [s] of ``us[0]``; if given, the next :meth:`optimize` shifts them by the
                time elapsed, as it does with its own solution. None: used as they are.
        """
        us = np.asarray(us, dtype=np.float64)
        if us.ndim != 2 or us.shape[1] != self.nu or us.shape[0] < 1:
            raise ValueError(f"warm-start actions must have shape (T, {self.nu}), got {us.shape}")
        self._us = self.clip(resize_actions(us, self.horizon))
        self._xs = None
        self._t_nominal = None if t0 is None else float(t0)
        self._on_warm_start()

    def _on_warm_start(self) -> None:
        """Hook: drop solver state tied to the previous nominal (gains, samples)."""

    def clip(self, us: np.ndarray) -> np.ndarray:
        """Actions clipped to [u_min, u_max] (any leading shape)."""
        return np.clip(us, self.u_min, self.u_max)

    def _shift_steps(self, t0: float) -> int:
        """Whole steps elapsed since the stored nominal's step 0 (0 if unknown/negative)."""
        if self._t_nominal is None:
            return 0
        return max(0, min(self.horizon, int(round((t0 - self._t_nominal) / self.dt))))

    def _initial_actions(self, t0: float) -> tuple[np.ndarray, int]:
        """Actions (T, nu) to start from at time t0, and the shift applied to the stored
        nominal (previous solution shifted by the elapsed steps, last action repeated)."""
        if self._us is None:
            return self.clip(np.zeros((self.horizon, self.nu))), 0
        s = self._shift_steps(t0)
        return shift_trajectory(self._us, s), s

    # -- planning ---------------------------------------------------------------------------
    @abstractmethod
    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any) -> Policy:
        """Improve the plan from state x0 (nx,) at time t0 [s] and return a policy.

        Args:
            x0: (nx,) current state.
            t0: current time [s]; the policy's step 0 starts here.
            model: a :class:`~mbrl_ros.core.models.base.DynamicsModel` whose step is ``dt``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost`.
        """
