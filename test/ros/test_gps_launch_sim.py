"""The simulator services a GPS trainer in another process runs exact-length lockstep
episodes with (``start_paused``, ``pause_after``, ``~/resume``, ``~/set_state`` while
paused): driven over DDS as the trainer drives them, with the test node in the
controller's place answering every state with a command."""
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, UInt32
from std_srvs.srv import Trigger
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

pytestmark = pytest.mark.timeout(120)
STEPS = 5


def test_the_simulator_pauses_itself_and_refuses_to_resume_before_the_last_answer(
        start_node, probe):
    start_node("sim_node", {"model": "arm2", "lockstep": True, "start_paused": True,
                            "pause_after": STEPS, "publish_rate": 20.0,
                            "diagnostics_rate": 0.0})
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    states = probe.collect(JointState, "/joint_states", reliable)
    episodes = probe.collect(UInt32, "/sim/episode", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    pub = probe.node.create_publisher(Float64MultiArray, "/effort_controller/commands",
                                      reliable)
    set_state = probe.node.create_publisher(JointState, "/sim/set_state", 10)
    probe.spin_until(lambda: episodes and pub.get_subscription_count() >= 1
                     and set_state.get_subscription_count() >= 1, 60, "the simulator")
    # started paused: nothing published
    probe.spin_for(1.5)
    assert states == []

    answered = [0]

    def answer_all_but_last(limit):
        # the controller's part: one command per state (the state after the last step
        # stays unanswered for now)
        while answered[0] < min(len(states), limit):
            pub.publish(Float64MultiArray(data=[0.5, -0.5]))
            answered[0] += 1

    # a new episode's start, set while paused: announced, not published
    set_state.publish(JointState(name=["shoulder", "elbow"], position=[0.2, -0.1],
                                 velocity=[0.0, 0.0]))
    probe.spin_until(lambda: episodes[-1].data == 1, 30, "the episode marker")
    probe.spin_for(0.5)
    assert states == []
    assert probe.call(Trigger, "/sim/resume").success
    probe.spin_until(lambda: (answer_all_but_last(STEPS), len(states) >= STEPS + 1)[1], 30,
                     "the episode's states")
    probe.spin_for(0.5)
    assert len(states) == STEPS + 1                     # paused itself after STEPS steps
    np.testing.assert_array_equal(states[0].position, [0.2, -0.1])
    # the answer to the last state is still owed: a resume now would let it step the
    # next run, so it is refused until that answer arrived (and is ignored)
    refused = probe.call(Trigger, "/sim/resume")
    assert not refused.success and "not arrived" in refused.message
    last = np.array(states[-1].position)
    pub.publish(Float64MultiArray(data=[5.0, 5.0]))
    for _ in range(100):
        if probe.call(Trigger, "/sim/resume").success:
            break
        probe.spin_for(0.05)
    else:
        pytest.fail("the simulator never resumed after the owed answer arrived")
    probe.spin_until(lambda: len(states) >= STEPS + 2, 30, "the resumed state")
    # the owed answer did not step: the run goes on from where the last one ended
    np.testing.assert_array_equal(states[STEPS + 1].position, last)

    # pause_after is a dynamic parameter (as ros2 param set sets it)
    req = SetParameters.Request(parameters=[ParameterMsg(
        name="pause_after", value=ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                                 integer_value=2))])
    assert probe.call(SetParameters, "/sim/set_parameters", req).results[0].successful
