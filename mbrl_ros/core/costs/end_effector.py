"""End-effector position cost: squared distance of an MJCF site to a target point.

    l(x, u) = 0.5 w |p(q) - p*|^2 + 0.5 w_v |qd|^2,      l_f(x) = 0.5 w_f |p(q) - p*|^2 + 0.5 w_vf |qd|^2

with p(q) (3,) the world position [m] of a site (default ``ee``) at joint positions q, and
x = [q, qd] the state of the model's joints.

Two forward-kinematics implementations, both from the MJCF:

* MuJoCo itself (``mj_kinematics`` -> ``site_xpos``; Jacobian from ``mj_jacSite``) for the
  single-trajectory numpy methods: :meth:`EndEffectorCost.stage`, :meth:`terminal` and the
  derivatives. The Hessian is the Gauss-Newton one, ``w J'J`` (positive semi-definite, what
  iLQR and the convexified MPC problem want; the term with the second derivative of p is
  dropped).
* A batched re-implementation of MuJoCo's kinematic chain (the fixed body offsets
  ``body_pos``/``body_quat`` and the hinge/slide joint transforms of ``mj_kinematics``,
  extracted from the compiled ``MjModel`` at construction) written with operations numpy
  and torch share, for :meth:`stage_batch` / :meth:`terminal_batch` on (K, T, nx) batches of
  sampling planners, which MuJoCo cannot evaluate on torch tensors. It agrees with MuJoCo's
  ``site_xpos`` to float64 round-off (tested).

Joints that are not state joints stay at the ``home`` keyframe (or ``qpos0``), as in
:class:`mbrl_ros.core.models.mujoco_model.MujocoModel`.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import mujoco
import numpy as np

from mbrl_ros.core.costs.quadratic import Array, Cost, _frozen
from mbrl_ros.core.robot import resolve_model
from mbrl_ros.core.types import is_torch

__all__ = ["EndEffectorCost"]

_SCALAR_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    R = np.empty(9)
    mujoco.mju_quat2Mat(R, np.asarray(q, dtype=np.float64))
    return R.reshape(3, 3)


def _cross_matrix(a: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])


class _Fixed:
    """A constant frame offset: child point x -> t + R x in the parent frame."""

    def __init__(self, R: np.ndarray, t: np.ndarray):
        self.Rt, self.t = _frozen(np.asarray(R).T), _frozen(t)   # R' for row vectors


class _Joint:
    """A hinge (rotation about ``axis`` through ``anchor``) or slide (translation along
    ``axis``) by ``q[col] + offset`` (offset: -qpos0; col -1: constant ``offset``)."""

    def __init__(self, hinge: bool, col: int, offset: float, axis: np.ndarray,
                 anchor: np.ndarray):
        self.hinge, self.col, self.offset = hinge, col, float(offset)
        self.axis = _frozen(axis)
        self.anchor = _frozen(anchor)
        self.has_anchor = bool(np.any(anchor != 0.0))
        K = _cross_matrix(axis)
        self.Kt, self.K2t = _frozen(K.T), _frozen((K @ K).T)   # transposed: row vectors


class EndEffectorCost(Cost):
    """Distance of an MJCF site to a target point, with optional velocity damping.

    Args:
        mjcf: shipped model name (``arm2``, ``arm7``, ...) or MJCF path.
        target: (3,) target position p* of the site in the world frame [m].
        nu: action dimension (the cost does not depend on u); default the number of joints.
        site: site name.
        joints: state joint names in state order (x = [q of joints, qd of joints]);
            default all hinge/slide joints in model order, as MujocoSim.
        weight: w, cost per m^2 per step.
        terminal_weight: w_f for the final state (default ``weight``).
        velocity_weight: w_v on the joint velocities per step [per (rad/s)^2 or (m/s)^2].
        terminal_velocity_weight: w_vf (default ``velocity_weight``).

    Raises:
        ValueError: unknown model, site or joint; a ball/free joint or mocap body on the
            path from the world to the site; bad target shape or negative weights.
    """

    def __init__(self, mjcf: str, target: Sequence[float], nu: int | None = None, *,
                 site: str = "ee", joints: Sequence[str] | None = None, weight: float = 1.0,
                 terminal_weight: float | None = None, velocity_weight: float = 0.0,
                 terminal_velocity_weight: float | None = None):
        path = resolve_model(mjcf)
        m = mujoco.MjModel.from_xml_path(str(path))
        valid = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)
                 if int(m.jnt_type[j]) in _SCALAR_JOINTS]
        names = list(valid) if joints is None else [str(j) for j in joints]
        unknown = [j for j in names if j not in valid]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"joints {names} must be distinct hinge/slide joints of "
                             f"{path.name}; valid: {valid}")
        n = len(names)
        super().__init__(2 * n, n if nu is None else int(nu))
        site_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, site)
        if site_id < 0:
            raise ValueError(f"model {path.name} has no site named {site!r}")
        for name, w in (("weight", weight), ("terminal_weight", terminal_weight),
                        ("velocity_weight", velocity_weight),
                        ("terminal_velocity_weight", terminal_velocity_weight)):
            if w is not None and not (float(w) >= 0.0):
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.mjcf = str(path)
        self.site = site
        self.joint_names = tuple(names)
        self.weight = float(weight)
        self.terminal_weight = self.weight if terminal_weight is None else float(terminal_weight)
        self.velocity_weight = float(velocity_weight)
        self.terminal_velocity_weight = (self.velocity_weight if terminal_velocity_weight is None
                                         else float(terminal_velocity_weight))
        self.target = _frozen(target, (3,), "target")

        jids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in names]
        self._model = m
        self._site_id = int(site_id)
        self._qpos_idx = np.array([m.jnt_qposadr[j] for j in jids], dtype=np.intp)
        self._dof_idx = np.array([m.jnt_dofadr[j] for j in jids], dtype=np.intp)
        key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home")
        self._qpos_template = (m.key_qpos[key].copy() if key >= 0 else m.qpos0.copy())
        self._local = threading.local()
        self._chain = self._build_chain(m, path.name)

    # -- kinematic chain ----------------------------------------------------------------
    def _build_chain(self, m: mujoco.MjModel, mjcf_name: str) -> list:
        """Ops from the world to the site, fixed transforms merged (MuJoCo's
        mj_kinematics restricted to the site's branch)."""
        bodies = []
        b = int(m.site_bodyid[self._site_id])
        while b > 0:
            bodies.append(b)
            b = int(m.body_parentid[b])
        bodies.reverse()
        col_of_qpos = {int(a): i for i, a in enumerate(self._qpos_idx)}
        ops: list = []
        R, t = np.eye(3), np.zeros(3)   # pending fixed transform

        def flush():
            nonlocal R, t
            if not (np.array_equal(R, np.eye(3)) and not t.any()):
                ops.append(_Fixed(R, t))
            R, t = np.eye(3), np.zeros(3)

        for b in bodies:
            if m.body_mocapid[b] >= 0:
                raise ValueError(f"{mjcf_name}: mocap body on the path to site {self.site!r} "
                                 "is not supported")
            # Compose the pending transform with the body's fixed offset.
            t = t + R @ m.body_pos[b]
            R = R @ _quat_to_mat(m.body_quat[b])
            for j in range(m.body_jntadr[b], m.body_jntadr[b] + m.body_jntnum[b]):
                jt = int(m.jnt_type[j])
                if jt not in _SCALAR_JOINTS:
                    raise ValueError(f"{mjcf_name}: joint "
                                     f"{mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)!r} "
                                     "on the path to the site is a ball/free joint, which the "
                                     "batched kinematics does not support")
                adr = int(m.jnt_qposadr[j])
                col = col_of_qpos.get(adr, -1)
                offset = -float(m.qpos0[adr]) if col >= 0 else \
                    float(self._qpos_template[adr] - m.qpos0[adr])
                flush()
                ops.append(_Joint(jt == int(mujoco.mjtJoint.mjJNT_HINGE), col, offset,
                                  np.asarray(m.jnt_axis[j], dtype=np.float64),
                                  np.asarray(m.jnt_pos[j], dtype=np.float64)))
        t = t + R @ m.site_pos[self._site_id]
        ops.append(_Fixed(R @ _quat_to_mat(m.site_quat[self._site_id]), t))
        return ops

    def positions(self, q: Array) -> Array:
        """Site positions for joint positions q (..., n) -> (..., 3) [m], numpy or torch
        (same dtype/device), by the batched kinematic chain.

        The chain is applied to the site point from the site outwards: each op is an affine
        map of points of its child frame into its parent frame (fixed: x -> t + R x; hinge
        about ``axis`` through ``anchor``: x -> a + Rj (x - a) with Rodrigues' Rj = I +
        sin K + (1 - cos) K^2; slide: x -> x + axis * angle), which is MuJoCo's
        body/joint frame recursion evaluated on one point. Working on (..., 3) points instead
        of (..., 3, 3) frames is several times faster for torch batches.
        """
        if is_torch(q):
            import torch
            sin, cos = torch.sin, torch.cos
        else:
            q = np.asarray(q, dtype=np.float64)
            sin, cos = np.sin, np.cos
        c = self._const
        v = None
        for op in reversed(self._chain):
            if isinstance(op, _Fixed):
                v = c(op.t, q) if v is None else c(op.t, q) + v @ c(op.Rt, q)
                continue
            if v is None:
                v = c(_ZERO3, q)
            angle = q[..., op.col] + op.offset if op.col >= 0 else \
                op.offset + 0.0 * q[..., 0]
            angle = angle[..., None]
            if op.hinge:
                d = v - c(op.anchor, q) if op.has_anchor else v
                v = d + sin(angle) * (d @ c(op.Kt, q)) + (1.0 - cos(angle)) * (d @ c(op.K2t, q))
                if op.has_anchor:
                    v = v + c(op.anchor, q)
            else:
                v = v + c(op.axis, q) * angle
        # Broadcast to the batch even if no joint moves the site.
        return v + 0.0 * q[..., :1]

    # -- MuJoCo reference ----------------------------------------------------------------
    def _data(self) -> mujoco.MjData:
        d = getattr(self._local, "data", None)
        if d is None:
            d = mujoco.MjData(self._model)
            d.qpos[:] = self._qpos_template
            self._local.data = d
        return d

    def site_position(self, q: np.ndarray) -> np.ndarray:
        """Site position (3,) [m] at joint positions q (n,), computed by MuJoCo."""
        d = self._data()
        d.qpos[self._qpos_idx] = q
        mujoco.mj_kinematics(self._model, d)
        return d.site_xpos[self._site_id].copy()

    def site_jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) [m] and its Jacobian (3, n) w.r.t. the state joints' positions
        [m/rad or m/m], computed by MuJoCo (mj_kinematics, mj_comPos, mj_jacSite)."""
        m, d = self._model, self._data()
        d.qpos[self._qpos_idx] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        jacp = np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jacp, None, self._site_id)
        return d.site_xpos[self._site_id].copy(), jacp[:, self._dof_idx]

    def _mj_positions(self, qs: np.ndarray) -> np.ndarray:
        return np.stack([self.site_position(q) for q in qs]) if len(qs) else np.zeros((0, 3))

    # -- Cost interface --------------------------------------------------------------------
    def with_target(self, target: Sequence[float]) -> EndEffectorCost:
        """A copy with a new target position (3,) [m] (kinematics shared)."""
        new = copy.copy(self)
        new.target = _frozen(target, (3,), "target")
        new._torch_cache = {}
        new._local = threading.local()
        return new

    def _split(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.nx // 2
        return xs[..., :n], xs[..., n:]

    def stage(self, xs, us):
        q, qd = self._split(np.asarray(xs, dtype=np.float64))
        d = self._mj_positions(q) - self.target
        return 0.5 * self.weight * (d * d).sum(-1) + 0.5 * self.velocity_weight * (qd * qd).sum(-1)

    def terminal(self, x):
        q, qd = self._split(np.asarray(x, dtype=np.float64))
        d = self.site_position(q) - self.target
        return float(0.5 * self.terminal_weight * d @ d
                     + 0.5 * self.terminal_velocity_weight * qd @ qd)

    def _derivs(self, x: np.ndarray, w: float, wv: float) -> tuple[np.ndarray, np.ndarray]:
        n = self.nx // 2
        p, J = self.site_jacobian(x[:n])
        lx = np.empty(self.nx)
        lx[:n] = w * J.T @ (p - self.target)
        lx[n:] = wv * x[n:]
        lxx = np.zeros((self.nx, self.nx))
        lxx[:n, :n] = w * J.T @ J
        lxx[np.arange(n, 2 * n), np.arange(n, 2 * n)] = wv
        return lx, lxx

    def stage_derivatives(self, xs, us):
        xs = np.asarray(xs, dtype=np.float64)
        T = xs.shape[0]
        lx = np.empty((T, self.nx))
        lxx = np.empty((T, self.nx, self.nx))
        for t in range(T):
            lx[t], lxx[t] = self._derivs(xs[t], self.weight, self.velocity_weight)
        zu = np.broadcast_to(np.zeros(()), (T, self.nu))
        return (lx, zu, lxx, np.broadcast_to(np.zeros(()), (T, self.nu, self.nu)),
                np.broadcast_to(np.zeros(()), (T, self.nu, self.nx)))

    def terminal_derivatives(self, x):
        return self._derivs(np.asarray(x, dtype=np.float64), self.terminal_weight,
                            self.terminal_velocity_weight)

    def _batch(self, x: Array, w: float, wv: float) -> Array:
        n = self.nx // 2
        q, qd = x[..., :n], x[..., n:]
        d = self.positions(q) - self._const(self.target, x)
        return 0.5 * w * (d * d).sum(-1) + 0.5 * wv * (qd * qd).sum(-1)

    def stage_batch(self, xs, us):
        return self._batch(xs, self.weight, self.velocity_weight).sum(-1)

    def terminal_batch(self, x):
        return self._batch(x, self.terminal_weight, self.terminal_velocity_weight)


_ZERO3 = _frozen(np.zeros(3))
