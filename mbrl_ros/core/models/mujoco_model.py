"""The known model: the simulator's own MuJoCo model used as the dynamics model.

This is the baseline every learned model is compared against. On data from the nominal
simulator it is exact up to the timing of the logged data, so its one-step RMSE on a
dataset is a lower bound on what a learned model can reach; on data from a randomised or
real robot the RMSE measures the sim-to-real gap.

Stepping reuses :class:`mbrl_ros.sim.env.MujocoSim` for model loading and index
bookkeeping, so state order ``x = [q of joints..., qd of joints...]``, command order,
effort-to-``ctrl`` conversion and the physics timestep are identical to the sim node's.

* ``predict`` rolls out one control period (``n_substeps`` physics steps with the effort
  held) from each (x, u): :func:`mujoco.rollout` for batches, ``mj_step`` for one state.
  Every prediction starts from a zero constraint-solver warm start, so a prediction is a
  pure function of (x, u) and does not depend on earlier calls.
* ``linearize`` uses MuJoCo's finite-difference transition derivatives
  (``mjd_transitionFD``) at every physics step of the period and chains them:
  ``A = A_n ... A_1`` and ``B = sum_k A_n ... A_{k+1} B_k`` (the effort is constant over
  the period), then maps MuJoCo's tangent state ``[dq (nv), qd (nv), act (na)]`` to ``x``.

Joints that are not state joints are held at their ``home`` keyframe position (or the
model default) with zero velocity at the start of each prediction, as in the simulator
after a reset.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec, check_xu)
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch
from mbrl_ros.sim.env import MujocoSim
from mbrl_ros.sim.models import available_models

__all__ = ["MujocoModel", "state_names_for"]

_FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS
# Relative mismatch between the data's median dt and the control period that is reported.
_DT_RTOL = 0.05


def state_names_for(joints: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """State column names as the dataset converter writes them.

    Args:
        joints: Joint names, in state order.

    Returns:
        ``('<j>/position' for j in joints) + ('<j>/velocity' for j in joints)``, 2n names.
    """
    return tuple(f"{j}/position" for j in joints) + tuple(f"{j}/velocity" for j in joints)


def _generic_action_names(names: tuple[str, ...]) -> bool:
    """True for the converter's fallback names u0, u1, ... (commands without joint names)."""
    return all(n == f"u{i}" for i, n in enumerate(names))


