"""`mbrl-ros bringup`, the launch files' processes without ros2 launch, run as a user would:
the same plan sim.launch.py starts (mbrl_ros/bringup.py), over real DDS, stopped with
Ctrl-C. Covers the launch wiring end to end: parameters with the user's file last, a
namespace, activate:=false, and a node that dies or fails to configure."""
import os
import re
import signal
import subprocess
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from conftest import BIN, NodeProcess, diagnostics_values

pytestmark = pytest.mark.timeout(150)
UP = 90          # s: starting the nodes takes ~5 s on a quiet machine, far more on a busy one


@pytest.fixture
def bringup(ros_env, tmp_path):
    """bringup('sim', 'robot:=arm2', ...) -> NodeProcess of `mbrl-ros bringup`."""
    runs: list[NodeProcess] = []

    def _start(kind: str, *args: str) -> NodeProcess:
        p = NodeProcess([str(BIN / "mbrl-ros"), "bringup", kind, *args], ros_env,
                        tmp_path / f"bringup_{len(runs)}.log")
        runs.append(p)
        return p

    yield _start
    for p in runs:
        p.stop()
        # The nodes run in process groups of their own: end any a failed run left behind.
        for pid in re.findall(r"pid (\d+)\)", p.log_path.read_text(errors="replace")):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _user_file(tmp_path, text: str) -> str:
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    return f"params_file:={f}"


def _stop_cleanly(p: NodeProcess) -> str:
    p.signal(signal.SIGINT)
    try:
        code = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bringup did not stop within 30 s of SIGINT:\n{p.output()}")
    out = p.output()
    assert code == 0, out
    return out


def test_sim_controls_the_arm_user_file_wins_and_ctrl_c_exits_0(bringup, probe, tmp_path):
    # planner:=ilqr sets active_planner and all four planner_plugins; the user's file is
    # applied after the launch's values, for every key (the README's GPS recipe).
    p = bringup("sim", "robot:=arm2", "model:=mujoco", "record:=false", "planner:=ilqr",
                _user_file(tmp_path, "controller:\n  ros__parameters:\n"
                                     "    planner_plugins: [ilqr, cem]\n"
                                     "    active_planner: cem\n"))
    states = probe.collect(JointState, "/joint_states")
    commands = probe.collect(Float64MultiArray, "/effort_controller/commands")
    probe.spin_until(lambda: len(states) > 10 and len(commands) > 10 or p.proc.poll() is not None,
                     UP, "joint states and the controller's commands")
    assert p.proc.poll() is None, p.output()
    res = probe.call(GetParameters, "/controller/get_parameters",
                     GetParameters.Request(names=["active_planner", "planner_plugins"]))
    assert res.values[0].string_value == "cem"
    assert list(res.values[1].string_array_value) == ["ilqr", "cem"]
    out = _stop_cleanly(p)
    for line in ("started /sim (sim_node", "started /controller (controller",
                 "/controller: configured", "/controller: activated",
                 "stopped /controller (exit 0)", "stopped /sim (exit 0)"):
        assert f"[bringup] {line}" in out, out


def test_namespace_moves_every_node_and_topic_of_the_robot(bringup, probe, tmp_path):
    from rosbags.highlevel import AnyReader
    bags = tmp_path / "bags"
    p = bringup("sim", "namespace:=arm_b", "excite:=true", "model:=linear",
                f"bag_dir:={bags}", "use_sim_time:=false")
    states = probe.collect(JointState, "/arm_b/joint_states")
    commands = probe.collect(Float64MultiArray, "/arm_b/effort_controller/commands")
    outside = probe.collect(JointState, "/joint_states") + \
        probe.collect(Float64MultiArray, "/effort_controller/commands")
    diags = probe.collect(DiagnosticArray, "/diagnostics", 50)
    probe.spin_until(lambda: len(states) > 20 and len(commands) > 20 or p.proc.poll() is not None,
                     UP, "the excitation driving the namespaced sim")
    assert p.proc.poll() is None, p.output()
    # The fitter is namespaced too and gets the live data (its ~/fit answers under arm_b).
    # (Its own refit may be under way when the call arrives: that answer counts too.)
    res = probe.call(Trigger, "/arm_b/model_fitter/fit", timeout=UP)
    assert res.success or "transitions" in res.message \
        or "a fit is running already" in res.message, res.message
    # The logger's subscriptions match on its own (discovery can take seconds under load):
    # stop once its namespaced diagnostics say both topics reached the bag. The status name
    # carries the namespace, so two arms' loggers stay apart on the shared /diagnostics.
    ns_topics = ("/arm_b/joint_states", "/arm_b/effort_controller/commands")

    def logged():
        d = diagnostics_values(diags, "mbrl_ros/arm_b/data_logger")
        return all(int(d.get(f"received {t}", 0)) > 0 for t in ns_topics)
    probe.spin_until(lambda: logged() or p.proc.poll() is not None, UP,
                     "the namespaced data logger recording both topics")
    assert diagnostics_values(diags, "mbrl_ros/data_logger") == {}
    assert outside == []
    out = _stop_cleanly(p)
    (bag,) = [d for d in bags.iterdir() if d.is_dir()]
    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts.get("/arm_b/joint_states", 0) > 0, (counts, out)
    assert counts.get("/arm_b/effort_controller/commands", 0) > 0, (counts, out)


