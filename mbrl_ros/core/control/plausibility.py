"""Is a joint state physically plausible? The gate between /joint_states and a policy.

A finite but absurd state (1e6 rad from a broken driver or a second publisher on the state
topic) must never reach a planner or a policy: planned from it, the controller commanded
full torque and threw the arm. :class:`StatePlausibility` accepts a state only if

1. every position lies within its joint's range widened by ``state_position_margin``
   (continuous joints: any finite angle) and every speed is at most the joint's
   ``state_max_velocity``;
2. it is reachable from the previous *accepted* state (the anchor) in the time between
   their stamps: per joint ``|dqd| <= a_max dt + velocity_tolerance`` (not checked while
   a joint stop is within reach: an impact changes velocities at once) and
   ``|dq| <= min(v_max dt, max(|qd0|, |qd1|) dt + a_max dt²/4) + position_tolerance``
   (the farthest a joint gets with its speed bounded by both end velocities and
   ``a_max``); a stamp before the anchor's is not reachable, a repeated stamp only with
   the same state.

Legitimate teleports exist: a simulator's reset or set_state starts an episode somewhere
else, a driver restart starts its stamps again. A state that is not reachable from the
anchor is rejected, but ``state_confirm`` consecutive states that are reachable from one
another (each from the one before) become the new anchor ("re-anchored"): a sim reset
costs ``state_confirm - 1`` rejected states, while a hostile stream interleaved with the
real one never forms such a run, and an out-of-range state always breaks it. The same
confirmation establishes the first anchor (at start, after :meth:`reset`) and replaces an
anchor older than ``state_anchor_timeout`` (a gap in the stamps: the reach bound would say
nothing); those states are held but are not counted as implausible.

Latch: :attr:`Verdict.latch` is set when ``implausible_latch`` consecutive states were
implausible, or as many arrived within ``implausible_window`` seconds (arrival clock) even
with plausible states between them -- a second publisher interleaving with the driver
never makes consecutive rejections, but must not go unnoticed (it also never moves the
arm: each of its states is rejected). Rejections that a confirmed re-anchoring run proved
legitimate are taken back from the window. A non-finite state latches at once.

Units: positions rad (hinge) or m (slide), velocities per second, times s. Arrays (n,)
in the robot's joint order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mbrl_ros.core.control.health import RecentEvents
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import SettingsError, setting

# The MJCF has no velocity limits: defaults far above any real arm (a Panda joint's limit
# is 2.6 rad/s, a UR's 3.1) and above the shipped simulations driven hard (random
# bang-bang efforts at half the limits: arm7 85 rad/s, arm2 35, cart-pole 15 m/s; at full
# effort arm7 spins to 119 rad/s: set state_max_velocity for such a simulation), yet far
# below the absurd values seen in the field (1e6).
DEFAULT_MAX_ANGULAR_VELOCITY = 100.0    # rad/s
DEFAULT_MAX_LINEAR_VELOCITY = 20.0      # m/s
# Acceleration default: this factor x the largest (effort limit / smallest effective
# inertia) of the command joints. The factor covers gravity and coupling torques, lighter
# configurations than sampled, and the short, stiff decelerations of a joint stop
# (MuJoCo's default limit time constant 0.02 s turns 5 rad/s into 250 rad/s^2).
ACCELERATION_FACTOR = 10.0


@dataclass(frozen=True)
class PlausibilitySettings:
    state_position_margin: float = setting(
        0.2, "a joint state is implausible when a position lies outside its joint's range "
        "by more than this (continuous joints: any finite angle)", unit="rad|m",
        low=0.0, high=1e3)
    state_max_velocity: tuple[float, ...] = setting(
        (), "largest plausible speed per state joint (one value: every joint; empty: "
        f"{DEFAULT_MAX_ANGULAR_VELOCITY:g} rad/s for hinge, {DEFAULT_MAX_LINEAR_VELOCITY:g} "
        "m/s for slide joints -- the MJCF has no velocity limits)", unit="rad/s|m/s",
        low=0.0, high=1e6)
    state_max_acceleration: tuple[float, ...] = setting(
        (), "largest plausible acceleration per state joint: bounds how far a state may jump "
        "from the last accepted one (one value: every joint; empty: from the robot, "
        "docs/CONTROLLER.md)", unit="rad/s²|m/s²", low=0.0, high=1e9)
    state_position_tolerance: float = setting(
        0.01, "added to the position jump allowed between stamps (sensor noise, stamp "
        "jitter)", unit="rad|m", low=0.0, high=1e3)
    state_velocity_tolerance: float = setting(
        0.5, "added to the velocity jump allowed between stamps (noisy velocity "
        "estimates)", unit="rad/s|m/s", low=0.0, high=1e6)
    state_anchor_timeout: float = setting(
        1.0, "a state stamped more than this after the previous accepted one is not "
        "checked against it but confirmed anew (state_confirm)", unit="s", low=1e-3,
        high=1e6)
    state_confirm: int = setting(
        3, "consecutive mutually reachable states that establish a new reference state: "
        "at start, after a gap or a teleport (simulator reset, set_state)", low=1, high=1000)
    implausible_latch: int = setting(
        5, "latch a fault (safe hold until ~/clear_error) after this many consecutive implausible "
        "joint states, or this many within implausible_window (0: never); at least state_confirm",
        low=0, high=1_000_000)
    implausible_window: float = setting(
        1.0, "implausible_latch also counts implausible states this close together "
        "(arrival time) with plausible ones between them: a second publisher on the state "
        "topic (0: consecutive only)", unit="s", low=0.0, high=1e6)

    def __post_init__(self) -> None:
        if 0 < self.implausible_latch < self.state_confirm:
            raise SettingsError(
                f"implausible_latch ({self.implausible_latch}) must be 0 or at least "
                f"state_confirm ({self.state_confirm}): a confirmed teleport (simulator "
                f"reset) is rejected state_confirm - 1 times first")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one :meth:`StatePlausibility.check`.

    Attributes:
        accepted: the state may be used (planned from, fed to the policy).
        reason: why it was not accepted, or a note on an acceptance ('re-anchored ...');
            '' for an ordinary acceptance.
        implausible: it counts as an implausible state (bad_states, the latch).
        latch: the latch limit is reached now (or the state is not finite).
    """
    accepted: bool
    reason: str = ""
    implausible: bool = False
    latch: bool = False


