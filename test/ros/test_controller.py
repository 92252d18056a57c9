"""The controller lifecycle node against sim_node over DDS."""
import math
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from conftest import START, diagnostics_values

pytestmark = pytest.mark.timeout(240)
CMD = "/effort_controller/commands"
TARGET = [0.5, -0.5]
BASE = {"robot": "arm2", "model": "mujoco", "plan_rate": 20.0, "horizon": 25,
        "target_joint_positions": TARGET, "diagnostics_rate": 5.0}


def set_param(probe, node, name, value):
    if isinstance(value, str):
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    elif isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
    req = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return probe.call(SetParameters, f"/{node}/set_parameters", req, resend=3.0).results[0]


def near_target(states, tol=0.05):
    return bool(states) and np.max(np.abs(np.array(states[-1].position) - TARGET)) < tol


def test_reaches_target_and_switches_planner_bumplessly(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "planner_plugins": ["ilqr", "ilqr_b"],
                              "ilqr_b.plugin": "ilqr", "ilqr_b.max_iterations": 1,
                              "max_effort_rate": 200.0})
    states = probe.collect(JointState, "/joint_states")
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: near_target(states), 40, "arm at the target")
    # Unknown id: refused with the valid ones; the active planner is unchanged.
    r = set_param(probe, "controller", "active_planner", "nope")
    assert not r.successful and "ilqr, ilqr_b" in r.reason
    # Switch mid-run, while moving to a new target.
    n0 = len(cmds)
    r = set_param(probe, "controller", "active_planner", "ilqr_b")
    assert r.successful
    probe.spin_until(lambda: diagnostics_values(diags, "mbrl_ros/controller")
                     .get("active_planner") == "ilqr_b", 10, "switch reported")
    assert int(diagnostics_values(diags, "mbrl_ros/controller")["switches"]) == 1
    probe.spin_for(1.0)
    u = np.array([c.data for c in cmds[max(0, n0 - 20):]])
    # The limiter bounds the change per command (max_effort_rate / control_rate, also after
    # a late step), so consecutive commands -- every one the node sent: the probe's reader
    # keeps a backlog of 1000 -- never differ by more.
    assert np.abs(np.diff(u, axis=0)).max() <= 200.0 * 0.01 + 1e-9   # rate limit holds
    # Real time: behaviour, not tracking quality (with two hogs beside the suite the arm was
    # outside 0.05 rad at the instant checked, 1 s after the switch): the new planner keeps
    # control, the arm is (back) at the target.
    probe.spin_until(lambda: near_target(states), 40, "the arm at the target after the switch")
    # The planners plan within the filter's rate (plan_within_rate), following its changes.
    def planned_rate(value):
        return lambda: diagnostics_values(diags, "mbrl_ros/controller").get(
            "planned_effort_rate") == value
    probe.spin_until(planned_rate("200"), 10, "planned_effort_rate 200")
    assert set_param(probe, "controller", "max_effort_rate", 300.0).successful
    probe.spin_until(planned_rate("300"), 10, "planned_effort_rate 300")
    assert set_param(probe, "controller", "plan_within_rate", False).successful
    probe.spin_until(planned_rate("0"), 10, "planned_effort_rate 0 (planning as if unlimited)")


def test_plan_mode_on_state_replans_on_new_states_at_most_plan_rate(start_node, probe):
    # The planning thread replans when a state arrives (the newest), no faster than
    # plan_rate, and not at all without new states (timer mode would replan on the old one).
    sim = start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "plan_mode": "on_state",
                              "plan_rate": 20.0})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")

    def replans():
        return int(diagnostics_values(diags, "mbrl_ros/controller").get("replans") or 0)
    probe.spin_until(lambda: near_target(states), 60, "arm at the target")
    r0, t0 = replans(), time.monotonic()
    probe.spin_for(3.0)
    r1, t1 = replans(), time.monotonic()
    # diagnostics are 5 Hz: the counts are up to 0.2 s old at either end
    assert 0 < r1 - r0 <= 20.0 * (t1 - t0 + 0.4) + 1, (r0, r1)
    d = diagnostics_values(diags, "mbrl_ros/controller")
    assert d["planning"] == "process" and d["fault"] == ""
    sim.stop()                                   # no more states: no more replans
    probe.spin_for(1.0)
    r2 = replans()
    probe.spin_for(2.0)
    assert replans() == r2


