"""What a robot is, read from its MJCF without building a simulator.

:class:`RobotDescription` holds the joints, limits, actuators, home configuration and the
end-effector kinematics of a robot, as :class:`mbrl_ros.sim.env.MujocoSim` would see the
same MJCF (both read it through :func:`mbrl_ros.sim.layout.joint_layout`). Nodes and core code
that only need to *describe* a robot (a controller's limits, a fitter's command joints, a
metric's forward kinematics) use it instead of a simulator: nothing here steps physics.

Conventions (as in :mod:`mbrl_ros.sim.env`): state joints are the hinge/slide joints in
model order; positions rad or m, velocities rad/s or m/s, efforts N·m or N.
"""
from __future__ import annotations

import pathlib
import threading
from dataclasses import dataclass, field

import mujoco
import numpy as np

from mbrl_ros.sim.layout import joint_layout
from mbrl_ros.sim.models import resolve_model

__all__ = ["RobotDescription", "resolve_model"]

HOME_KEY = "home"
EE_SITE = "ee"


def _frozen(a) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class RobotDescription:
    """A robot's joints, limits and kinematics (immutable; arrays are read-only).

    Build it with :meth:`load` from a shipped model name or an MJCF path.

    Attributes:
        model_path: absolute path of the MJCF file.
        joint_names: state joints (hinge/slide), (n,).
        command_names: command joints (the state joints with a motor actuator), (m,).
        command_index: index of each command joint in ``joint_names``, (m,) int.
        position_limits: (n, 2) [lower, upper], rad or m; (-inf, inf) for unlimited joints.
        continuous: (n,) bool, unlimited hinges (the angle wraps every 2 pi).
        linear: (n,) bool, slide joints (positions in m).
        effort_limits: (m,) symmetric effort limit, N·m or N (inf: the MJCF sets none).
        home_positions, home_velocities: (n,) the ``home`` keyframe, else zeros.
        ee_site: name of the end-effector site (``ee``), or '' if the MJCF has none.

    MJCF has no joint velocity limit, so a description has none either (the controller's
    plausibility bounds come from :attr:`linear`, :attr:`effort_limits` and
    :meth:`min_effective_inertia`).
    """

    model_path: pathlib.Path
    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    command_index: np.ndarray
    position_limits: np.ndarray
    continuous: np.ndarray
    linear: np.ndarray
    effort_limits: np.ndarray
    home_positions: np.ndarray
    home_velocities: np.ndarray
    ee_site: str
    _model: mujoco.MjModel = field(repr=False)
    _qpos_idx: np.ndarray = field(repr=False)
    _dof_idx: np.ndarray = field(repr=False)
    _data: mujoco.MjData = field(repr=False)
    _lock: threading.Lock = field(repr=False)

    @classmethod
    def load(cls, model: str | pathlib.Path) -> "RobotDescription":
        """The description of a shipped model name or MJCF path.

        Raises:
            ValueError: neither a shipped name nor an existing .xml file (the message lists
                the shipped names), an MJCF MuJoCo cannot load, or one without hinge/slide
                joints.
        """
        path = resolve_model(str(model))
        try:
            m = mujoco.MjModel.from_xml_path(str(path))
        except Exception as e:   # mujoco raises ValueError; say which file in any case
            raise ValueError(f"cannot load MJCF {path}: {e}") from e
        lay = joint_layout(m, model_name=path.name)
        key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, HOME_KEY)
        n = len(lay.joint_names)
        home_q = m.key_qpos[key][lay.qpos_idx] if key >= 0 else np.zeros(n)
        home_v = m.key_qvel[key][lay.dof_idx] if key >= 0 else np.zeros(n)
        data = mujoco.MjData(m)
        # Joints that are not state joints (none in the shipped robots) stay at home.
        if key >= 0:
            mujoco.mj_resetDataKeyframe(m, data, key)
        has_ee = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, EE_SITE) >= 0
        linear = m.jnt_type[lay.joint_ids] == int(mujoco.mjtJoint.mjJNT_SLIDE)
        return cls(model_path=path, joint_names=lay.joint_names,
                   command_names=lay.command_names,
                   command_index=_frozen(lay.command_index),
                   position_limits=_frozen(lay.position_limits),
                   continuous=_frozen(lay.continuous), linear=_frozen(linear),
                   effort_limits=_frozen(lay.effort_limits),
                   home_positions=_frozen(home_q), home_velocities=_frozen(home_v),
                   ee_site=EE_SITE if has_ee else "", _model=m,
                   _qpos_idx=_frozen(lay.qpos_idx), _dof_idx=_frozen(lay.dof_idx),
                   _data=data, _lock=threading.Lock())

    # ------------------------------------------------------------------ sizes
    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_commands(self) -> int:
        return len(self.command_names)

    @property
    def has_ee(self) -> bool:
        """True if the MJCF has a site named ``ee``."""
        return bool(self.ee_site)

    @property
    def home_state(self) -> np.ndarray:
        """``concat(home_positions, home_velocities)``, (2n,)."""
        return np.concatenate((self.home_positions, self.home_velocities))

    @property
    def continuous_joints(self) -> tuple[str, ...]:
        """Names of the continuous joints."""
        return tuple(j for j, c in zip(self.joint_names, self.continuous) if c)

    # ------------------------------------------------------------------ kinematics
    def _positions(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float).reshape(-1)
        if q.shape != (self.n_joints,) or not np.all(np.isfinite(q)):
            raise ValueError(f"joint positions: expected {self.n_joints} finite values for "
                             f"{list(self.joint_names)}, got {q.tolist()}")
        return q

    def ee_position(self, q) -> np.ndarray:
        """World position of the ``ee`` site at joint positions ``q`` (n,), (3,) m
        (MuJoCo's forward kinematics; nothing is simulated).

        Raises:
            ValueError: no ``ee`` site, or ``q`` of the wrong length or not finite.
        """
        if not self.ee_site:
            raise ValueError(f"model {self.model_path.name} has no site named {EE_SITE!r}")
        q = self._positions(q)
        with self._lock:
            self._data.qpos[self._qpos_idx] = q
            mujoco.mj_kinematics(self._model, self._data)
            return self._data.site(self.ee_site).xpos.copy()

    def ee_distance(self, q, target_q) -> float:
        """End-effector distance [m] between joint positions q and target_q (n,); without an
        ``ee`` site the largest joint error [rad|m].

        Raises:
            ValueError: (with an ``ee`` site) q or target_q of the wrong length or not
                finite.
        """
        if not self.ee_site:
            return float(np.max(np.abs(np.asarray(q, dtype=np.float64)
                                       - np.asarray(target_q, dtype=np.float64))))
        return float(np.linalg.norm(self.ee_position(q) - self.ee_position(target_q)))

    def gravity_torque(self, q) -> np.ndarray:
        """Efforts of the command joints (m,) that hold joint positions ``q`` (n,) at rest,
        N·m or N: MuJoCo's bias forces with every velocity zero (gravity; no Coriolis
        terms), not clamped to :attr:`effort_limits`. Joints that are not state joints stay
        at the ``home`` keyframe, as in :meth:`ee_position`.

        Raises:
            ValueError: ``q`` of the wrong length or not finite.
        """
        q = self._positions(q)
        m, d = self._model, self._data
        with self._lock:
            d.qpos[self._qpos_idx] = q
            d.qvel[:] = 0.0
            mujoco.mj_forward(m, d)
            bias = d.qfrc_bias[self._dof_idx[self.command_index]].copy()
        return bias

    def effective_inertia(self, q=None) -> np.ndarray:
        """Effective inertia of each command joint at ``q`` (default: home), 1/(M^-1)_jj,
        (m,) kg·m² (kg for slide joints): what the joint's actuator feels when all other
        joints move freely (coupling and armature included)."""
        q = self.home_positions if q is None else self._positions(q)
        m, d = self._model, self._data
        with self._lock:
            d.qpos[self._qpos_idx] = q
            d.qvel[:] = 0.0
            mujoco.mj_forward(m, d)
            M = np.zeros((m.nv, m.nv))
            mujoco.mj_fullM(m, d, M)
        dofs = self._dof_idx[self.command_index]
        return 1.0 / np.diag(np.linalg.inv(M))[dofs]

    def min_effective_inertia(self, samples: int = 16, seed: int = 0) -> np.ndarray:
        """The smallest :meth:`effective_inertia` of each command joint over the home
        configuration and ``samples`` configurations drawn uniformly within the joint
        ranges (unlimited: one turn), (m,) kg·m² or kg. The plausibility bounds and the
        safe hold's damping cap use it."""
        lim = self.position_limits
        lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -np.pi)
        hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], np.pi)
        rng = np.random.default_rng(seed)
        inertia = self.effective_inertia()
        for _ in range(samples):
            inertia = np.minimum(inertia, self.effective_inertia(rng.uniform(lo, hi)))
        return inertia