ACCEPTED = Verdict(True)


def _per_joint(values: Sequence[float], default: np.ndarray, name: str) -> np.ndarray:
    """A setting given as (), one value, or one value per joint -> (n,)."""
    n = default.size
    if len(values) == 0:
        return default.astype(float).copy()
    if len(values) == 1:
        return np.full(n, float(values[0]))
    if len(values) != n:
        raise SettingsError(f"{name} needs 1 or {n} values (one per state joint), "
                            f"got {len(values)}")
    return np.asarray(values, dtype=float)


def default_limits(linear: np.ndarray, effort_limits: np.ndarray,
                   min_inertia: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Default speed and acceleration bounds of the state joints.

    Args:
        linear: (n,) bool, slide joints (m) rather than hinge joints (rad).
        effort_limits: (nu,) effort limits of the command joints [N·m or N].
        min_inertia: (nu,) smallest effective inertia of each command joint [kg·m² or kg].

    Returns:
        (max_velocity (n,), max_acceleration (n,)); the acceleration is inf (no jump check
        on velocity) when no command joint has a finite, positive ratio.
    """
    linear = np.asarray(linear, dtype=bool)
    vmax = np.where(linear, DEFAULT_MAX_LINEAR_VELOCITY, DEFAULT_MAX_ANGULAR_VELOCITY)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(effort_limits, float) / np.asarray(min_inertia, float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    amax = ACCELERATION_FACTOR * float(ratio.max()) if ratio.size else np.inf
    return vmax.astype(float), np.full(linear.shape, amax)


def robot_limits(robot: RobotDescription, samples: int = 16, seed: int = 0,
                 min_inertia: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`default_limits` of a robot: joint types and effort limits from its MJCF, the
    inertias from :meth:`RobotDescription.min_effective_inertia` (``samples``, ``seed``)
    unless given (``min_inertia``, (m,) kg·m² or kg)."""
    if min_inertia is None:
        min_inertia = robot.min_effective_inertia(samples, seed)
    return default_limits(robot.linear, robot.effort_limits, min_inertia)


class StatePlausibility:
    """Accepts or rejects joint states (see the module docstring).

    Args:
        settings: the bounds and the latch.
        position_limits: (n, 2) [lower, upper] per state joint (±inf: unlimited).
        continuous: (n,) bool, periodic joints (angles compared modulo 2 pi).
        default_max_velocity, default_max_acceleration: (n,) bounds used when the
            settings leave them empty (:func:`default_limits`).
        names: joint names for messages (default j0, j1, ...).

    Raises:
        SettingsError: a per-joint setting with neither 1 nor n values.
    """

    def __init__(self, settings: PlausibilitySettings, position_limits: np.ndarray,
                 continuous: np.ndarray, default_max_velocity: np.ndarray,
                 default_max_acceleration: np.ndarray, names: Sequence[str] | None = None):
        self.settings = settings
        lim = np.asarray(position_limits, dtype=float).reshape(-1, 2)
        self.n = lim.shape[0]
        self.continuous = np.asarray(continuous, dtype=bool).reshape(self.n)
        margin = settings.state_position_margin
        unlimited = self.continuous | ~np.isfinite(lim).all(axis=1)
        self.lower = np.where(unlimited, -np.inf, lim[:, 0] - margin)
        self.upper = np.where(unlimited, np.inf, lim[:, 1] + margin)
        self.v_max = _per_joint(settings.state_max_velocity,
                                np.asarray(default_max_velocity, float).reshape(self.n),
                                "state_max_velocity")
        self.a_max = _per_joint(settings.state_max_acceleration,
                                np.asarray(default_max_acceleration, float).reshape(self.n),
                                "state_max_acceleration")
        self.names = tuple(names) if names is not None else tuple(f"j{i}"
                                                                  for i in range(self.n))
        self.counters = {"accepted": 0, "implausible": 0, "reanchors": 0}
        self._window = RecentEvents(settings.implausible_window)
        self._in_row = 0
        self.reset()

    @classmethod
    def for_robot(cls, settings: PlausibilitySettings, robot: RobotDescription,
                  min_inertia: np.ndarray | None = None) -> "StatePlausibility":
        """The check for a robot's state joints: its limits, continuous joints and names,
        and :func:`robot_limits` as the default bounds (``min_inertia``: see there)."""
        v_max, a_max = robot_limits(robot, min_inertia=min_inertia)
        return cls(settings, robot.position_limits, robot.continuous, v_max, a_max,
                   names=robot.joint_names)

    def reset(self) -> None:
        """Forget the reference state (a new episode starts elsewhere): the next states
        are confirmed anew. The latch counts are cleared too."""
        self._anchor: tuple[np.ndarray, np.ndarray, float] | None = None
        self._run: tuple[np.ndarray, np.ndarray, float] | None = None
        self._run_len = 0
        self._run_rejections = 0           # implausible verdicts inside the current run
        self._in_row = 0
        self._window.clear()

    # ------------------------------------------------------------------ check
    def check(self, q, qd, t: float, now: float) -> Verdict:
        """Verdict on the state (``q`` (n,), ``qd`` (n,)) stamped ``t`` [s], arriving at
        ``now`` [s, monotonic]. Never raises: malformed input is an implausible state."""
        try:
            q = np.asarray(q, dtype=float).reshape(self.n)
            qd = np.asarray(qd, dtype=float).reshape(self.n)
            t = float(t)
        except (TypeError, ValueError) as e:
            return self._implausible(f"malformed joint state ({e})", now)
        if not (np.isfinite(q).all() and np.isfinite(qd).all() and np.isfinite(t)):
            self._break_run()
            return self._implausible("non-finite joint state", now, latch=True)
        why = self._out_of_bounds(q, qd)
        if why:
            self._break_run()
            return self._implausible(why, now)
        anchor = self._anchor
        if anchor is not None and t - anchor[2] <= self.settings.state_anchor_timeout:
            why = self._unreachable(anchor, q, qd, t)
            if not why:
                self._accept(q, qd, t)
                return ACCEPTED
            return self._confirm(q, qd, t, now, why)
        return self._confirm(q, qd, t, now, "")

    @property
    def anchored(self) -> bool:
        """A reference state exists (states are checked against it)."""
        return self._anchor is not None

    # ------------------------------------------------------------------ pieces
    def _out_of_bounds(self, q: np.ndarray, qd: np.ndarray) -> str:
        bad = np.flatnonzero((q < self.lower) | (q > self.upper))
        if bad.size:
            j = bad[0]
            return (f"{self.names[j]} position {q[j]:.4g} outside "
                    f"[{self.lower[j]:.4g}, {self.upper[j]:.4g}]")
        bad = np.flatnonzero(np.abs(qd) > self.v_max)
        if bad.size:
            j = bad[0]
            return f"{self.names[j]} speed {abs(qd[j]):.4g} above {self.v_max[j]:.4g}"
        return ""

    def _unreachable(self, ref: tuple, q: np.ndarray, qd: np.ndarray, t: float) -> str:
        """'' if (q, qd) at t is reachable from ``ref`` = (q0, qd0, t0), else why not."""
        q0, qd0, t0 = ref
        dt = t - t0
        if dt < 0:
            return f"stamp {-dt:.4g} s before the previous accepted state's"
        s = self.settings
        dq = q - q0
        dq = np.where(self.continuous, (dq + np.pi) % (2 * np.pi) - np.pi, dq)
        # Velocity reachable in dt (no bound on acceleration: any, unless dt is 0).
        finite = np.isfinite(self.a_max)
        reach = np.where(finite, np.where(finite, self.a_max, 0.0) * dt,
                         np.inf if dt > 0 else 0.0)
        # The speed at time s in [0, dt] is at most |qd0| + a s and |qd1| + a (dt - s):
        # integrated, the distance is at most max(|qd0|, |qd1|) dt + a dt²/4.
        travel = np.maximum(np.abs(qd0), np.abs(qd)) * dt + (reach * dt / 4 if dt > 0 else 0.0)
        dq_bound = np.minimum(self.v_max * dt, travel) + s.state_position_tolerance
        # A joint stop within reach: an impact changes velocities at once, on the coupled
        # joints too (a cart hitting its end stop swings the pole), so velocities are only
        # held to the speed bound then.
        stop = dq_bound + s.state_position_margin
        at_stop = bool(np.any((np.minimum(q0, q) - self.lower <= stop)
                              | (self.upper - np.maximum(q0, q) <= stop)))
        dv_bound = reach + s.state_velocity_tolerance
        bad = np.flatnonzero(np.abs(qd - qd0) > dv_bound)
        if bad.size and not at_stop:
            j = bad[0]
            return (f"{self.names[j]} velocity jumped {qd[j] - qd0[j]:.4g} in {dt:.4g} s "
                    f"(at most {dv_bound[j]:.4g})")
        bad = np.flatnonzero(np.abs(dq) > dq_bound)
        if bad.size:
            j = bad[0]
            return (f"{self.names[j]} moved {dq[j]:.4g} in {dt:.4g} s "
                    f"(at most {dq_bound[j]:.4g})")
        return ""

    def _confirm(self, q, qd, t, now, why: str) -> Verdict:
        """Not reachable from a current anchor (``why``) or no current anchor (''): the
        state extends or starts a confirmation run; a run of state_confirm states becomes
        the anchor."""
        run = self._run
        if run is not None and t - run[2] <= self.settings.state_anchor_timeout \
                and not self._unreachable(run, q, qd, t):
            self._run_len += 1
        else:
            self._run_len, self._run_rejections = 1, 0
        self._run = (q, qd, t)
        if self._run_len >= self.settings.state_confirm:
            replaced = self._anchor is not None
            # The run's rejections were a teleport, not a hostile stream.
            self._window.remove_last(self._run_rejections)
            self._accept(q, qd, t)
            if replaced:
                self.counters["reanchors"] += 1
                return Verdict(True, f"re-anchored after {self.settings.state_confirm} "
                                     "consistent states (a teleport: simulator reset, "
                                     "set_state or driver restart)")
            return ACCEPTED
        if why:
            self._run_rejections += 1
            return self._implausible(why, now, keep_run=True)
        return Verdict(False, f"confirming the joint state ({self._run_len} of "
                              f"{self.settings.state_confirm} consistent states)")

    def _accept(self, q, qd, t) -> None:
        self._anchor = (q, qd, t)
        self._run, self._run_len, self._run_rejections = None, 0, 0
        self._in_row = 0
        self.counters["accepted"] += 1

    def _break_run(self) -> None:
        self._run, self._run_len, self._run_rejections = None, 0, 0

    def _implausible(self, why: str, now: float, latch: bool = False,
                     keep_run: bool = False) -> Verdict:
        if not keep_run:
            self._break_run()
        self.counters["implausible"] += 1
        self._in_row += 1
        self._window.add(now)
        limit = self.settings.implausible_latch
        if limit > 0 and (self._in_row >= limit or self._window.count(now) >= limit):
            latch = True
            why = (f"{why}; {limit} implausible joint states "
                   + ("in a row" if self._in_row >= limit else
                      f"within {self.settings.implausible_window:g} s"))
        return Verdict(False, why, implausible=True, latch=latch)