def test_sync_mode_acts_on_late_states_without_planning_from_them(start_node, probe):
    # Real time with a solve longer than the period (iLQR, long horizon, 100 Hz states):
    # states queue behind the solve. With sync_max_state_age the late ones are answered
    # with the current plan (counted), so commands keep pace with states; 0 turns it off.
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "plan_mode": "sync",
                              "horizon": 150, "ilqr.max_iterations": 10,
                              "ilqr.tol_cost": 0.0, "ilqr.tol_grad": 0.0,
                              "sync_max_state_age": 0.005, "state_timeout": 5.0})
    states = probe.collect(JointState, "/joint_states")
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")

    def diag():
        return diagnostics_values(diags, "mbrl_ros/controller")
    probe.spin_until(lambda: int(diag().get("replans") or 0) > 5, 60, "replans",
                     lambda: str(diag()))
    d = diag()
    solve_ms = float(d["solve_ms_median"])
    assert int(d["late_states_unplanned"]) > 0, d
    assert solve_ms > 10.0, d          # the premise: a solve outlasts the 10 ms period
    n_cmds = len(cmds)
    probe.spin_for(2.0)
    with_limit = len(cmds) - n_cmds
    assert set_param(probe, "controller", "sync_max_state_age", 0.0).successful
    probe.spin_for(1.0)
    late, n_cmds = int(diag()["late_states_unplanned"]), len(cmds)
    probe.spin_for(2.0)
    without = len(cmds) - n_cmds
    assert int(diag()["late_states_unplanned"]) == late
    # Without the limit every queued state waits for a solve of its own: far fewer
    # commands (a solve each) than with it (the queued states answered at once).
    assert with_limit > 2 * without, (with_limit, without, solve_ms)


# Each planner family closes the loop in the node against sim_node (iLQR above). Quality
# is asserted in lockstep (the sim advances one period per command, the controller replans
# on every state before acting): the figures do not depend on how busy the machine is.
LOCKSTEP_SIM = {"model": "arm2", "publish_rate": 100.0, "lockstep": True}
LOCKSTEP = {"control_mode": "on_state", "plan_mode": "sync", "replan_every": 1,
            "state_timeout": 60.0}       # a slow replan must not look like a stale robot
PLANNERS = {"casadi_mpc": {},
            "mppi": {"horizon": 40, "mppi.samples": 64},
            "cem": {"horizon": 40, "cem.population": 128}}


# Lockstep runs at the pace the CPU allows: CEM took 36 s of CPU (85 s wall at load 11,
# over the 120 s timeout at load 15-32). The guard is a stalled simulation (no state for
# 60 s), not a wall-clock budget; the test timeout only catches a hang of the test itself.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("planner", list(PLANNERS))
def test_planner_reaches_and_holds_the_target_in_the_node(start_node, probe, planner):
    start_node("sim_node", LOCKSTEP_SIM)
    start_node("controller", {**BASE, **LOCKSTEP, "autostart": True,
                              "planner_plugins": [planner], "active_planner": planner,
                              **PLANNERS[planner]})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: len(states) > 0, 120, "the first state")
    # Reaching is bounded in simulated time (20 s; it takes a few), not in wall time.
    probe.spin_until_progressing(lambda: near_target(states) or len(states) > 2000,
                                 lambda: len(states), 60, f"arm at the target with {planner}")
    assert near_target(states), f"{planner}: not at the target after 20 s of simulated time"
    n = len(states)
    probe.spin_until_progressing(lambda: len(states) >= n + 300, lambda: len(states), 60,
                                 "3 s of simulated time")
    err = np.abs(np.array([m.position for m in states[n + 100:n + 300]]) - TARGET).max(axis=1)
    # Held (after 1 s of settling, for 2 s): within 0.05 rad 95 % of the time, never 0.1.
    assert np.percentile(err, 95) < 0.05 and err.max() < 0.1, (planner, np.round(err[::25], 3))
    d = diagnostics_values(diags, "mbrl_ros/controller")
    assert d["active_planner"] == planner and int(d["replans"]) > 0