def test_activate_false_leaves_the_controller_inactive(bringup, probe):
    p = bringup("sim", "record:=false", "activate:=false")
    commands = probe.collect(Float64MultiArray, "/effort_controller/commands")
    states = probe.collect(JointState, "/joint_states")
    probe.spin_until(lambda: "/controller: configured" in p.output()
                     or p.proc.poll() is not None, UP, "the controller configured")
    state = probe.call(GetState, "/controller/get_state", GetState.Request())
    assert state.current_state.label == "inactive"
    n = len(states)
    probe.spin_until(lambda: len(states) > n + 50, UP, "joint states while inactive")
    assert commands == []
    out = _stop_cleanly(p)
    assert "activated" not in out


@pytest.mark.parametrize("case", ["robot:=arm9", "configure", "horizon"])
def test_a_node_that_dies_or_fails_to_configure_ends_bringup_non_zero(bringup, tmp_path,
                                                                       case):
    if case == "robot:=arm9":        # the sim exits at start (or the controller fails to configure)
        args = ["robot:=arm9"]
    elif case == "configure":        # only the controller's robot is wrong: configure fails
        args = [_user_file(tmp_path, "/**/controller:\n  ros__parameters:\n    robot: arm9\n")]
    else:                            # out of range: the controller exits at start
        args = [_user_file(tmp_path, "/**/controller:\n  ros__parameters:\n    horizon: 1\n")]
    p = bringup("sim", "record:=false", *args)
    try:
        code = p.wait(timeout=UP)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bringup kept running after a node failed:\n{p.output()}")
    out = p.output()
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("[bringup] error:")]
    assert len(errors) == 1, out
    expected = {"robot:=arm9": r"/(sim \(sim_node\) exited with code 2|controller: "
                                r"configure failed)",
                "configure": r"/controller: configure failed",
                "horizon": r"/controller \(controller\) exited with code 2"}[case]
    assert re.search(expected, errors[0]), out
    if case == "configure":
        assert "stopped /sim" in out       # the others are stopped, not left running


@pytest.mark.timeout(4 * UP)    # UP each to configure, restart and answer; 30 s to stop
def test_respawn_restarts_a_node_and_repeats_its_transitions(bringup, probe):
    # A real arm's launch (no simulator) with respawn:=true: the controller is killed,
    # restarted and configured again, and bringup keeps running.
    p = bringup("robot", "robot:=arm2", "model:=mujoco", "record:=false", "respawn:=true",
                "activate:=false")
    probe.spin_until(lambda: "/controller: configured" in p.output()
                     or p.proc.poll() is not None, UP, "the controller configured")
    first = re.search(r"started /controller \(controller, pid (\d+)\)", p.output())
    os.killpg(int(first.group(1)), signal.SIGKILL)
    probe.spin_until(lambda: p.output().count("/controller: configured") == 2
                     or p.proc.poll() is not None, UP, "the controller restarted and configured")
    assert p.proc.poll() is None, p.output()
    assert "/controller (controller) exited with code -9; restarting" in p.output()
    # Until DDS notices the killed process, a request may go to its stale endpoint, and the
    # new one matches the client when discovery gets to it: re-ask (get_state is idempotent).
    state = probe.call(GetState, "/controller/get_state", GetState.Request(), timeout=UP,
                       resend=3.0)
    assert state.current_state.label == "inactive"
    _stop_cleanly(p)


@pytest.mark.parametrize("executable,params", [
    ("sim_node", {"model": "arm2"}),
    ("controller", {"robot": "arm2", "model": "mujoco", "autostart": True})])
def test_a_node_exits_0_when_ctrl_c_reaches_it_twice(start_node, probe, executable, params):
    # Under `ros2 launch` a terminal's Ctrl-C reaches each node twice: the terminal signals
    # the whole foreground process group, then launch signals each node. A second SIGINT
    # while the finished node's interpreter shut down killed it (exit -2, and launch
    # printed "process has died" for every node on every Ctrl-C; checked by hand).
    node = start_node(executable, params)
    ready = {"sim_node": "simulating arm2", "controller": "active: commanding"}[executable]
    probe.spin_until(lambda: ready in node.output() or node.proc.poll() is not None, UP,
                     f"{executable} running")
    assert node.proc.poll() is None, node.output()
    node.signal(signal.SIGINT)
    end = time.monotonic() + 30
    while node.proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
        node.signal(signal.SIGINT)         # launch's, and any further Ctrl-C, while it exits
    assert node.proc.poll() == 0, node.output()


def test_shipped_arm7_realtime_file_layers_over_the_launch_values(bringup, probe):
    # config/arm7_ensemble_realtime.yaml as the README gives it: params_file over the
    # launch's own values (plan_mode timer by default); the controller runs with its keys.
    from pathlib import Path
    shipped = Path(__file__).resolve().parents[2] / "config" / "arm7_ensemble_realtime.yaml"
    p = bringup("sim", "robot:=arm7", "model:=mujoco", "record:=false",
                f"params_file:={shipped}")
    probe.spin_until(lambda: "/controller: activated" in p.output()
                     or p.proc.poll() is not None, UP, "the controller activated")
    assert p.proc.poll() is None, p.output()
    names = ["plan_mode", "replan_every", "sync_max_state_age", "ilqr.max_iterations"]
    res = probe.call(GetParameters, "/controller/get_parameters",
                     GetParameters.Request(names=names))
    assert [res.values[0].string_value, res.values[1].integer_value,
            res.values[2].double_value, res.values[3].integer_value] == ["sync", 1, 0.01, 1]
    _stop_cleanly(p)