@registry.register("model", "mujoco")
class MujocoModel(DynamicsModel):
    """MuJoCo physics as a dynamics model (registry name ``mujoco``); nothing is learned.

    Build it with :meth:`from_sim` (no data needed) or with settings and :meth:`fit`, which
    only checks that the data's joints are the model's and reports the one-step error.
    One instance holds one MjData: do not call predict/linearize from several threads.
    """

    kind = "mujoco"
    min_transitions = 1
    vectorized = False          # predict simulates each row (mujoco.rollout)

    @dataclass(frozen=True)
    class Settings:
        mjcf: str = setting("arm2", "shipped model name (arm2, arm7, cartpole) or MJCF file path")
        control_period: float = setting(0.01, "time one prediction steps over (zero-order hold "
                                        "on the effort); a multiple of the physics timestep",
                                        unit="s", low=1e-6, high=10.0)
        timestep: float = setting(0.0, "physics timestep (0: MujocoSim's default, the MJCF's "
                                  "or the largest below it dividing the control period), "
                                  "as in the sim node", unit="s", low=0.0, high=1.0)
        joints: tuple[str, ...] = setting((), "state joints in order (empty: all hinge/slide "
                                          "joints of the model)")
        command_joints: tuple[str, ...] = setting((), "joints the effort drives, in order "
                                                  "(empty: all actuated state joints)")
        fd_eps: float = setting(1e-6, "finite-difference step of mjd_transitionFD (state "
                                "tangent units and ctrl units)", low=1e-12, high=1e-1)
        centered: bool = setting(False, "centred differences in linearize (2x the cost, "
                                 "second-order accurate) instead of forward differences")

    def __init__(self, settings=None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self._sim: MujocoSim | None = None
        self._rollout: mj_rollout.Rollout | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sim(cls, mjcf: str, control_period: float = 0.01, joints=(), command_joints=(),
                 timestep: float = 0.0, **settings) -> "MujocoModel":
        """A ready model of an MJCF without data; ``spec`` is what the dataset converter
        produces for a bag recorded from the sim node with the same settings.

        Args:
            mjcf: Shipped model name or MJCF path.
            control_period: Prediction period, s.
            joints, command_joints: As in the sim node (empty: all / all actuated).
            timestep: Physics timestep override, s (0: the MJCF's).
            **settings: Further :class:`Settings` fields (``fd_eps``, ``centered``).
        """
        s = cls.Settings(mjcf=str(mjcf), control_period=float(control_period),
                         joints=tuple(joints), command_joints=tuple(command_joints),
                         timestep=float(timestep), **settings)
        model = cls(s)
        model.spec = model.expected_spec()
        return model

    @property
    def sim(self) -> MujocoSim:
        """The MujocoSim holding the MuJoCo model and the joint/actuator index maps."""
        if self._sim is None:
            s = self.settings
            try:
                sim = MujocoSim(s.mjcf, joints=s.joints or None,
                                command_joints=s.command_joints or None,
                                control_period=s.control_period, timestep=s.timestep or None)
            except ValueError as e:
                raise ModelError(f"mujoco model: {e}") from e
            self._setup(sim)
            self._sim = sim
        return self._sim

    def _setup(self, sim: MujocoSim) -> None:
        m = sim.model
        d = mujoco.MjData(m)
        # Template full-physics state: the simulator's episode start (home keyframe or
        # defaults), so joints outside the state are where the sim keeps them.
        key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home")
        if key >= 0:
            mujoco.mj_resetDataKeyframe(m, d, key)
        else:
            mujoco.mj_resetData(m, d)
        d.qvel[:] = 0.0
        self._nstate = mujoco.mj_stateSize(m, _FULL)
        self._template = np.empty(self._nstate)
        mujoco.mj_getState(m, d, self._template, _FULL)
        # Offsets of qpos and qvel inside the full-physics state vector (time comes first).
        off_q = mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_TIME)
        off_v = off_q + m.nq
        # MujocoSim's own index maps (it has no public accessors for them): reusing them
        # rather than re-deriving guarantees the sim node's state and command ordering.
        self._xq = off_q + sim._qpos_idx
        self._xv = off_v + sim._dof_idx
        self._ctrl_idx = sim._ctrl_idx
        self._ctrl_per_effort = sim._ctrl_per_effort
        self._data = d
        # Rows/cols of x inside MuJoCo's tangent state [dq (nv), qd (nv), act (na)]: for
        # hinge and slide joints the tangent coordinate of a position is its dof index.
        dof = sim._dof_idx
        self._tangent_sel = np.concatenate([dof, m.nv + dof])
        self._rollout = mj_rollout.Rollout(nthread=0)

    def expected_spec(self) -> ModelSpec:
        """The spec of this MJCF / joint selection / control period (no data needed)."""
        sim = self.sim
        mjcf = self.settings.mjcf
        robot = mjcf if mjcf in available_models() else Path(mjcf).name
        return ModelSpec(2 * sim.n_joints, sim.n_commands, state_names_for(sim.joint_names),
                         tuple(sim.command_names), float(sim.control_period), robot)

    def _require_spec(self) -> ModelSpec:
        if self.spec is None:
            self.spec = self.expected_spec()
        return self.spec

    # ------------------------------------------------------------------ "learning"
    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Check the data is of this robot, set ``spec`` and report the one-step error.

        Nothing is learned. ``spec`` takes the data's names (action names may be the
        converter's generic ``u0..`` when the command topic carried no joint names) and
        ``dt = control_period``.

        Metrics: ``rmse`` over all state dimensions, ``rmse_position`` (rad or m),
        ``rmse_velocity`` (rad/s or m/s), in the data's units; ``n_val = 0``.

        Raises:
            ModelError: no transitions, or the data's joints/commands are not the model's
                (the message names both).
        """
        t0 = time.perf_counter()
        if len(data) < self.min_transitions:
            raise ModelError(f"mujoco needs at least {self.min_transitions} transition, got 0")
        own = self.expected_spec()
        notes: list[str] = []
        if tuple(data.state_names) != own.state_names:
            raise ModelError(
                f"data joints do not match the MuJoCo model {self.settings.mjcf!r}: data has "
                f"x={list(data.state_names)}, model has x={list(own.state_names)}")
        actions = tuple(data.action_names)
        if actions != own.action_names:
            if len(actions) == own.nu and _generic_action_names(actions):
                notes.append(f"data action names {list(actions)} taken as the command joints "
                             f"{list(own.action_names)}")
            else:
                raise ModelError(
                    f"data commands do not match the MuJoCo model {self.settings.mjcf!r}: data "
                    f"has u={list(actions)}, model has u={list(own.action_names)}")
        dt_data = float(np.median(data.dt))
        if abs(dt_data - own.dt) > _DT_RTOL * own.dt:
            notes.append(f"median data dt {dt_data:.6g} s differs from the control period "
                         f"{own.dt:.6g} s: predictions step the control period")
        self.spec = ModelSpec(own.nx, own.nu, own.state_names, actions, own.dt, own.robot)
        pred, _ = self.predict(data.states, data.actions)
        if progress is not None:
            progress(1.0)
        err = pred - data.next_states
        n = own.nx // 2
        metrics = {"rmse": float(np.sqrt(np.mean(err ** 2))),
                   "rmse_position": float(np.sqrt(np.mean(err[:, :n] ** 2))),
                   "rmse_velocity": float(np.sqrt(np.mean(err[:, n:] ** 2)))}
        return FitReport(len(data), 0, time.perf_counter() - t0, metrics, notes)

    # ------------------------------------------------------------------ prediction
    def _initial_states(self, x: np.ndarray) -> np.ndarray:
        s = np.repeat(self._template[None], x.shape[0], axis=0)
        n = x.shape[1] // 2
        s[:, self._xq] = x[:, :n]
        s[:, self._xv] = x[:, n:]
        return s

    def _ctrl(self, u: np.ndarray) -> np.ndarray:
        c = np.zeros((u.shape[0], self.sim.model.nu))
        c[:, self._ctrl_idx] = u * self._ctrl_per_effort
        return c

    def predict(self, x: np.ndarray, u: np.ndarray, t=None) -> tuple[np.ndarray, None]:
        """State one control period later, by simulation.

        Args:
            x: (B, nx) or (nx,) states [q, qd] (rad or m, rad/s or m/s).
            u: (B, nu) or (nu,) efforts (N·m or N), held over the period.

        Returns:
            (mean (B, nx) float64, None): the physics is deterministic.
        """
        spec = self._require_spec()
        x, u = check_xu(spec, x, u)
        sim = self.sim
        m, d = sim.model, self._data
        s0 = self._initial_states(x)
        ctrl = self._ctrl(u)
        if x.shape[0] == 1:
            mujoco.mj_setState(m, d, s0[0], _FULL)
            d.ctrl[:] = ctrl[0]
            d.qacc_warmstart[:] = 0.0
            mujoco.mj_step(m, d, sim.n_substeps)
            s1 = np.empty((1, self._nstate))
            mujoco.mj_getState(m, d, s1[0], _FULL)
        else:
            # Only the final state is kept; rollout writes every substep.
            states, _ = self._rollout.rollout(
                m, d, s0, ctrl[:, None, :], nstep=sim.n_substeps,
                initial_warmstart=np.zeros((1, m.nv)))
            s1 = states[:, -1]
        return np.concatenate([s1[:, self._xq], s1[:, self._xv]], axis=1), None

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """Affine model of one control period along a trajectory, from MuJoCo's derivatives.

        Args:
            xs: (T, nx) states, us: (T, nu) efforts.

        Returns:
            Linearization with fx (T, nx, nx), fu (T, nx, nu) (per N·m or N of effort),
            f0 (T, nx) such that ``fx x + fu u + f0`` is the nominal next state; cov None.
        """
        spec = self._require_spec()
        xs, us = check_xu(spec, xs, us)
        sim = self.sim
        m, d = sim.model, self._data
        T = xs.shape[0]
        nt = 2 * m.nv + m.na
        s0 = self._initial_states(xs)
        ctrl = self._ctrl(us)
        A = np.empty((nt, nt))
        Bk = np.empty((nt, m.nu))
        sel = self._tangent_sel
        fx = np.empty((T, spec.nx, spec.nx))
        fu = np.empty((T, spec.nx, spec.nu))
        f_nom = np.empty((T, spec.nx))
        s1 = np.empty(self._nstate)
        eps, centered = self.settings.fd_eps, self.settings.centered
        for t in range(T):
            mujoco.mj_setState(m, d, s0[t], _FULL)
            d.ctrl[:] = ctrl[t]
            d.qacc_warmstart[:] = 0.0
            A_tot = np.eye(nt)
            B_tot = np.zeros((nt, m.nu))
            for _ in range(sim.n_substeps):
                mujoco.mjd_transitionFD(m, d, eps, centered, A, Bk, None, None)
                A_tot = A @ A_tot
                B_tot = A @ B_tot + Bk
                mujoco.mj_step(m, d)
            mujoco.mj_getState(m, d, s1, _FULL)
            f_nom[t, :spec.nx // 2] = s1[self._xq]
            f_nom[t, spec.nx // 2:] = s1[self._xv]
            fx[t] = A_tot[np.ix_(sel, sel)]
            fu[t] = B_tot[np.ix_(sel, self._ctrl_idx)] * self._ctrl_per_effort
        return Linearization.about(fx, fu, xs, us, f_nom)

    # ------------------------------------------------------------------ artifacts
    def _mjcf_digest(self) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(self.sim.model_path.read_bytes()).digest(),
                             dtype=np.uint8).copy()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """``mjcf_sha256`` (32,) uint8: the digest of the MJCF file, so loading refuses a
        model whose file has changed since it was published. Everything else is settings."""
        return {"mjcf_sha256": self._mjcf_digest()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Check the MJCF file is the one published (if the digest was stored).

        Raises:
            ModelError: the MJCF cannot be loaded or its content changed.
        """
        digest = arrays.get("mjcf_sha256")
        if digest is not None and not np.array_equal(np.asarray(digest, np.uint8),
                                                     self._mjcf_digest()):
            raise ModelError(f"MJCF {self.sim.model_path} changed since this model was "
                             "published (sha256 differs)")
        if self.spec is not None:
            own = self.expected_spec()
            if self.spec.state_names != own.state_names or self.spec.nu != own.nu or \
                    not math.isclose(self.spec.dt, own.dt, rel_tol=1e-9):
                raise ModelError(f"artifact spec x={list(self.spec.state_names)}, "
                                 f"nu={self.spec.nu}, dt={self.spec.dt} does not match the MJCF "
                                 f"{self.settings.mjcf!r}: x={list(own.state_names)}, "
                                 f"nu={own.nu}, dt={own.dt}")
