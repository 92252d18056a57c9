"""The GPS sample recorder keeps one state per simulator step: the simulator republishes
its paused state on ~/resume, and when the state it published at the pause arrives only
after the recorder was cleared (a busy machine), the run must not start with it twice
(a CI run failed: "14 states and 13 commands received for 12 steps")."""
from sensor_msgs.msg import JointState

from mbrl_ros.ros.gps_sampling import SampleRecorder


class _Node:
    def create_subscription(self, *args, **kwargs):
        return None


def _state(sec, nanosec, q):
    m = JointState(name=["shoulder", "elbow"], position=[q, -q], velocity=[0.0, 0.0])
    m.header.stamp.sec, m.header.stamp.nanosec = sec, nanosec
    return m


def test_a_state_delivered_twice_is_recorded_once():
    rec = SampleRecorder(None, ["shoulder", "elbow"], "/effort_controller/commands",
                         node=_Node())
    rec._on_state(_state(1, 0, 0.1))
    rec.clear()
    rec._on_state(_state(1, 0, 0.1))       # the pause-time state, late
    rec._on_state(_state(1, 0, 0.1))       # ~/resume republishes it
    rec._on_state(_state(1, 10_000_000, 0.2))
    rec._on_state(_state(1, 20_000_000, 0.3))
    assert [s[0] for s in rec.states] == [0.1, 0.2, 0.3]
    rec.clear()                            # a new recording starts from its first state
    rec._on_state(_state(1, 20_000_000, 0.3))
    assert len(rec.states) == 1