# The sampling planners in real time replan every 4-7 control periods (64 samples x 40
# steps of the MuJoCo model per solve, 40-65 ms): latency compensation plans from the
# state predicted for when the plan takes over. Behaviour only (a busy machine decides
# how well it tracks): the arm reaches the target and the plans are started ahead.
def test_sampling_planner_in_real_time_compensates_latency(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "planner_plugins": ["mppi"],
                              "active_planner": "mppi", "horizon": 40, "plan_rate": 50.0,
                              "mppi.samples": 64})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: near_target(states, 0.1), 60, "arm near the target with mppi")
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/controller")
                                 .get("lookahead_steps", 0)) > 0, 10,
                     "plans started ahead (latency compensation)")


# on_state: the watchdog timer commands the hold; control thread: the thread keeps its
# rate with no states at all.
CONTROL_THREAD = {"control_mode": "timer", "control_rate": 100.0, "control_loop": "thread",
                  "planning": "thread"}
LOOPS = pytest.mark.parametrize("loop", [{}, CONTROL_THREAD],
                                ids=["on_state", "control_thread"])


@LOOPS
def test_stale_state_gives_safe_hold(start_node, probe, loop):
    sim = start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "state_timeout": 0.1, **loop})
    states = probe.collect(JointState, "/joint_states")
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: len(cmds) > 20 and len(states) > 20, START, "control running")
    sim.stop()                                         # the robot goes silent
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/controller")
                                 .get("stale", 0)) > 3, 10, "watchdog")
    n, t0 = len(cmds), time.monotonic()
    probe.spin_for(1.0)
    assert len(cmds) > n, "controller stopped commanding instead of holding"
    if loop:
        rate = (len(cmds) - n) / (time.monotonic() - t0)
        assert rate > 50.0, f"{rate:.1f} commands/s without states: the thread is not holding"
        assert diagnostics_values(diags, "mbrl_ros/controller")["control_loop"] == "thread"
    # Damping on a stale velocity would be open-loop effort: the hold ramps to zero.
    assert cmds[-1].data.tolist() == [0.0, 0.0]


# on_state: a command per joint state; thread: the timer-mode control thread, which keeps
# commanding (the hold) between states and must latch the same way.
@LOOPS
def test_nan_state_latches_safe_hold_until_cleared(start_node, probe, loop):
    ctrl = start_node("controller", {**BASE, "autostart": True, "hold_mode": "zero",
                                     **loop, **({"state_timeout": 5.0} if loop else {})})
    pub = probe.node.create_publisher(JointState, "/joint_states", 10)
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: pub.get_subscription_count() > 0, START, "controller subscribed")
    good = JointState(name=["shoulder", "elbow"], position=[0.0, 0.0], velocity=[0.0, 0.0])
    for _ in range(5):
        pub.publish(good)
        probe.spin_for(0.01)
    pub.publish(JointState(name=["shoulder", "elbow"], position=[math.nan, 0.0],
                           velocity=[0.0, 0.0]))
    probe.spin_until(lambda: diagnostics_values(diags, "mbrl_ros/controller")
                     .get("fault", "") != "", 10, "latched fault")
    n = len(cmds)
    for _ in range(5):                                 # valid states again: still held
        pub.publish(good)
        probe.spin_for(0.02)
    probe.spin_until(lambda: len(cmds) > n + (20 if loop else 3), 5, "hold commands")
    assert all(np.all(np.isfinite(c.data)) for c in cmds)
    assert all(c.data.tolist() == [0.0, 0.0] for c in cmds[n:])
    assert ctrl.proc.poll() is None
    if loop:
        assert diagnostics_values(diags, "mbrl_ros/controller")["control_loop"] == "thread"
    res = probe.call(Trigger, "/controller/clear_error")
    assert res.success and "non-finite" in res.message
    probe.spin_until(lambda: diagnostics_values(diags, "mbrl_ros/controller")
                     .get("fault", "x") == "", 10, "fault cleared")


