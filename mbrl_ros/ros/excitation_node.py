"""Excitation controller for data collection: answers every joint state with an effort
command from :class:`mbrl_ros.core.policies.excitation.ExcitationPolicy` (PD toward random
in-range targets plus coloured noise). Joint names and limits come from the MJCF given
in ``model``, so the same node drives the sim or a real arm described by that file.

On a real arm start with small ``noise_std`` and ``kp``: this node has no model of the
robot and relies on the driver's own limits.

Joint states pass the controller's plausibility check
(:mod:`mbrl_ros.core.control.plausibility`, the ``state_*`` and ``implausible_*``
parameters): a rejected state never reaches the excitation policy and is answered with
zero effort (so a lockstep simulation keeps stepping); NaN/inf, or ``implausible_latch``
implausible states in a row (or within ``implausible_window``), latch zero effort until
``~/clear_error`` (std_srvs/Trigger).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from mbrl_ros.core.control.plausibility import (PlausibilitySettings, StatePlausibility,
                                                default_limits)
from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import setting
from mbrl_ros.ros.conversions import (JointStateReader, MessageError, NonFiniteState,
                                      command_msg, time_to_ns)
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings


@dataclass(frozen=True)
class ExcitationNodeSettings(PlausibilitySettings):
    model: str = setting("arm2", "MJCF (shipped name or path) giving joint names and limits")
    controller_name: str = setting("effort_controller", "commands go to "
                                   "<controller_name>/commands (in the node's namespace)")
    seed: int = setting(0, "random seed of targets and noise", low=0)
    control_period: float = setting(0.01, "nominal control period (noise discretisation)",
                                    unit="s", low=1e-4, high=1.0)


class ExcitationNode(Node):
    def __init__(self, **kwargs):
        super().__init__("excitation", **kwargs)
        s = declare_settings(self, ExcitationNodeSettings)
        ex = declare_settings(self, ExcitationSettings, prefix="excitation.")
        robot = RobotDescription.load(s.model)
        self.reader = JointStateReader(robot.joint_names)
        v_max, a_max = default_limits(robot.linear, robot.effort_limits,
                                      robot.min_effective_inertia())
        self.plausibility = StatePlausibility(s, robot.position_limits, robot.continuous, v_max,
                                              a_max, names=robot.joint_names)
        self.fault: str | None = None         # latched: zero effort until ~/clear_error
        self._zero = np.zeros(robot.n_commands)
        cmd_index = np.array([robot.joint_names.index(n) for n in robot.command_names])
        self.policy = ExcitationPolicy(ex, robot.position_limits[cmd_index], robot.effort_limits,
                                       cmd_index, robot.n_joints, robot.effective_inertia(),
                                       seed=s.seed, dt=s.control_period)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(Float64MultiArray,
                                         f"{s.controller_name}/commands", qos)
        self.create_subscription(JointState, "joint_states", self._on_state, qos)
        self.create_service(Trigger, "~/clear_error", self._srv_clear)
        self.commands_sent = 0
        self.bad_states = 0
        self.get_logger().info(f"exciting {list(robot.command_names)} of {robot.model_path.name}: "
                               f"commands on {self.pub.topic_name}")

    def _on_state(self, msg: JointState) -> None:
        try:
            q, qd = self.reader.read(msg)
        except NonFiniteState as e:
            self.bad_states += 1
            self._latch(f"non-finite joint state: {e}")
            self._publish(self._zero)
            return
        except MessageError as e:         # e.g. another driver's joints: not ours
            self.get_logger().warning(f"joint state ignored: {e}", throttle_duration_sec=1.0)
            return
        t = time_to_ns(msg.header.stamp) * 1e-9
        verdict = self.plausibility.check(q, qd, t, time.monotonic())
        if verdict.implausible:
            self.bad_states += 1
            self.get_logger().warning(f"joint state rejected: {verdict.reason}",
                                      throttle_duration_sec=1.0)
        if verdict.latch:
            self._latch(f"implausible joint state: {verdict.reason}")
        if self.fault is not None or not verdict.accepted:
            self._publish(self._zero)
            return
        self._publish(self.policy.action(np.concatenate([q, qd]), t))

    def _publish(self, u: np.ndarray) -> None:
        self.pub.publish(command_msg(u))
        self.commands_sent += 1

    def _latch(self, reason: str) -> None:
        if self.fault is None:
            self.get_logger().error(f"{reason}: zero effort until ~/clear_error")
            self.fault = reason

    def _srv_clear(self, request, response):
        previous, self.fault = self.fault, None
        self.plausibility.reset()          # confirm the states afresh
        response.success = True
        response.message = f"cleared: {previous}" if previous else "no error latched"
        return response


def main(args=None) -> None:
    run_node(ExcitationNode, args)


if __name__ == "__main__":
    main()
