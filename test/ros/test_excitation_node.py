"""The excitation node's state check, in process (its callbacks called directly): an
implausible state never reaches the excitation policy, is answered with zero effort, and a
sustained stream latches zero effort until ~/clear_error."""
import math

import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from mbrl_ros.ros.conversions import time_msg
from mbrl_ros.ros.excitation_node import ExcitationNode

NAMES = ["shoulder", "elbow"]


@pytest.fixture
def node(domain_id):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    n = ExcitationNode(context=ctx)
    sent = []
    n.pub.publish = lambda m: sent.append(np.array(m.data))
    n.sent = sent
    yield n
    n.destroy_node()
    rclpy.try_shutdown(context=ctx)


def state(q, qd=(0.0, 0.0), t=0.0):
    m = JointState(name=NAMES, position=list(q), velocity=list(qd))
    m.header.stamp = time_msg(t)
    return m


def test_excitation_answers_every_state_and_rejects_absurd_ones(node):
    calls = []
    action = node.policy.action
    node.policy.action = lambda x, t: calls.append(x.copy()) or action(x, t)
    for k in range(5):                                   # confirmed, then excited
        node._on_state(state([0.1, 0.2], t=k * 0.01))
    assert len(node.sent) == 5 and len(calls) == 3
    assert np.any(node.sent[-1] != 0.0)
    node._on_state(state([1e6, 0.0], t=0.05))            # rejected: zero effort
    assert node.sent[-1].tolist() == [0.0, 0.0] and len(calls) == 3
    node._on_state(state([0.1, 0.2], t=0.06))            # real again: excited
    assert len(calls) == 4 and node.fault is None
    for k in range(5):                                   # sustained: latched
        node._on_state(state([1e308, 0.0], t=0.07 + k * 0.01))
    assert node.fault.startswith("implausible joint state") and node.bad_states == 6
    for k in range(5):                                   # latched: zero even on real states
        node._on_state(state([0.1, 0.2], t=0.2 + k * 0.01))
        assert node.sent[-1].tolist() == [0.0, 0.0]
    assert len(calls) == 4
    assert all(np.isfinite(u).all() for u in node.sent)
    res = node._srv_clear(Trigger.Request(), Trigger.Response())
    assert res.success and "implausible" in res.message and node.fault is None
    for k in range(3):
        node._on_state(state([0.1, 0.2], t=0.3 + k * 0.01))
    assert len(calls) == 5                               # confirmed afresh, excited again


def test_nonfinite_state_latches_and_other_joints_are_ignored(node):
    node._on_state(JointState(name=["gripper"], position=[0.0], velocity=[0.0]))
    assert node.sent == [] and node.fault is None        # another driver's joints
    node._on_state(state([math.nan, 0.0]))
    assert node.fault.startswith("non-finite") and node.sent[-1].tolist() == [0.0, 0.0]