def test_deactivate_and_sigint_leave_zero_effort(start_node, probe):
    """A forward command controller keeps applying the last command: leaving must end on
    an explicit zero, reached within the rate limit."""
    import signal
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "autostart": True})
    cmds = probe.collect(Float64MultiArray, CMD)
    target = probe.node.create_publisher(Float64MultiArray, "/controller/target_joints", 10)
    probe.spin_until(lambda: len(cmds) > 20 and target.get_subscription_count() > 0, START,
                     "controller running")
    target.publish(Float64MultiArray(data=[2.5, 2.0]))      # a long move: large efforts
    probe.spin_until(lambda: np.any(np.abs(cmds[-1].data) > 0.5), 10, "controller pushing")
    ctrl.signal(signal.SIGINT)
    assert ctrl.wait(timeout=20) == 0
    # The node has exited: take everything it delivered (a starved probe may still hold a
    # backlog). The zero must be among it and last: the node waits for the acknowledgement
    # before it exits (under load the zero was lost with the exiting writer: [3, 3] last).
    n = -1
    while n != len(cmds):
        n = len(cmds)
        probe.spin_for(0.5)
    assert cmds[-1].data.tolist() == [0.0, 0.0]
    tail = np.array([c.data for c in cmds[-30:]])
    assert np.abs(np.diff(tail, axis=0)).max() <= 500.0 * 0.01 + 1e-9


@pytest.mark.timeout(330)      # eight service calls of up to 30 s each among the waits
def test_lifecycle_transitions_by_service(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", BASE)                     # no autostart: unconfigured
    cmds = probe.collect(Float64MultiArray, CMD)
    get = GetState.Request()
    assert probe.call(GetState, "/controller/get_state", get).current_state.label == \
        "unconfigured"
    for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        res = probe.call(ChangeState, "/controller/change_state",
                         ChangeState.Request(transition=Transition(id=tid)))
        assert res.success
    assert probe.call(GetState, "/controller/get_state", get).current_state.label == "active"
    probe.spin_until(lambda: len(cmds) > 10, 20, "commands once active")
    res = probe.call(ChangeState, "/controller/change_state", ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    assert res.success
    # Take what the node sent before it went inactive (a starved probe may hold a backlog):
    # the count settles (it would not if the node kept commanding), the zero last.
    n, end = -1, time.monotonic() + 30
    while n != len(cmds):
        assert time.monotonic() < end, "inactive controller still commands"
        n = len(cmds)
        probe.spin_for(0.5)
    assert cmds[-1].data.tolist() == [0.0, 0.0]          # released to zero effort
    n = len(cmds)
    probe.spin_for(0.5)
    assert len(cmds) == n, "inactive controller still commands"
    # cleanup + configure again: no duplicated subscriptions (one command per state).
    for tid in (Transition.TRANSITION_CLEANUP, Transition.TRANSITION_CONFIGURE,
                Transition.TRANSITION_ACTIVATE):
        res = probe.call(ChangeState, "/controller/change_state",
                         ChangeState.Request(transition=Transition(id=tid)))
        assert res.success, tid
    states = probe.collect(JointState, "/joint_states")
    probe.spin_until(lambda: len(states) > 100, 20, "100 states")
    n_c, n_s = len(cmds), len(states)
    probe.spin_for(1.0)
    ratio = (len(cmds) - n_c) / max(len(states) - n_s, 1)
    assert 0.8 < ratio < 1.2, f"{ratio:.2f} commands per state after reconfigure"


def diagnostics_level(msgs, name: str = "mbrl_ros/controller") -> tuple[int, str] | None:
    """(level, message) of the newest status called ``name``."""
    for arr in reversed(msgs):
        for st in arr.status:
            if st.name == name:
                return int.from_bytes(st.level, "little") if isinstance(st.level, bytes) \
                    else int(st.level), st.message
    return None


# Issue 11: finite but absurd joint states from a second publisher on /joint_states, while
# sim_node publishes the real ones at 100 Hz. Before the plausibility check, 40 states of
# 1e6 over 1 s threw the arm from [0.5, -0.5] to [1.05, -2.38] with full torque.
HOSTILE = {"1e6_stream": (1e6, 40), "1e308_stream": (1e308, 40), "single_1e6": (1e6, 1)}


# on_state: a command per state (a rejected one is answered by the hold); the control
# thread: commands at control_rate from the newest accepted state, holding meanwhile.
@pytest.mark.parametrize("stream,loop", [(s, {}) for s in HOSTILE]
                         + [("1e6_stream", CONTROL_THREAD)],
                         ids=list(HOSTILE) + ["1e6_stream-control_thread"])
def test_absurd_states_never_move_the_arm(start_node, probe, stream, loop):
    value, count = HOSTILE[stream]
    # The control thread commands in real time; against a real-time simulation on a busy
    # machine (load 15-32) the arm never settled (the sim applied each late command for as
    # long as the thread was starved). A lockstep simulation applies each command for one
    # period: the thread's timing no longer moves the arm, the hostile states still reach
    # the controller beside the sim's.
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0, "lockstep": bool(loop)})
    start_node("controller", {**BASE, "autostart": True, **loop})
    states = probe.collect(JointState, "/joint_states")
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    pub = probe.node.create_publisher(JointState, "/joint_states", 10)

    def real():          # the sim's states (the probe hears its own hostile ones too)
        return [m for m in states if np.all(np.abs(m.position) < 100.0)]
    probe.spin_until(lambda: near_target(real()) and pub.get_subscription_count() >= 2, 40,
                     "arm at the target")
    # Settled: holding the target takes almost no effort on arm2 (no gravity). A fixed 1 s
    # after first reaching it was not always enough in control-thread mode (a fresh-clone
    # CI run measured the last tracking efforts, 1.8 N m, as the hostile stream's).
    probe.spin_until(lambda: len(cmds) >= 50
                     and np.abs(np.array([c.data for c in cmds[-50:]])).max() < 0.3, 60,
                     "arm settled at the target")
    n_states, n_cmds, n_all = len(real()), len(cmds), len(states)
    for _ in range(count):                    # 40 Hz, interleaved with the sim's 100 Hz
        msg = JointState(name=["shoulder", "elbow"], position=[value, -value],
                         velocity=[value, value])
        msg.header.stamp = probe.node.get_clock().now().to_msg()
        pub.publish(msg)
        probe.spin_for(0.025)
    probe.spin_for(1.0)
    # ~2 s of the sim's 100 Hz; a busy machine delivers fewer in that time: wait for them.
    probe.spin_until(lambda: sum(all(abs(x) < 100.0 for x in m.position)
                                 for m in states[n_all:]) > 50, 60,
                     "50 of the sim's states since the hostile ones began")
    held = np.array([m.position for m in real()[n_states:]])
    assert len(held) > 50
    err = np.abs(held - TARGET).max()
    # on_state answers every state at once (0.05 rad holds on a busy machine); the control
    # thread tracks in real time, and with two CPU hogs beside the suite it drifted 0.069 rad
    # from load alone. Both bounds are far below what the stream did without the check
    # (0.33-0.35 rad; the issue: thrown 1.9 rad); the sharp check is the commands below.
    tol = 0.15 if loop else 0.05
    assert err < tol, f"arm moved {err:.3f} rad from the target"
    u = np.array([c.data for c in cmds[n_cmds:]])
    assert np.isfinite(u).all() and np.abs(u).max() < 1.0, np.abs(u).max()
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/controller")
                                 .get("implausible_states", 0)) >= min(count, 5), 10,
                     "rejections reported")
    d = diagnostics_values(diags, "mbrl_ros/controller")
    if count > 1:                             # sustained: latched, reported as an error
        probe.spin_until(lambda: diagnostics_level(diags) is not None
                         and diagnostics_level(diags)[0] == 2, 10, "diagnostics ERROR")
        d = diagnostics_values(diags, "mbrl_ros/controller")
        assert "implausible joint state" in d["fault"] and "outside" in d["fault"]
        assert "latched: implausible" in diagnostics_level(diags)[1]
    else:                                     # one outlier: rejected, not latched
        assert d["fault"] == "" and int(d["bad_states"]) == 1
        assert diagnostics_level(diags)[0] != 2


