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
    assert probe.call(SetParameters, "/sim/set_parameters", req,
                      resend=3.0).results[0].successful


@pytest.mark.timeout(240)
def test_a_sample_the_controller_did_not_execute_is_refused(start_node, probe, tmp_path):
    """The trainer cannot read the controller node's counters from another process; it
    checks the commands instead: an lg_controller artifact the controller cannot load
    (its replans fail, it holds) gives commands that are not the sample's controller's,
    and the sample is refused with an error saying so."""
    from mbrl_ros.bringup import gps_controller_params
    from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
    from mbrl_ros.core.algorithms.sim_env import reach_task
    from mbrl_ros.ros.gps_remote import RemoteSampler

    task = reach_task("arm2", conditions=1, horizon=8, seed=0)
    dt = task.env.dt
    start_node("sim_node", {"model": "arm2", "lockstep": True, "start_paused": True,
                            "publish_rate": 1.0 / dt, "diagnostics_rate": 0.0})
    start_node("controller", gps_controller_params("arm2", dt))
    probe.activate("/controller")
    sampler = RemoteSampler(task.env, task.targets, tmp_path, probe.node, probe.executor,
                            step_timeout=20.0)
    gps = MDGPS(task.env, task.costs, GPSSettings(horizon=8, samples=1, seed=0),
                initial_controllers=task.initial_controllers, tasks=task.targets,
                distance=task.distances(), sampler=sampler)
    X, U = gps.draw_samples()[:2]                 # executed as given: accepted
    assert X.shape == (1, 1, 9, 4) and sampler.samples == 1
    real = sampler._use_lg

    def broken(controller, noise, m):
        real(controller, noise, m)
        sampler._set(lg_controller__artifact=str(tmp_path / "missing"))
    sampler._use_lg = broken
    sampler.max_discarded = 1
    with pytest.warns(RuntimeWarning, match="dropped.*did not execute the sample"), \
            pytest.raises(Exception, match="did not execute the sample"):
        gps.draw_samples()
