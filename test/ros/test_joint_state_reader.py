"""JointStateReader (no DDS: messages built in memory): joint order, malformed messages,
and property-based fuzzing -- it returns finite (n,) arrays or raises MessageError."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState

from mbrl_ros.ros.conversions import JointStateReader, MessageError, NonFiniteState

NAMES = ("shoulder", "elbow")


def msg(names, pos, vel):
    return JointState(name=list(names), position=list(pos), velocity=list(vel))


def test_reorders_and_ignores_extra_joints():
    r = JointStateReader(NAMES)
    q, qd = r.read(msg(["gripper", "elbow", "shoulder"], [9.0, 2.0, 1.0], [0.0, 0.2, 0.1]))
    assert q.tolist() == [1.0, 2.0] and qd.tolist() == [0.1, 0.2]


@pytest.mark.parametrize("m,what", [
    (msg(["shoulder"], [0.0], [0.0]), "lacks joint(s) elbow"),
    (msg(NAMES, [0.0, 0.0], []), "2 names but 2 positions and 0 velocities"),
    (msg(["shoulder", "elbow", "shoulder"], [0, 0, 1], [0, 0, 0]), "shoulder more than once"),
])
def test_malformed_messages_raise_message_error(m, what):
    with pytest.raises(MessageError, match=what.replace("(", r"\(").replace(")", r"\)")):
        JointStateReader(NAMES).read(m)


def test_nonfinite_values_raise_nonfinite_state():
    r = JointStateReader(NAMES)
    with pytest.raises(NonFiniteState):
        r.read(msg(NAMES, [math.nan, 0.0], [0.0, 0.0]))
    with pytest.raises(NonFiniteState):
        r.read(msg(NAMES, [0.0, 0.0], [0.0, -math.inf]))
    # NaN in a joint that is not ours is not our problem.
    q, _ = r.read(msg([*NAMES, "gripper"], [0.0, 0.0, math.nan], [0.0, 0.0, math.nan]))
    assert q.tolist() == [0.0, 0.0]


names = st.lists(st.sampled_from(["shoulder", "elbow", "gripper", "", "shoulder "]),
                 max_size=5)
values = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5)


@settings(max_examples=500, deadline=None)
@given(names, values, values)
def test_reader_returns_finite_arrays_or_raises_message_error(ns, pos, vel):
    r = JointStateReader(NAMES)
    try:
        q, qd = r.read(msg(ns, pos, vel))
    except MessageError:
        return
    assert q.shape == (2,) and qd.shape == (2,)
    assert np.isfinite(q).all() and np.isfinite(qd).all()
    assert q.tolist() == [pos[ns.index("shoulder")], pos[ns.index("elbow")]]