def test_sim_teleport_reanchors_without_latching(start_node, probe):
    """/sim/set_state starts an episode elsewhere: a jump the check cannot reach, but a
    run of consistent states re-anchors it; the controller brings the arm back."""
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    teleport = probe.node.create_publisher(JointState, "/sim/set_state", 10)
    probe.spin_until(lambda: near_target(states) and teleport.get_subscription_count() > 0,
                     40, "arm at the target")
    teleport.publish(JointState(name=["shoulder", "elbow"], position=[-1.0, 1.0],
                                velocity=[0.0, 0.0]))
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/controller")
                                 .get("reanchors", 0)) == 1, 10, "re-anchored")
    probe.spin_until(lambda: near_target(states), 40, "arm back at the target")
    d = diagnostics_values(diags, "mbrl_ros/controller")
    assert d["fault"] == "" and int(d["implausible_states"]) <= 2


def test_diagnostics_report_holds_and_an_unusable_model_in_process(domain_id):
    """The node's wiring of controller_health (no DDS traffic: states are handed to the
    callback, diagnostics captured): WARN while it holds, OK while it controls, ERROR
    when every replan fails -- never 'OK controlling' while it only holds."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from diagnostic_msgs.msg import DiagnosticStatus
    from mbrl_ros.ros.controller import Controller
    from mbrl_ros.ros.conversions import time_msg

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    # state_timeout: a sync replan of 0.1 s wall (the first iLQR solve on a busy machine)
    # made the state it answers stale, and that step held ("3 of 3"), as it should for a
    # robot; the steps are counted here, not timed, so no wall time may decide them.
    params = {**BASE, "plan_mode": "sync", "diagnostics_rate": 0.0,
              "replan_failure_limit": 10, "state_timeout": 60.0}
    node = Controller(context=ctx, parameter_overrides=[
        Parameter(k, value=list(v) if isinstance(v, list) else v) for k, v in params.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node.trigger_activate()
        diags = []
        node.diag_pub.publish = diags.append
        stamp = [0.0]

        def report():
            node._publish_diagnostics()
            st = diags[-1].status[0]
            return st.level, st.message

        def states(n, q=TARGET):
            for _ in range(n):
                stamp[0] += 0.01
                m = JointState(name=["shoulder", "elbow"], position=list(q),
                               velocity=[0.0, 0.0])
                m.header.stamp = time_msg(stamp[0])
                node._on_state(m, {})   # no reception time: never late

        assert report() == (DiagnosticStatus.WARN,
                            "no control step since the last report: no joint states")
        states(3)                 # two held while the state is confirmed, then a plan
        level, msg = report()
        assert level == DiagnosticStatus.WARN and msg.startswith(
            "holding: confirming the joint state (2 of 3")
        states(5)
        assert report() == (DiagnosticStatus.OK, "controlling")
        states(1, q=[1e6, 0.0])
        states(1)
        assert report() == (DiagnosticStatus.WARN,
                            "holding: implausible joint state (1 of 2 control steps)")

        def broken(*a, **k):
            raise RuntimeError("model predicts NaN")
        replan, node.mpc.replan = node.mpc.replan, broken
        states(40)                # the plan runs out after 25 steps: held, replans failing
        level, msg = report()
        assert level == DiagnosticStatus.ERROR
        assert msg == "model unusable: 40 replans failed in a row (model predicts NaN)"
        node.mpc.replan = replan
        states(1)
        report()
        states(5)
        assert report() == (DiagnosticStatus.OK, "controlling")
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_planning_worker_failing_repeatedly_is_an_error(start_node, probe):
    """A planning worker that keeps dying (here: killed) makes /diagnostics ERROR."""
    import os
    import signal
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    start_node("controller", {**BASE, "autostart": True, "worker_failure_limit": 2})
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    killed = set()
    for _ in range(3):
        probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/controller")
                                     .get("plan_process_pid", 0)) not in killed | {0}, 60,
                         "a running planning worker")
        pid = int(diagnostics_values(diags, "mbrl_ros/controller")["plan_process_pid"])
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    probe.spin_until(lambda: diagnostics_level(diags)[0] == 2, 20, "diagnostics ERROR")
    assert "planning worker failed 3 times in 60 s" in diagnostics_level(diags)[1]


def test_a_model_announced_while_stopping_is_not_an_error(domain_id, tmp_path):
    """Ctrl-C stops the planning process; a model announced meanwhile cannot load, which is
    no fault: logged at info, not counted as a rejection (under ros2 launch a normal Ctrl-C
    printed 'model announcement rejected ... lost while loading' in 5 of 24 runs). The same
    announcement while running is a rejection."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from mbrl_ros.core import store
    from mbrl_ros.ros.controller import Controller

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    params = {**BASE, "plan_mode": "sync", "diagnostics_rate": 0.0}
    node = Controller(context=ctx, parameter_overrides=[
        Parameter(k, value=list(v) if isinstance(v, list) else v) for k, v in params.items()])
    missing = String(data=store.ArtifactInfo(str(tmp_path / "gone"), "linear", 3, "0" * 64,
                                             {}).to_json())
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node._on_model_announcement(missing)
        assert node.counters["model_rejects"] == 1
        node.finish(None)
        node._on_model_announcement(missing)
        assert node.counters["model_rejects"] == 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
