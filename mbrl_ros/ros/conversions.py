"""Message <-> numpy conversions. The only module that knows message layouts.

Conventions (those of ros2_control): joint states are sensor_msgs/JointState with names,
positions [rad or m], velocities [rad/s or m/s] and efforts [N·m or N]; effort commands
are std_msgs/Float64MultiArray with one value per commanded joint, in the controller's
joint order, and an empty layout.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray


class MessageError(ValueError):
    """A message that cannot be used; the text says why."""


class NonFiniteState(MessageError):
    """A joint state with NaN or inf values (a broken sensor or driver: a controller
    latches an error instead of ignoring it)."""


def diagnostic_name(node) -> str:
    """The name of a node's diagnostic status: ``mbrl_ros`` + the node's fully qualified
    name (``mbrl_ros/controller``; ``mbrl_ros/arm_b/controller`` in namespace arm_b), so
    two arms sharing one ``/diagnostics`` stay apart in rqt_robot_monitor."""
    return "mbrl_ros" + node.get_fully_qualified_name()


def time_msg(seconds: float) -> Time:
    """builtin_interfaces/Time from seconds (>= 0)."""
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_ns(t: Time) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def clock_msg(seconds: float) -> Clock:
    return Clock(clock=time_msg(seconds))


def joint_state_msg(names: Sequence[str], positions: np.ndarray, velocities: np.ndarray,
                    efforts: np.ndarray | None, stamp: Time) -> JointState:
    """Build a JointState; arrays of shape (n,) in the order of ``names``."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = positions.tolist()
    msg.velocity = velocities.tolist()
    msg.effort = [] if efforts is None else efforts.tolist()
    return msg


class JointStateReader:
    """Extracts (positions, velocities) in a fixed joint order from JointState messages.

    Messages may list joints in any order and carry extra joints; the index map is cached
    per name list so the common case (same order every time) costs one dict lookup. A
    message naming one of our joints twice is ambiguous and refused.
    """

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def index(self, msg_names: Sequence[str]) -> np.ndarray:
        key = tuple(msg_names)
        idx = self._cache.get(key)
        if idx is None:
            pos = {n: i for i, n in enumerate(key)}
            counts = Counter(key)
            twice = sorted(n for n in self.names if counts[n] > 1)
            if twice:
                raise MessageError(f"joint state names {', '.join(twice)} more than once")
            missing = [n for n in self.names if n not in pos]
            if missing:
                raise MessageError(f"joint state lacks joint(s) {', '.join(missing)} "
                                   f"(has {', '.join(key) or 'no names'})")
            idx = np.array([pos[n] for n in self.names], dtype=np.intp)
            if len(self._cache) > 32:  # a misbehaving publisher must not grow this forever
                self._cache.clear()
            self._cache[key] = idx
        return idx

    def read(self, msg: JointState) -> tuple[np.ndarray, np.ndarray]:
        """Returns (positions (n,), velocities (n,)) in ``names`` order.

        Raises:
            MessageError: missing or repeated joints, arrays whose lengths differ from the
                name list's, or values that are not numbers.
            NonFiniteState: NaN or inf in our joints' values (a MessageError).
        """
        n = len(msg.name)
        if len(msg.position) != n or len(msg.velocity) != n:
            raise MessageError(f"joint state has {n} names but {len(msg.position)} positions "
                               f"and {len(msg.velocity)} velocities")
        idx = self.index(msg.name)
        try:
            q = np.asarray(msg.position, dtype=float)[idx]
            qd = np.asarray(msg.velocity, dtype=float)[idx]
        except (TypeError, ValueError) as e:
            raise MessageError(f"joint state values are not numbers: {e}") from None
        if not (np.isfinite(q).all() and np.isfinite(qd).all()):
            raise NonFiniteState("joint state contains NaN or inf")
        return q, qd


def command_msg(values: np.ndarray) -> Float64MultiArray:
    """Effort command as ros2_controllers' forward command controller expects it."""
    msg = Float64MultiArray()
    msg.data = np.asarray(values, dtype=float).tolist()
    return msg


def command_values(msg: Float64MultiArray) -> np.ndarray:
    """The (n,) float array of a Float64MultiArray (validation is the receiver's job)."""
    return np.asarray(msg.data, dtype=float)
