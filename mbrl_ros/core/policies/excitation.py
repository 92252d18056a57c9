"""Excitation controller for system identification and dynamics-model data collection.

The controller drives every command joint with a PD law toward a random joint-space target
that is redrawn every ``target_period`` seconds, plus Ornstein-Uhlenbeck (coloured) noise.
The PD part sweeps the joints across their ranges (large-amplitude, low-frequency motion),
the noise adds broadband content so that velocity- and acceleration-dependent terms are
identifiable. Efforts are clipped to the effort limits.

Gains from the robot's inertia: arms mix heavy and light joints (a Panda's shoulder moves
~2 kg·m², its wrist ~0.01 kg·m²), so one kp/kd pair for all joints either barely moves the
shoulder or drives the wrist unstable: at a control period dt a PD loop chatters at the
Nyquist rate once kd*dt/I approaches 1 (seen on arm2's elbow with kd = 2 N·m·s/rad at
100 Hz). Each joint j therefore gets the gains of a second-order loop of bandwidth
``bandwidth`` and damping ``damping_ratio`` on its effective inertia I_j = 1/(M^-1)_jj
(MuJoCo's joint-space inertia at the home pose, so coupling and armature are included):
kp_j = I_j w^2, kd_j = 2 zeta I_j w with w = 2 pi bandwidth, and w is capped so that
2 zeta w dt <= 0.5 keeps the discrete loop well damped. The noise standard deviation is a
fraction of each joint's effort limit.

Pure numpy; no ROS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.settings import setting

__all__ = ["ExcitationPolicy", "ExcitationSettings"]


@dataclass(frozen=True)
class ExcitationSettings:
    """Parameters of :class:`ExcitationPolicy`.

    Attributes:
        bandwidth: PD loop bandwidth toward the random target, Hz (see module docstring).
        damping_ratio: Damping ratio of that loop.
        noise_std: Standard deviation of the coloured noise as a fraction of each joint's
            effort limit (dimensionless).
        noise_corr_time: Correlation time of the Ornstein-Uhlenbeck noise, s.
        target_period: Time between new random targets, s.
        target_margin: Fraction of each joint's range kept free at both ends when drawing
            targets, in [0, 0.5).
    """

    bandwidth: float = setting(1.5, "PD loop bandwidth toward the random targets (gains from "
                               "each joint's inertia)", unit="Hz", low=0.0, high=100.0)
    damping_ratio: float = setting(0.7, "PD loop damping ratio", low=0.0, high=5.0)
    noise_std: float = setting(0.3, "std of the coloured noise as a fraction of each effort "
                               "limit", low=0.0, high=1.0)
    noise_corr_time: float = setting(0.1, "correlation time of the Ornstein-Uhlenbeck noise",
                                     unit="s", low=0.0, high=100.0)
    target_period: float = setting(1.0, "time between new random targets", unit="s",
                                   low=1e-3, high=1e4)
    target_margin: float = setting(0.1, "fraction of each joint range kept free at both ends",
                                   low=0.0, high=0.49)

    def __post_init__(self) -> None:
        for name in ("bandwidth", "damping_ratio", "noise_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"ExcitationSettings.{name} must be finite and >= 0, got {value}")
        for name in ("noise_corr_time", "target_period"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"ExcitationSettings.{name} must be finite and > 0, got {value}")
        if not (math.isfinite(self.target_margin) and 0.0 <= self.target_margin < 0.5):
            raise ValueError(
                f"ExcitationSettings.target_margin must be in [0, 0.5), got {self.target_margin}"
            )


class ExcitationPolicy:
    """PD-to-random-targets plus coloured noise, for exciting a robot's dynamics.

    Args:
        settings: Controller parameters.
        position_limits: Position range [lower, upper] of each command joint, shape
            (n_cmd, 2), rad or m. A joint with an infinite bound is treated as a continuous
            rotation: its targets are drawn from [-pi, pi] and its position error is wrapped
            to [-pi, pi).
        effort_limits: Symmetric effort limit of each command joint, shape (n_cmd,), N*m or
            N; finite and > 0.
        command_index: Index of each command joint in the state-joint vector, shape (n_cmd,).
        n_joints: Number of state joints; the state is ``x = [q, qd]`` of length
            ``2 * n_joints``.
        inertia: Effective inertia of each command joint, shape (n_cmd,), kg·m² (kg for
            slide joints): 1/(M^-1)_jj, e.g. :meth:`mbrl_ros.sim.env.MujocoSim.effective_inertia`.
        seed: Seed of the random generator; equal seeds give identical action sequences.
        dt: Interval between successive :meth:`action` calls, s; sets the discretisation
            of the Ornstein-Uhlenbeck noise.

    Raises:
        ValueError: Inconsistent shapes, non-finite or non-positive effort limits, inverted
            position limits, out-of-range indices, or ``dt <= 0``.
    """

    def __init__(
        self,
        settings: ExcitationSettings,
        position_limits: np.ndarray,
        effort_limits: np.ndarray,
        command_index: np.ndarray,
        n_joints: int,
        inertia: np.ndarray,
        seed: int = 0,
        dt: float = 0.01,
    ) -> None:
        effort = np.array(effort_limits, dtype=float).reshape(-1)
        n_cmd = effort.shape[0]
        limits = np.array(position_limits, dtype=float)
        if limits.shape != (n_cmd, 2):
            raise ValueError(f"position_limits must have shape ({n_cmd}, 2), got {limits.shape}")
        if not (np.isfinite(effort).all() and (effort > 0).all()):
            raise ValueError(f"effort_limits must be finite and > 0, got {effort.tolist()}")
        if np.isnan(limits).any() or (limits[:, 0] >= limits[:, 1]).any():
            raise ValueError(f"position_limits must satisfy lower < upper, got {limits.tolist()}")
        index = np.array(command_index).reshape(-1)
        if index.shape != (n_cmd,) or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"command_index must hold {n_cmd} integers, got {index.tolist()}")
        n_joints = int(n_joints)
        if n_cmd and (index.min() < 0 or index.max() >= n_joints):
            raise ValueError(f"command_index {index.tolist()} out of range for {n_joints} joints")
        if not (math.isfinite(dt) and dt > 0.0):
            raise ValueError(f"dt must be a positive number of seconds, got {dt}")

        self._settings = settings
        self._effort_limits = effort
        self._index = index.astype(np.intp)
        self._n_joints = n_joints
        self._dt = float(dt)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

        self._continuous = ~np.isfinite(limits).all(axis=1)
        # Placeholder zeros for continuous joints keep inf - inf out of the arithmetic.
        bounded = np.where(self._continuous[:, None], 0.0, limits)
        span = bounded[:, 1] - bounded[:, 0]
        margin = settings.target_margin
        self._target_low = np.where(self._continuous, -np.pi, bounded[:, 0] + margin * span)
        self._target_high = np.where(self._continuous, np.pi, bounded[:, 1] - margin * span)

        inertia = np.array(inertia, dtype=float).reshape(-1)
        if inertia.shape != (n_cmd,) or not (np.isfinite(inertia).all() and (inertia > 0).all()):
            raise ValueError(f"inertia must hold {n_cmd} positive numbers, got {inertia.tolist()}")
        zeta = settings.damping_ratio
        w = 2.0 * math.pi * settings.bandwidth
        if zeta > 0:
            w = min(w, 0.25 / (zeta * self._dt))   # 2 zeta w dt <= 0.5: no discrete chatter
        self._kp = inertia * w * w
        self._kd = inertia * 2.0 * zeta * w
        self._noise_sigma = settings.noise_std * effort
        self._noise_decay = math.exp(-self._dt / settings.noise_corr_time)
        self._noise_gain = math.sqrt(1.0 - self._noise_decay**2)

        self._target = np.zeros(n_cmd)
        self._noise = np.zeros(n_cmd)
        self._next_target_time: float | None = None
        self._last_time = -math.inf

    @property
    def settings(self) -> ExcitationSettings:
        """The controller parameters."""
        return self._settings

    # A stream without a horizon: valid at any time (the Policy protocol's bounds).
    t0 = -math.inf
    t_end = math.inf

    @property
    def kp(self) -> np.ndarray:
        """Per-joint proportional gains after effort-limit scaling, shape (n_cmd,)."""
        return self._kp.copy()

    @property
    def kd(self) -> np.ndarray:
        """Per-joint derivative gains after effort-limit scaling, shape (n_cmd,)."""
        return self._kd.copy()

    @property
    def target(self) -> np.ndarray:
        """Current joint-space target, shape (n_cmd,), rad or m (zeros before the first action)."""
        return self._target.copy()

    def reset(self) -> None:
        """Start a new episode: a fresh target and noise state are drawn at the next action.

        The random stream continues (it is not re-seeded), so successive episodes get
        different excitation while the whole sequence stays deterministic for a seed.
        """
        self._next_target_time = None
        self._last_time = -math.inf

    def action(self, x: np.ndarray, t: float) -> np.ndarray:
        """Effort command for the current state.

        Args:
            x: State ``[q, qd]``, shape (2 * n_joints,), rad (m) and rad/s (m/s).
            t: Time, s. A new target is drawn when ``t`` reaches the next target time; a
                time earlier than the previous call restarts the target schedule.

        Returns:
            Efforts for the command joints, shape (n_cmd,), N*m or N, within
            ``±effort_limits``.

        Raises:
            ValueError: Wrong state shape, non-finite state or non-finite time.
        """
        x = np.asarray(x, dtype=float)
        if x.shape != (2 * self._n_joints,):
            raise ValueError(f"state must have shape ({2 * self._n_joints},), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("state contains NaN or inf")
        target, noise = self.reference(t)
        q = x[self._index]
        qd = x[self._n_joints + self._index]
        error = target - q
        error = np.where(self._continuous, (error + np.pi) % (2.0 * np.pi) - np.pi, error)
        u = self._kp * error - self._kd * qd + noise
        return np.clip(u, -self._effort_limits, self._effort_limits)

    @property
    def continuous(self) -> np.ndarray:
        """Which command joints are continuous (error wrapped), shape (n_cmd,), bool."""
        return self._continuous.copy()

    @property
    def command_index(self) -> np.ndarray:
        """Index of each command joint in the state-joint vector, shape (n_cmd,)."""
        return self._index.copy()

    def reference(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance the excitation by one control step to time ``t`` and return its
        reference: the PD target (n_cmd,) [rad or m] and the coloured noise (n_cmd,)
        [N·m or N]. :meth:`action` is ``clip(kp (target - q) - kd qd + noise)`` of it; a
        planner that hands the excitation out as a feedback policy calls this once per
        future control step (see :mod:`mbrl_ros.core.planners.excitation`).

        Raises:
            ValueError: non-finite time.
        """
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"time must be finite, got {t}")
        if self._next_target_time is None or t < self._last_time:
            # Episode start: draw the noise from its stationary distribution so the
            # excitation is statistically the same from the first step on.
            self._noise = self._noise_sigma * self._rng.standard_normal(self._noise.shape)
            self._draw_target(t)
        else:
            self._noise = self._noise_decay * self._noise + self._noise_gain * (
                self._noise_sigma * self._rng.standard_normal(self._noise.shape)
            )
            if t >= self._next_target_time:
                self._draw_target(t)
        self._last_time = t
        return self._target.copy(), self._noise.copy()

    def _draw_target(self, t: float) -> None:
        self._target = self._rng.uniform(self._target_low, self._target_high)
        self._next_target_time = t + self._settings.target_period
