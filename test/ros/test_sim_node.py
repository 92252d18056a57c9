"""sim_node as a separate process over DDS."""
import math
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, UInt32
from std_srvs.srv import Trigger
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from conftest import START, diagnostics_values

pytestmark = pytest.mark.timeout(240)
CMD = "/effort_controller/commands"


def _cmd(values):
    return Float64MultiArray(data=[float(v) for v in values])


def test_effort_command_moves_the_arm(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 200.0})
    states = probe.collect(JointState, "/joint_states")
    pub = probe.node.create_publisher(Float64MultiArray, CMD, 10)
    probe.spin_until(lambda: len(states) > 5, START, "joint states")
    first = states[-1]
    assert list(first.name) == ["shoulder", "elbow"]
    assert len(first.position) == len(first.velocity) == len(first.effort) == 2
    assert abs(first.velocity[0]) < 1e-6          # at rest before any command
    probe.spin_until(lambda: pub.get_subscription_count() > 0, 10, "sim subscribed")
    n0, sent = len(states), [0.0]

    def pushed():       # +1 N·m on the shoulder at 100 Hz until the newest state shows it
        if time.monotonic() - sent[0] >= 0.01:
            pub.publish(_cmd([1.0, 0.0]))
            sent[0] = time.monotonic()
        last = states[-1]       # efforts report the applied torque; the shoulder accelerates
        return len(states) > n0 + 20 and last.effort[0] == pytest.approx(1.0) \
            and last.velocity[0] > 0.05
    probe.spin_until(pushed, START, "a state with the +1 N·m applied and velocity > 0.05 "
                     "(the shoulder accelerating under positive torque)",
                     lambda: f"newest state: {states[-1]}")
    stamps = [s.header.stamp.sec + 1e-9 * s.header.stamp.nanosec for s in states[-10:]]
    assert np.all(np.diff(stamps) > 0)


def test_bad_commands_are_rejected_or_clamped_without_crash(start_node, probe):
    sim = start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    pub = probe.node.create_publisher(Float64MultiArray, CMD, 10)
    probe.spin_until(lambda: pub.get_subscription_count() > 0 and states, START, "sim up")
    for bad in ([1.0], [1.0, 2.0, 3.0], [math.nan, 0.0], [0.0, math.inf], [1e6, -1e6]):
        pub.publish(_cmd(bad))
        probe.spin_for(0.02)
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/sim")
                                 .get("clamped", 0)) >= 1, 10, "diagnostics counters")
    v = diagnostics_values(diags, "mbrl_ros/sim")
    assert int(v["rejected_length"]) == 2
    assert int(v["rejected_nonfinite"]) == 2
    assert int(v["clamped"]) == 1
    n = len(states)
    probe.spin_until(lambda: len(states) > n + 10, 10, "sim still publishing")
    assert sim.proc.poll() is None
    for s in states:
        assert np.isfinite(s.position).all() and np.isfinite(s.velocity).all()
    assert max(abs(e) for s in states for e in s.effort) <= 3.0 + 1e-9  # arm2 limit


def test_lockstep_steps_once_per_command_and_reset(start_node, probe):
    start_node("sim_node", {"model": "arm2", "lockstep": True, "publish_rate": 50.0})
    states = probe.collect(JointState, "/joint_states")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    episodes = probe.collect(UInt32, "/sim/episode", latched)
    pub = probe.node.create_publisher(Float64MultiArray, CMD, 10)
    probe.spin_until(lambda: pub.get_subscription_count() > 0 and episodes and states, START,
                     "sim up and its first (re)published state")
    for k in range(5):
        n = len(states)
        pub.publish(_cmd([0.5, -0.5]))
        probe.spin_until(lambda: len(states) > n, 5, f"state after command {k}")
    t = [s.header.stamp.sec + 1e-9 * s.header.stamp.nanosec for s in states]
    assert t[-1] - t[-2] == pytest.approx(0.02, abs=1e-9)
    assert t[-1] == pytest.approx(0.1, abs=1e-9)    # 5 commands x 20 ms, no free running
    res = probe.call(Trigger, "/sim/reset")
    assert res.success
    probe.spin_until(lambda: episodes[-1].data == 1, 5, "episode 1 announced")
    probe.spin_until(lambda: abs(states[-1].position[0]) < 1e-12, 5, "state back home")


def test_lockstep_first_state_is_published_again_to_a_connected_controller_that_is_silent(
        start_node, probe):
    """A controller that looked connected when the first state went out but never answered
    it (it arrived before the controller was active, or before its side of the match): the
    lockstep simulator publishes the state again after LOCKSTEP_SILENCE s of silence, so
    the bring-up starts (in CI it stood for 150 s). The probe is the controller: it
    subscribes to the states and publishes commands, and ignores the first state."""
    from mbrl_ros.ros.sim_node import LOCKSTEP_SILENCE
    pub = probe.node.create_publisher(Float64MultiArray, CMD, 10)
    states = probe.collect(JointState, "/joint_states")
    start_node("sim_node", {"model": "arm2", "lockstep": True, "publish_rate": 50.0})
    # connected as a controller is: both our endpoints seen by the sim before its state
    probe.spin_until(lambda: pub.get_subscription_count() > 0 and states, START,
                     "the sim's first state")
    # The state that finds us connected is the last one until we answer -- or, now, until
    # LOCKSTEP_SILENCE s pass without an answer; a silence of 3x that shows it.
    n, end = len(states), time.monotonic() + 3 * LOCKSTEP_SILENCE + 2
    probe.spin_until(lambda: len(states) > n + 1 or time.monotonic() > end, 60, "silence")
    assert len(states) > n + 1, f"{len(states) - n} states in {3 * LOCKSTEP_SILENCE + 2} s"
    t = {s.header.stamp.sec + 1e-9 * s.header.stamp.nanosec for s in states}
    assert t == {0.0}                              # the same first state, physics stood still
    m = len(states)
    pub.publish(_cmd([0.5, -0.5]))                 # answered now: one step
    probe.spin_until(lambda: any(s.header.stamp.nanosec for s in states[m:]), 10,
                     "the state after the command")


def test_invalid_parameter_exits_with_clear_error(start_node):
    p = start_node("sim_node", {"publish_rate": -5.0})
    assert p.wait(timeout=20) == 2
    out = p.output()
    assert "publish_rate" in out and "out of range" in out
    q = start_node("sim_node", {"model": "no_such_robot"})
    assert q.wait(timeout=20) == 2
    assert "no_such_robot" in q.output() and "arm2" in q.output()
