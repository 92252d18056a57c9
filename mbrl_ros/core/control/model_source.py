"""Where a controller's model comes from: the known model or a verified artifact.

:func:`load_model` is the one gate every model passes before a planner sees it, in the
controller node's process and in a planning worker alike. The robot is described by its
MJCF through :class:`~mbrl_ros.core.robot.RobotDescription` (no simulator is built to
read its command joints or its home state).
"""
from __future__ import annotations

import numpy as np

from mbrl_ros.core.models.base import DynamicsModel, ModelError, ModelSpec, check_one_step
from mbrl_ros.core.robot import RobotDescription

__all__ = ["load_model", "robot_layout"]


def robot_layout(robot: str) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(state joint names, command joint names, home state x (2n,)) of the MJCF
    ``robot``: its ``home`` keyframe, else zeros [rad, m, rad/s, m/s].

    Raises:
        ModelError: the MJCF cannot be loaded.
    """
    try:
        desc = RobotDescription.load(robot)
    except (ValueError, TypeError, OSError) as e:
        raise ModelError(f"robot {robot!r} cannot be loaded to check the model: {e}") from e
    return desc.joint_names, desc.command_names, desc.home_state


def load_model(source: str, *, robot: str, control_period: float,
               joint_names: tuple[str, ...] | None = None, expect: ModelSpec | None = None,
               checksum: str | None = None, version: int | None = None,
               state: np.ndarray | None = None) -> tuple[DynamicsModel, int]:
    """Load and verify a controller's model: ``'mujoco'`` (the known model of ``robot``
    stepping ``control_period``) or an artifact directory (verified against ``checksum``
    and ``expect``). Returns (model, version); version from the artifact unless given.

    A model is used only if it is one of this robot: its states are the positions and
    velocities of ``joint_names`` (default: the MJCF's state joints) and its actions one
    per command joint of the MJCF ``robot`` (:meth:`ModelSpec.check_robot`), its weights
    are finite, and its one-step prediction with zero effort from ``state`` -- the robot's
    current state, (2n,) [rad, m, rad/s, m/s]; None or not finite: the MJCF's home
    keyframe -- is finite.

    Raises:
        ModelError: unreadable, corrupt, model.json not matching its schema, other spaces
            than ``expect``, for other joints or command joints than the robot's, NaN/inf
            weights, a non-finite one-step prediction.
    """
    from mbrl_ros.core import store
    joints, commands, home = robot_layout(robot)
    if joint_names is None:
        joint_names = joints
    if state is None or np.shape(state) != home.shape or \
            not np.all(np.isfinite(np.asarray(state, dtype=float))):
        state = home
    if source == "mujoco":
        from mbrl_ros.core.models.mujoco_model import MujocoModel
        model: DynamicsModel = MujocoModel.from_sim(robot, control_period=control_period)
        v = 0 if version is None else int(version)
    else:
        model = store.load(source, expect=expect, checksum=checksum)
        v = int(store.read_meta(source)["version"]) if version is None else int(version)
    where = f"model {source}"
    try:
        model.spec.check_robot(tuple(joint_names), commands)
    except ModelError as e:
        raise ModelError(f"{where} is not a model of robot {robot!r}: {e}") from e
    check_one_step(model, state, where)
    return model, v
