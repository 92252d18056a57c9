"""How an MJCF's joints map to a robot's state and command vectors: the one reading of a
MuJoCo model that :class:`mbrl_ros.sim.env.MujocoSim` and
:class:`mbrl_ros.core.robot.RobotDescription` share.

Conventions:
    * *State joints* (``joint_names``) are the hinge/slide joints whose positions and
      velocities are reported, in that order. Positions are in rad (hinge) or m (slide),
      velocities in rad/s or m/s. Unlimited hinges are continuous (the angle wraps).
    * *Command joints* (``command_names``) are the state joints that receive an effort, in
      that order. Efforts are in N*m (hinge) or N (slide); each command joint is driven by
      a MuJoCo ``motor`` actuator, and the effort is converted to that actuator's ``ctrl``
      through its gain and gear. Effort limits are the tightest symmetric bound of the
      actuator's control and force ranges and the joint's actuator-force range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import mujoco
import numpy as np

__all__ = ["JointLayout", "joint_layout"]


def _motor_for_joint(model: mujoco.MjModel, joint_id: int) -> tuple[int, float] | None:
    """First pure force actuator (``motor``) acting directly on a joint.

    Only actuators whose joint force is exactly ``gain * gear * ctrl`` qualify (joint
    transmission, fixed gain, no bias, no activation dynamics, one control), so that an
    effort maps to a ``ctrl`` value without knowing the state.

    Args:
        model: The MuJoCo model.
        joint_id: Joint index.

    Returns:
        ``(actuator_id, effort_per_ctrl)`` or None if the joint has no such actuator.
    """
    for a in range(model.nu):
        if (
            int(model.actuator_trntype[a]) == int(mujoco.mjtTrn.mjTRN_JOINT)
            and int(model.actuator_trnid[a, 0]) == joint_id
            and int(model.actuator_gaintype[a]) == int(mujoco.mjtGain.mjGAIN_FIXED)
            and int(model.actuator_biastype[a]) == int(mujoco.mjtBias.mjBIAS_NONE)
            and int(model.actuator_dyntype[a]) == int(mujoco.mjtDyn.mjDYN_NONE)
            and int(model.actuator_ctrlnum[a]) == 1
        ):
            effort_per_ctrl = float(model.actuator_gainprm[a, 0] * model.actuator_gear[a, 0])
            if effort_per_ctrl != 0.0 and math.isfinite(effort_per_ctrl):
                return a, effort_per_ctrl
    return None


def _symmetric_bound(lo: float, hi: float) -> float:
    """Largest b with [-b, b] inside [lo, hi] (0 if the range excludes zero)."""
    return max(0.0, min(-float(lo), float(hi)))


@dataclass(frozen=True)
class JointLayout:
    """How an MJCF's joints map to a robot's state and command vectors (see
    :func:`joint_layout`). Index arrays are into the MuJoCo model's ``qpos`` / ``qvel`` /
    ``ctrl``; per-joint arrays follow ``joint_names``, per-command ones ``command_names``."""
    joint_names: tuple[str, ...]
    joint_ids: np.ndarray          # (n,) MuJoCo joint ids
    qpos_idx: np.ndarray           # (n,) int
    dof_idx: np.ndarray            # (n,) int
    continuous: np.ndarray         # (n,) bool: unlimited hinges (angle wraps every 2 pi)
    position_limits: np.ndarray    # (n, 2) [lower, upper], rad or m; (-inf, inf) unlimited
    command_names: tuple[str, ...]
    command_index: np.ndarray      # (n_commands,) index of each command joint in the state
    actuator_ids: np.ndarray       # (n_commands,) the motor actuator of each command joint
    ctrl_idx: np.ndarray           # (n_commands,) int
    ctrl_per_effort: np.ndarray    # (n_commands,) ctrl units per N*m (or N)
    effort_limits: np.ndarray      # (n_commands,) symmetric limit, N*m or N (inf: none)


def joint_layout(m: mujoco.MjModel, joints: Sequence[str] | None = None,
                 command_joints: Sequence[str] | None = None,
                 model_name: str = "model") -> JointLayout:
    """The state and command joints of a MuJoCo model, their limits and actuators (see the
    module docstring). ``joints`` / ``command_joints`` as in :class:`.env.MujocoSim`.

    Raises:
        ValueError: unknown / duplicate / unsupported joint names, no hinge or slide joint,
            a command joint without a motor actuator or outside ``joints``.
    """
    # --- state joints -------------------------------------------------------------
    scalar_types = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    valid = [
        mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)
        for j in range(m.njnt)
        if int(m.jnt_type[j]) in scalar_types
    ]
    if joints is None:
        joint_names = list(valid)
    else:
        joint_names = [str(j) for j in joints]
        unknown = [j for j in joint_names if j not in valid]
        if unknown:
            raise ValueError(
                f"unknown or unsupported joint(s) {unknown} for model {model_name}; "
                f"valid hinge/slide joints: {valid}"
            )
    if not joint_names:
        raise ValueError(f"model {model_name} has no hinge or slide joints to simulate")
    if len(set(joint_names)) != len(joint_names):
        raise ValueError(f"duplicate joint names in {joint_names}")
    joint_ids = np.array(
        [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in joint_names], dtype=np.intp
    )
    limited = m.jnt_limited[joint_ids].astype(bool)
    # Unlimited hinges are continuous joints (URDF 'continuous'): their angle wraps.
    continuous = (~limited) & (m.jnt_type[joint_ids] == int(mujoco.mjtJoint.mjJNT_HINGE))
    position_limits = np.where(
        limited[:, None], m.jnt_range[joint_ids], np.array([-np.inf, np.inf])
    ).astype(float)

    # --- command joints -----------------------------------------------------------
    motors = {name: _motor_for_joint(m, int(jid)) for name, jid in zip(joint_names, joint_ids)}
    if command_joints is None:
        command_names = [j for j in joint_names if motors[j] is not None]
    else:
        command_names = [str(j) for j in command_joints]
        outside = [j for j in command_names if j not in motors]
        if outside:
            raise ValueError(
                f"command joint(s) {outside} are not among the state joints {joint_names}"
            )
        unactuated = [j for j in command_names if motors[j] is None]
        if unactuated:
            raise ValueError(
                f"command joint(s) {unactuated} have no motor actuator in "
                f"{model_name}; actuated joints: "
                f"{[j for j in joint_names if motors[j] is not None]}"
            )
        if len(set(command_names)) != len(command_names):
            raise ValueError(f"duplicate command joint names in {command_names}")
    command_index = np.array([joint_names.index(j) for j in command_names], dtype=np.intp)
    act_ids = np.array([motors[j][0] for j in command_names], dtype=np.intp)
    return JointLayout(
        joint_names=tuple(joint_names), joint_ids=joint_ids,
        qpos_idx=m.jnt_qposadr[joint_ids].astype(np.intp),
        dof_idx=m.jnt_dofadr[joint_ids].astype(np.intp),
        continuous=continuous, position_limits=position_limits,
        command_names=tuple(command_names), command_index=command_index,
        actuator_ids=act_ids, ctrl_idx=m.actuator_ctrladr[act_ids].astype(np.intp),
        ctrl_per_effort=np.array([1.0 / motors[j][1] for j in command_names], dtype=float),
        effort_limits=_effort_limits(m, act_ids, joint_ids[command_index]))


def _effort_limits(m: mujoco.MjModel, act_ids: np.ndarray, joint_ids: np.ndarray) -> np.ndarray:
    limits = np.full(len(act_ids), np.inf)
    for i, (a, j) in enumerate(zip(act_ids, joint_ids)):
        gain = abs(float(m.actuator_gainprm[a, 0]))
        gear = abs(float(m.actuator_gear[a, 0]))
        if m.actuator_ctrllimited[a]:
            limits[i] = min(limits[i], _symmetric_bound(*m.actuator_ctrlrange[a]) * gain * gear)
        if m.actuator_forcelimited[a]:
            limits[i] = min(limits[i], _symmetric_bound(*m.actuator_forcerange[a]) * gear)
        if m.jnt_actfrclimited[j]:
            limits[i] = min(limits[i], _symmetric_bound(*m.jnt_actfrcrange[j]))
    return limits
