"""The decisions of one control step, free of ROS: which state, which policy, or a hold.

The controller node is a thin adapter around :class:`Actuator`: it feeds joint states
(:meth:`Actuator.receive`), plans (:meth:`Actuator.offer`), and at every control step
publishes what :meth:`Actuator.step` returns. The actuator owns

* the newest *accepted* state, as one reference (x, stamp, arrival time) that the control,
  planning and executor threads read without a lock; states pass
  :class:`~mbrl_ros.core.control.plausibility.StatePlausibility` first, so a rejected state
  never reaches a planner or the policy;
* the latched fault (non-finite state or command, too many implausible states), cleared
  only by :meth:`clear_fault`;
* the policy hand-over: a plan started ahead of its state (latency compensation) waits as
  the *next* policy and takes over when the state's time reaches its ``t0``;
* the hold decision, in this order: no state yet, stale state (zero effort: damping on an
  old velocity would be open-loop effort), latched fault, implausible newest state, no
  plan, plan ran out -- each a safe hold of the :class:`SafetyFilter` (its hold mode,
  rate-limited) from the last accepted state;
* the last line of defence: a command is always finite (zeros otherwise).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbrl_ros.core.control.plausibility import StatePlausibility, Verdict
from mbrl_ros.core.control.safety import SafetyFilter
from mbrl_ros.core.planners.base import Policy

# Hold reasons, as /diagnostics reports them.
NO_STATE = "no joint state yet"
STALE = "stale joint state"
FAULT = "latched fault"
IMPLAUSIBLE = "implausible joint state"
CONFIRMING = "confirming the joint state"
NO_PLAN = "no plan"
PLAN_EXPIRED = "plan ran out"
HOLD_REASONS = (NO_STATE, STALE, FAULT, IMPLAUSIBLE, CONFIRMING, NO_PLAN, PLAN_EXPIRED)


@dataclass(frozen=True)
class Step:
    """One control step's outcome.

    Attributes:
        command: (nu,) finite effort command [N·m or N].
        hold: the hold reason (one of :data:`HOLD_REASONS`), or None when the command is
            the policy's (safety-filtered).
        latched: a fault was latched in this step (the reason is :attr:`Actuator.fault`).
    """
    command: np.ndarray
    hold: str | None = None
    latched: bool = False


class Actuator:
    """Control-step logic of the MPC controller (see the module docstring).

    Args:
        safety: the safety filter (clamp, joint-limit guard, rate limit, hold); its
            ``settings.state_timeout`` [s] decides when a state is stale.
        plausibility: the joint-state check.
    """

    def __init__(self, safety: SafetyFilter, plausibility: StatePlausibility):
        self.safety = safety
        self.plausibility = plausibility
        # (x (2n,), stamp t [s], arrival [s, monotonic]) of the newest accepted state,
        # replaced as a whole so readers on other threads see a consistent triple.
        self.latest: tuple[np.ndarray | None, float, float] = (None, 0.0, -np.inf)
        self.state_dt = 0.0              # stamp difference of the last two accepted states
        self.state_ok = False            # the newest received state was accepted
        self._why_not_ok = NO_STATE
        self.fault: str | None = None
        self._lock = threading.Lock()    # the policy pair
        # The state check and its anchor: states (executor), clear_fault (a service) and
        # reset (an episode loop) may come from different threads. The control step
        # never takes it: it reads the one reference ``latest``.
        self._state_lock = threading.RLock()
        self._policy: Any = None
        self._next_policy: Any = None
        self.counters = {"bad_states": 0, "nonfinite_blocked": 0, "holds": 0}
        self.holds = dict.fromkeys(HOLD_REASONS, 0)      # cumulative, by reason
        # (u (n_cmd,), t [s]) of the newest command and the stamp of the state it was
        # computed for (None: none since the start or a reset): planners plan their first
        # actions within the rate limit's reach of it (MPCController.replan's ``last``).
        self.last_command: tuple[np.ndarray, float] | None = None

    # ------------------------------------------------------------------ states
    def receive(self, q, qd, t: float, now: float) -> Verdict:
        """A joint state (``q``, ``qd`` (n,)) stamped ``t`` [s] arrived at ``now`` [s,
        monotonic]. Accepted: it becomes :attr:`latest`. Implausible: counted, the control
        step holds until a state is accepted, and at the latch limit the fault latches."""
        with self._state_lock:
            verdict = self.plausibility.check(q, qd, t, now)
            if verdict.accepted:
                x = np.concatenate([np.asarray(q, float).reshape(-1),
                                    np.asarray(qd, float).reshape(-1)])
                prev_x, prev_t, _ = self.latest
                self.state_dt = float(t) - prev_t if prev_x is not None else 0.0
                self.latest = (x, float(t), now)
                self.state_ok = True
                return verdict
            self.state_ok = False
            self._why_not_ok = IMPLAUSIBLE if verdict.implausible else CONFIRMING
            if verdict.implausible:
                self.counters["bad_states"] += 1
            if verdict.latch:
                self.latch(f"implausible joint state: {verdict.reason}")
            return verdict

    def unreadable(self, reason: str, nonfinite: bool = False) -> None:
        """A joint-state message that could not be read at all (missing joints, length
        mismatch: ignored, e.g. another driver's joints), or with NaN/inf (latched)."""
        self.counters["bad_states"] += 1
        if nonfinite:
            with self._state_lock:
                self.state_ok = False
                self._why_not_ok = IMPLAUSIBLE
                self.latch(f"non-finite joint state: {reason}")

    # ------------------------------------------------------------------ policies
    def offer(self, policy: Any, ahead: bool) -> bool:
        """A new plan. ``ahead``: it was planned from a predicted state and takes over at
        its ``t0`` (only when a current policy exists to bridge the gap). Returns whether
        a policy was in use (a warm hand-over).

        Raises:
            TypeError: not a :class:`~mbrl_ros.core.planners.base.Policy` (``action``,
                ``t0``, ``t_end``); the policy in use stays.
        """
        if not isinstance(policy, Policy):
            raise TypeError(f"a {type(policy).__name__} is not a policy (needs action, t0 "
                            "and t_end)")
        with self._lock:
            warm = self._policy is not None
            if ahead and warm:
                self._next_policy = policy
            else:
                self._policy, self._next_policy = policy, None
        return warm

    def clear_policy(self) -> None:
        with self._lock:
            self._policy = self._next_policy = None

    @property
    def has_policy(self) -> bool:
        return self._policy is not None

    # ------------------------------------------------------------------ faults
    def latch(self, reason: str) -> bool:
        """Latch a fault (safe hold until :meth:`clear_fault`); True if newly latched.
        The plan is dropped: after clearing, planning starts from the current state."""
        new = self.fault is None
        if new:
            self.fault = reason
        self.clear_policy()
        return new

    def clear_fault(self) -> str | None:
        """Clear the latched fault; returns it. The state check starts afresh (confirms
        the next states), so old rejections do not latch again at once."""
        with self._state_lock:
            previous, self.fault = self.fault, None
            self.clear_policy()
            self.plausibility.reset()
            self.state_ok = False
            self._why_not_ok = CONFIRMING
        return previous

    def reset(self) -> None:
        """A new episode starts elsewhere: forget the state, the plan and the last
        command (the rate limit starts from zero); the state check confirms anew."""
        with self._state_lock:
            self.clear_policy()
            self.safety.reset()
            self.plausibility.reset()
            self.latest = (None, 0.0, -np.inf)
            self.last_command = None
            self.state_dt = 0.0
            self.state_ok = False
            self._why_not_ok = NO_STATE

    # ------------------------------------------------------------------ control step
    def stale(self, now: float) -> bool:
        """No accepted state within ``state_timeout`` (or none at all)."""
        x, _, arrival = self.latest
        return x is None or now - arrival > self.safety.settings.state_timeout

    def step(self, now: float, dt: float) -> Step:
        """The command for this control step at ``now`` [s, monotonic]; ``dt`` [s] is the
        time the rate limit may spread a change over. Recorded in :attr:`last_command`
        with the stamp of the newest state (None if there is none)."""
        x, t, _ = self.latest
        out = self._step(x, t, now, dt)
        self.last_command = None if x is None else (out.command.copy(), t)
        return out

    def _step(self, x: np.ndarray | None, t: float, now: float, dt: float) -> Step:
        if x is None:          # nothing received, or not confirmed (implausible) yet
            return self._hold(None, dt, self._why_not_ok)
        if self.stale(now):
            return self._hold(None, dt, STALE)
        if self.fault is not None:
            return self._hold(x, dt, FAULT)
        if not self.state_ok:
            return self._hold(x, dt, self._why_not_ok)
        with self._lock:
            nxt = self._next_policy
            if nxt is not None and t >= nxt.t0 - 1e-9:
                self._policy, self._next_policy = nxt, None
            policy = self._policy
        if policy is None:
            return self._hold(x, dt, NO_PLAN)
        if t > policy.t_end:
            # The plan ran out (replanning failed or fell behind): a constant open-loop
            # effort from its last knot must not be applied indefinitely.
            return self._hold(x, dt, PLAN_EXPIRED)
        try:
            u = np.asarray(policy.action(x, t), dtype=float).reshape(self.safety.last.shape)
            finite = bool(np.all(np.isfinite(u)))
            why = "policy produced a non-finite command"
        except Exception as e:               # a broken policy must not stop the loop
            finite, why = False, f"policy evaluation failed: {e!r}"
        if not finite:
            latched = self.latch(why)
            out = self._hold(x, dt, FAULT)
            return Step(out.command, out.hold, latched)
        return Step(self._finite(self.safety(u, x, dt)))

    def release_step(self, dt: float) -> np.ndarray:
        """One step of ramping to zero effort within the rate limit (leaving)."""
        return self._finite(self.safety.rate_limit(np.zeros_like(self.safety.last), dt))

    def _hold(self, x: np.ndarray | None, dt: float, reason: str) -> Step:
        self.counters["holds"] += 1
        self.holds[reason] += 1
        return Step(self._finite(self.safety.rate_limit(self.safety.hold(x), dt)), reason)

    def _finite(self, u: np.ndarray) -> np.ndarray:
        """Never send NaN/inf: zeros instead, and the rate limit restarts from zero."""
        if not np.all(np.isfinite(u)):
            self.counters["nonfinite_blocked"] += 1
            self.safety.reset()
            return np.zeros_like(self.safety.last)
        return u
