"""ROS-free MuJoCo simulator of an effort-controlled robot (arm or cart-pole).

:class:`MujocoSim` wraps one MuJoCo model and advances it in fixed control periods with a
zero-order hold on the commanded joint efforts, the way a ros2_control effort interface
behaves. The ROS sim node is a thin layer on top of it; everything here is plain numpy and
MuJoCo so that it can be tested and used offline.

State and command joints, their units, limits and actuators are read from the MJCF by
:func:`mbrl_ros.sim.layout.joint_layout` (its module states the conventions).
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Sequence

import mujoco
import numpy as np

from mbrl_ros.sim.layout import joint_layout
from mbrl_ros.sim.models import resolve_model

__all__ = ["CommandError", "MujocoSim", "Randomization"]

_HOME_KEY = "home"
_EE_SITE = "ee"
# Tolerance on control_period / timestep being an integer.
_PERIOD_RTOL = 1e-9


@dataclass(frozen=True)
class Randomization:
    """Domain randomisation, resampled at every episode start. Zero switches a term off.

    Attributes:
        mass: Relative mass spread: every body's mass (and, consistently, its rotational
            inertia) is scaled by a factor drawn from U[1 - mass, 1 + mass]. In [0, 1).
        damping: Relative damping spread: every DoF's viscous damping is scaled by a factor
            drawn from U[1 - damping, 1 + damping]. In [0, 1].
        friction: Absolute dry friction: U[0, friction] is added to every DoF's
            ``frictionloss`` (N*m for hinges, N for slides). >= 0.
    """

    mass: float = 0.0
    damping: float = 0.0
    friction: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mass) and 0.0 <= self.mass < 1.0):
            raise ValueError(f"Randomization.mass must be in [0, 1), got {self.mass}")
        if not (math.isfinite(self.damping) and 0.0 <= self.damping <= 1.0):
            raise ValueError(f"Randomization.damping must be in [0, 1], got {self.damping}")
        if not (math.isfinite(self.friction) and self.friction >= 0.0):
            raise ValueError(f"Randomization.friction must be finite and >= 0, got {self.friction}")

    @property
    def enabled(self) -> bool:
        """True if any term is non-zero."""
        return self.mass > 0.0 or self.damping > 0.0 or self.friction > 0.0


class CommandError(ValueError):
    """An effort command that must not reach the simulation (wrong length or non-finite)."""


class MujocoSim:
    """MuJoCo simulation stepped in control periods with zero-order-hold joint efforts.

    Args:
        model: Shipped model name (see :func:`mbrl_ros.sim.models.available_models`) or path
            of an MJCF file.
        joints: State joint names, in order. Default: all hinge and slide joints in model
            order.
        command_joints: Names of the state joints that receive efforts, in command-vector
            order. Each needs a motor actuator. Default: the state joints that have one, in
            ``joints`` order.
        control_period: Duration of one :meth:`step`, s. Must be a positive integer
            multiple of the physics timestep.
        timestep: Physics timestep, s; overrides the model's ``<option timestep>`` if given.
        seed: Seed of the random generator used for initial-state noise and domain
            randomisation; equal seeds give bit-identical simulations.
        initial_positions: Episode start positions, shape (n_joints,), rad or m. Default:
            the ``home`` keyframe if the model has one, else zeros.
        initial_velocities: Episode start velocities, shape (n_joints,), rad/s or m/s.
            Default: the ``home`` keyframe if the model has one, else zeros.
        initial_noise: Standard deviation of Gaussian noise added to the start positions
            (rad or m) and, with the same number, velocities (rad/s or m/s) at every episode
            start. Noisy positions are clipped into the joint limits.
        randomization: Domain randomisation, resampled at every episode start.

    Raises:
        ValueError: For an unknown model, unknown / duplicate / unsupported joint names, a
            command joint without a motor actuator or outside ``joints``, a control period
            that is not a positive multiple of the timestep, or invalid initial state.

    Construction starts the first episode (``episode == 0``), applying randomisation and
    initial noise exactly like :meth:`reset`.
    """

    def __init__(
        self,
        model: str,
        joints: Sequence[str] | None = None,
        command_joints: Sequence[str] | None = None,
        control_period: float = 0.01,
        timestep: float | None = None,
        seed: int = 0,
        initial_positions: Sequence[float] | None = None,
        initial_velocities: Sequence[float] | None = None,
        initial_noise: float = 0.0,
        randomization: Randomization = Randomization(),
    ) -> None:
        self._model_path = resolve_model(model)
        self._model = mujoco.MjModel.from_xml_path(str(self._model_path))
        m = self._model

        if timestep is not None:
            if not (math.isfinite(timestep) and timestep > 0.0):
                raise ValueError(f"timestep must be a positive number of seconds, got {timestep}")
            m.opt.timestep = float(timestep)
        dt = float(m.opt.timestep)
        if not (math.isfinite(control_period) and control_period > 0.0):
            raise ValueError(
                f"control_period must be a positive number of seconds, got {control_period}"
            )
        n_sub = round(control_period / dt)
        if timestep is None and (n_sub < 1 or abs(n_sub * dt - control_period)
                                 > _PERIOD_RTOL * control_period):
            # No timestep was forced: take the largest one not above the MJCF's that
            # divides the control period, so any control rate just works.
            n_sub = max(1, math.ceil(control_period / dt - _PERIOD_RTOL))
            dt = control_period / n_sub
            m.opt.timestep = dt
        if n_sub < 1 or abs(n_sub * dt - control_period) > _PERIOD_RTOL * control_period:
            raise ValueError(
                f"control_period {control_period!r} s is not a positive integer multiple of "
                f"the timestep {dt!r} s"
            )
        self._control_period = float(control_period)
        self._n_substeps = int(n_sub)

        lay = joint_layout(m, joints, command_joints, self._model_path.name)
        joint_names = list(lay.joint_names)
        self._joint_names = lay.joint_names
        self._qpos_idx = lay.qpos_idx
        self._dof_idx = lay.dof_idx
        self._continuous = lay.continuous
        self._position_limits = lay.position_limits
        self._command_names = lay.command_names
        self._command_index = lay.command_index
        self._ctrl_idx = lay.ctrl_idx
        self._ctrl_per_effort = lay.ctrl_per_effort
        self._effort_limits = lay.effort_limits

        # --- episode start state ------------------------------------------------------
        self._home_key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, _HOME_KEY)
        n = len(joint_names)
        if self._home_key >= 0:
            default_q = m.key_qpos[self._home_key][self._qpos_idx].copy()
            default_v = m.key_qvel[self._home_key][self._dof_idx].copy()
        else:
            default_q = np.zeros(n)
            default_v = np.zeros(n)
        self._home_q, self._home_v = default_q, default_v
        self.set_initial_state(initial_positions, initial_velocities, initial_noise)

        # --- randomisation ------------------------------------------------------------
        if not isinstance(randomization, Randomization):
            raise TypeError(
                f"randomization must be a Randomization, got {type(randomization).__name__}"
            )
        self._randomization = randomization
        self._nominal_body_mass = m.body_mass.copy()
        self._nominal_body_inertia = m.body_inertia.copy()
        self._nominal_dof_damping = m.dof_damping.copy()
        self._nominal_dof_frictionloss = m.dof_frictionloss.copy()
        self._rng = np.random.default_rng(seed)

        site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, _EE_SITE)
        self._ee_site = int(site)

        self._data = mujoco.MjData(m)
        self._held = np.zeros(len(self._command_names))
        self._periods = 0
        self._episode = 0
        self._start_episode(None, None)

    # ------------------------------------------------------------------ properties

    @property
    def model(self) -> mujoco.MjModel:
        """The MuJoCo model (its mass/damping/friction change when randomisation is on)."""
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        """The MuJoCo data (full simulation state)."""
        return self._data

    @property
    def model_path(self) -> pathlib.Path:
        """Absolute path of the loaded MJCF file."""
        return self._model_path

    @property
    def joint_names(self) -> tuple[str, ...]:
        """State joint names, length n_joints."""
        return self._joint_names

    @property
    def command_names(self) -> tuple[str, ...]:
        """Command joint names, length n_commands."""
        return self._command_names

    @property
    def command_index(self) -> np.ndarray:
        """Index of each command joint in the state-joint vector, shape (n_commands,), int."""
        return self._command_index.copy()

    @property
    def n_joints(self) -> int:
        """Number of state joints."""
        return len(self._joint_names)

    @property
    def n_commands(self) -> int:
        """Number of command joints."""
        return len(self._command_names)

    @property
    def timestep(self) -> float:
        """Physics timestep, s."""
        return float(self._model.opt.timestep)

    @property
    def control_period(self) -> float:
        """Duration of one :meth:`step`, s."""
        return self._control_period

    @property
    def n_substeps(self) -> int:
        """Physics steps per control period."""
        return self._n_substeps

    @property
    def time(self) -> float:
        """Simulated time since construction, s. Keeps running across resets."""
        return self._periods * self._control_period

    @property
    def episode(self) -> int:
        """Episode counter: 0 after construction, incremented by every :meth:`reset`."""
        return self._episode

    @property
    def continuous(self) -> np.ndarray:
        """(n_joints,) bool: unlimited hinge joints, whose angle is periodic (2 pi)."""
        return self._continuous.copy()

    @property
    def position_limits(self) -> np.ndarray:
        """Joint position limits [lower, upper] per state joint, shape (n_joints, 2), rad or m.

        Unlimited joints have (-inf, inf).
        """
        return self._position_limits.copy()

    @property
    def effort_limits(self) -> np.ndarray:
        """Symmetric effort limit per command joint, shape (n_commands,), N*m or N.

        The largest b such that [-b, b] is within the actuator's ``ctrlrange`` (times gain and
        gear), its ``forcerange`` and the joint's ``actuatorfrcrange``, where limited; inf if
        none of these is limited.
        """
        return self._effort_limits.copy()

    @property
    def has_ee(self) -> bool:
        """True if the model has a site named ``ee``."""
        return self._ee_site >= 0

    @property
    def randomization(self) -> Randomization:
        """The domain randomisation settings."""
        return self._randomization

    # ------------------------------------------------------------------ episodes

    def set_initial_state(
        self,
        positions: Sequence[float] | None = None,
        velocities: Sequence[float] | None = None,
        noise: float = 0.0,
    ) -> None:
        """Set the state later resets start from (validated before anything changes).

        Args:
            positions: (n_joints,) rad or m; None: the ``home`` keyframe (or zeros).
            velocities: (n_joints,) rad/s or m/s; None: the ``home`` keyframe (or zeros).
            noise: std of the Gaussian noise added at each reset (rad or m, and per second).

        Raises:
            ValueError: wrong length, non-finite values or negative noise.
        """
        n = self.n_joints
        q = (self._home_q.copy() if positions is None
             else self._vector(positions, n, "initial_positions", self._joint_names))
        v = (self._home_v.copy() if velocities is None
             else self._vector(velocities, n, "initial_velocities", self._joint_names))
        if not (math.isfinite(noise) and noise >= 0.0):
            raise ValueError(f"initial_noise must be finite and >= 0, got {noise}")
        self._initial_q, self._initial_v, self._initial_noise = q, v, float(noise)

    def reset(
        self,
        positions: Sequence[float] | None = None,
        velocities: Sequence[float] | None = None,
    ) -> None:
        """Start a new episode.

        Resamples the domain randomisation, sets the state to the given values or to the
        initial state plus noise, zeroes the held effort and increments :attr:`episode`.
        :attr:`time` is not reset.

        Args:
            positions: Start positions, shape (n_joints,), rad or m; no noise is added.
                Default: initial positions plus ``initial_noise``.
            velocities: Start velocities, shape (n_joints,), rad/s or m/s; no noise is added.
                Default: initial velocities plus ``initial_noise``.

        Raises:
            ValueError: Wrong length or non-finite values.
        """
        n = self.n_joints
        names = self._joint_names
        q = None if positions is None else self._vector(positions, n, "positions", names)
        v = None if velocities is None else self._vector(velocities, n, "velocities", names)
        self._episode += 1
        self._start_episode(q, v)

    def set_state(self, positions: Sequence[float], velocities: Sequence[float]) -> None:
        """Overwrite the joint state without starting an episode.

        Args:
            positions: Shape (n_joints,), rad or m.
            velocities: Shape (n_joints,), rad/s or m/s.

        Raises:
            ValueError: Wrong length or non-finite values.
        """
        q = self._vector(positions, self.n_joints, "positions", self._joint_names)
        v = self._vector(velocities, self.n_joints, "velocities", self._joint_names)
        self._data.qpos[self._qpos_idx] = q
        self._data.qvel[self._dof_idx] = v
        mujoco.mj_forward(self._model, self._data)

    # ------------------------------------------------------------------ commands

    def sanitize_command(self, effort: Sequence[float]) -> tuple[np.ndarray, bool]:
        """Validate an effort command and clamp it to the effort limits.

        Args:
            effort: Efforts for the command joints, shape (n_commands,), N*m or N.

        Returns:
            ``(clamped, was_clamped)``: a new float array of shape (n_commands,) with every
            entry within ``±effort_limits``, and whether any entry had to be clamped.

        Raises:
            CommandError: Wrong length, not numeric, or any NaN / inf entry.
        """
        e = self._command_array(effort)
        clamped = np.clip(e, -self._effort_limits, self._effort_limits)
        return clamped, bool(np.any(clamped != e))

    def step(self, effort: Sequence[float] | None = None) -> None:
        """Advance the simulation by exactly one control period.

        The effort is held constant over the period (zero-order hold). MuJoCo additionally
        clamps it to the actuator ``ctrlrange``; callers should pass efforts from
        :meth:`sanitize_command` so that clamping is visible to them.

        Args:
            effort: Efforts for the command joints, shape (n_commands,), N*m or N. None
                keeps the previously held effort (zero after a reset).

        Raises:
            CommandError: Wrong length or non-finite effort; the simulation is not advanced
                and the held effort is unchanged, so NaN never reaches MuJoCo.
        """
        if effort is not None:
            e = self._command_array(effort)
            ctrl = e * self._ctrl_per_effort
            # A huge finite effort divided by a tiny actuator gain can overflow to inf.
            if not np.isfinite(ctrl).all():
                raise CommandError(f"effort command {e.tolist()} overflows the actuator controls")
            self._held = e
            self._data.ctrl[self._ctrl_idx] = ctrl
        mujoco.mj_step(self._model, self._data, self._n_substeps)
        self._periods += 1

    # ------------------------------------------------------------------ readout

    def positions(self) -> np.ndarray:
        """Joint positions, shape (n_joints,), rad or m."""
        return self._data.qpos[self._qpos_idx]

    def velocities(self) -> np.ndarray:
        """Joint velocities, shape (n_joints,), rad/s or m/s."""
        return self._data.qvel[self._dof_idx]

    def efforts(self) -> np.ndarray:
        """Actuator force on each state joint in the last physics step, shape (n_joints,).

        N*m or N; 0 for joints without an actuator. Zero right after a reset.
        """
        return self._data.qfrc_actuator[self._dof_idx]

    def held_command(self) -> np.ndarray:
        """Effort currently held on the command joints, shape (n_commands,), N*m or N."""
        return self._held.copy()

    def state(self) -> np.ndarray:
        """``concat(positions, velocities)``, shape (2 * n_joints,)."""
        return np.concatenate((self._data.qpos[self._qpos_idx], self._data.qvel[self._dof_idx]))

    def effective_inertia(self) -> np.ndarray:
        """Effective inertia of each command joint at the current configuration,
        1/(M^-1)_jj, shape (n_commands,), kg·m² (kg for slide joints): what the joint's
        actuator feels when all other joints move freely (coupling and armature included)."""
        m, d = self._model, self._data
        mujoco.mj_forward(m, d)
        M = np.zeros((m.nv, m.nv))
        mujoco.mj_fullM(m, d, M)
        dofs = self._dof_idx[self._command_index]
        return 1.0 / np.diag(np.linalg.inv(M))[dofs]

    def ee_position(self) -> np.ndarray:
        """World position of the site ``ee``, shape (3,), m.

        Raises:
            ValueError: If the model has no site named ``ee`` (see :attr:`has_ee`).
        """
        if self._ee_site < 0:
            raise ValueError(f"model {self._model_path.name} has no site named {_EE_SITE!r}")
        return self._data.site_xpos[self._ee_site].copy()

    # ------------------------------------------------------------------ internals

    def _command_array(self, effort: Sequence[float]) -> np.ndarray:
        try:
            e = np.array(effort, dtype=float)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"effort command is not numeric: {exc}") from exc
        if e.shape != (self.n_commands,):
            got = e.shape[0] if e.ndim == 1 else f"an array of shape {e.shape}"
            raise CommandError(
                f"effort command has wrong length: expected {self.n_commands} values for "
                f"joints {list(self._command_names)}, got {got}"
            )
        bad = ~np.isfinite(e)
        if bad.any():
            names = [self._command_names[i] for i in np.flatnonzero(bad)]
            raise CommandError(f"effort command has non-finite values (NaN/inf) for joints {names}")
        return e

    @staticmethod
    def _vector(values: Sequence[float], n: int, what: str, names: Sequence[str]) -> np.ndarray:
        try:
            x = np.array(values, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} is not numeric: {exc}") from exc
        if x.shape != (n,):
            got = x.shape[0] if x.ndim == 1 else f"an array of shape {x.shape}"
            raise ValueError(f"{what}: expected {n} values for joints {list(names)}, got {got}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or inf: {x.tolist()}")
        return x

    def _randomize(self) -> None:
        r = self._randomization
        if not r.enabled:
            return
        m = self._model
        rng = self._rng
        if r.mass > 0.0:
            scale = rng.uniform(1.0 - r.mass, 1.0 + r.mass, size=m.nbody)
            # Scaling mass and inertia together is a uniform density change: the centre of
            # mass and the shape of the inertia ellipsoid stay physical.
            m.body_mass[:] = self._nominal_body_mass * scale
            m.body_inertia[:] = self._nominal_body_inertia * scale[:, None]
        if r.damping > 0.0:
            m.dof_damping[:] = self._nominal_dof_damping * rng.uniform(
                1.0 - r.damping, 1.0 + r.damping, size=m.nv
            )
        if r.friction > 0.0:
            m.dof_frictionloss[:] = self._nominal_dof_frictionloss + rng.uniform(
                0.0, r.friction, size=m.nv
            )
        # Constraint-solver scaling (invweight0, meaninertia, ...) is derived from the
        # masses at compile time; recompute it so randomised models behave like compiled ones.
        mujoco.mj_setConst(m, self._data)

    def _start_episode(self, positions: np.ndarray | None, velocities: np.ndarray | None) -> None:
        self._randomize()
        m, d = self._model, self._data
        # Full reset first: clears warm-starts, activations and controls, and puts any joint
        # that is not a state joint at its home (or model default) configuration.
        if self._home_key >= 0:
            mujoco.mj_resetDataKeyframe(m, d, self._home_key)
        else:
            mujoco.mj_resetData(m, d)
        d.time = self.time
        n = self.n_joints
        if positions is None:
            q = self._initial_q.copy()
            if self._initial_noise > 0.0:
                q += self._rng.normal(0.0, self._initial_noise, size=n)
                # Starting beyond a stop would make the constraint solver kick the joint.
                q = np.clip(q, self._position_limits[:, 0], self._position_limits[:, 1])
        else:
            q = positions
        if velocities is None:
            v = self._initial_v.copy()
            if self._initial_noise > 0.0:
                v += self._rng.normal(0.0, self._initial_noise, size=n)
        else:
            v = velocities
        d.qpos[self._qpos_idx] = q
        d.qvel[self._dof_idx] = v
        self._held = np.zeros(self.n_commands)
        d.ctrl[self._ctrl_idx] = 0.0
        mujoco.mj_forward(m, d)
