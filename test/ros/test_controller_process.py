"""The controller's planning process against sim_node over DDS: control in both planning
modes, safe hold and restart when the process dies or hangs, no process left behind,
model hot-swap into the process."""
import os
import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String

from conftest import START, diagnostics_values
from proc_util import alive
from test_controller import BASE, CMD, near_target

pytestmark = pytest.mark.timeout(120)
DIAG = "mbrl_ros/controller"


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def diag(diags) -> dict:
    return diagnostics_values(diags, DIAG)


def planning_pid(probe, diags, ctrl, timeout=30.0, other_than=0) -> int:
    """The running planning process (from diagnostics; checked to be the node's child)."""
    probe.spin_until(lambda: int(diag(diags).get("plan_process_pid", 0)) not in (0, other_than),
                     timeout, "a planning process")
    pid = int(diag(diags)["plan_process_pid"])
    assert pid in children(ctrl.proc.pid)
    return pid


@pytest.mark.timeout(200)
@pytest.mark.parametrize("planning", ["process", "thread"])
def test_timer_control_reaches_target(start_node, probe, planning):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "autostart": True, "planning": planning,
                                     "control_mode": "timer", "control_rate": 100.0})
    states = probe.collect(JointState, "/joint_states")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    # Real time: how well it tracks depends on the machine (with 'thread' planning at a
    # load of 11 on 2 cores it did not settle within 0.05 rad in 40 s). This test is about
    # the planning backends: the arm gets to the target at some point.
    seen = [0]

    def reached() -> bool:
        hit = any(near_target(states[k:k + 1]) for k in range(seen[0], len(states)))
        seen[0] = len(states)
        return hit
    probe.spin_until(reached, 90, "arm at the target")
    probe.spin_until(lambda: diag(diags).get("timer_late_ms_p99", "") != ""
                     and int(diag(diags)["replans"]) > 5, 10, "replans and timer stats")
    d = diag(diags)
    assert d["planning"] == planning
    assert float(d["timer_late_ms_median"]) < 10.0     # ticks run, near their schedule
    if planning == "process":
        assert planning_pid(probe, diags, ctrl) > 0 and d["plan_process_starts"] == "1"
    else:
        assert d["plan_process_pid"] == "0" and children(ctrl.proc.pid) == []


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_lost_planning_process_holds_then_recovers(start_node, probe, how):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "autostart": True, "hold_mode": "zero",
                                     "plan_timeout": 1.0})
    states = probe.collect(JointState, "/joint_states")
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    target = probe.node.create_publisher(Float64MultiArray, "/controller/target_joints", 10)
    probe.spin_until(lambda: near_target(states) and target.get_subscription_count() > 0, 40,
                     "arm at the target")
    pid = planning_pid(probe, diags, ctrl)
    target.publish(Float64MultiArray(data=[-0.5, 0.5]))       # moving: non-zero efforts
    probe.spin_until(lambda: np.any(np.abs(cmds[-1].data) > 0.5), 10, "controller pushing")
    holds = int(diag(diags)["holds"])
    n = len(cmds)
    os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    probe.spin_until(lambda: int(diag(diags).get("plan_process_failures", 0)) == 1, 10,
                     "the loss noticed")
    probe.spin_until(lambda: not alive(pid), 5, "the lost process gone")
    # Safe hold: the plan is dropped, the command ramps to an explicit zero (hold_mode
    # zero) within the rate limit, and the node keeps commanding.
    new = planning_pid(probe, diags, ctrl, other_than=pid)
    # (waited for: a busy probe receives the node's commands late; the zero was sent)
    probe.spin_until(lambda: any(c.data.tolist() == [0.0, 0.0] for c in cmds[n:]), 10,
                     "the hold's zero effort")
    probe.spin_until(lambda: int(diag(diags)["holds"]) > holds, 10, "the holds reported")
    assert ctrl.proc.poll() is None
    u = np.array([c.data for c in cmds[max(0, n - 5):]])
    assert np.abs(np.diff(u, axis=0)).max() <= 500.0 * 0.01 + 1e-9
    # Recovery: the new process plans from the mirrored target and model.
    probe.spin_until(lambda: np.max(np.abs(np.array(states[-1].position) - [-0.5, 0.5])) < 0.05,
                     30, "arm at the new target after the restart")
    d = diag(diags)
    assert d["plan_process_starts"] == "2" and d["plan_process_failures"] == "1"
    assert children(ctrl.proc.pid) == [new]


def test_deactivate_and_sigint_leave_no_planning_process(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", BASE)                # lifecycle by service
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    cmds = probe.collect(Float64MultiArray, CMD)

    def transition(tid):
        # Deactivate joins the control and planning threads (up to 5 s each) and ramps
        # the effort down before it answers: 10 s was too short once (fresh-clone CI).
        res = probe.call(ChangeState, "/controller/change_state",
                         ChangeState.Request(transition=Transition(id=tid)), timeout=30.0)
        assert res.success, tid
    transition(Transition.TRANSITION_CONFIGURE)
    assert children(ctrl.proc.pid) == []                   # configured: no process yet
    transition(Transition.TRANSITION_ACTIVATE)
    first = planning_pid(probe, diags, ctrl)
    transition(Transition.TRANSITION_DEACTIVATE)
    assert not alive(first) and children(ctrl.proc.pid) == []
    transition(Transition.TRANSITION_ACTIVATE)
    second = planning_pid(probe, diags, ctrl, other_than=first)
    probe.spin_until(lambda: int(diag(diags).get("replans", 0)) > 0 and len(cmds) > 10, 30,
                     "planning again")
    ctrl.signal(signal.SIGINT)
    assert ctrl.wait(timeout=20) == 0
    assert not alive(second)
    assert "Traceback" not in ctrl.output()


@pytest.mark.timeout(180)
def test_model_hot_swap_reaches_planning_process(start_node, probe, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from mbrl_ros.core import store
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "autostart": True})
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = probe.node.create_publisher(String, "/model_fitter/model", latched)
    probe.spin_until(lambda: diag(diags).get("planned_model_version") == "0", START,
                     "planning on the initial model")
    pid = planning_pid(probe, diags, ctrl)
    model = MujocoModel.from_sim("arm2", control_period=0.01)
    store.publish(model, tmp_path, "arm2")
    info = store.publish(model, tmp_path, "arm2")                       # v2
    pub.publish(String(data=info.to_json()))
    probe.spin_until(lambda: diag(diags).get("planned_model_version") == "2", 20,
                     "plans on model v2")
    d = diag(diags)
    assert d["model_version"] == "2" and d["model_loads"] == "2"
    bad = store.ArtifactInfo(info.uri, info.kind, 3, "0" * 64, {})      # wrong checksum
    pub.publish(String(data=bad.to_json()))
    probe.spin_until(lambda: diag(diags).get("model_rejects") == "1", 20, "rejected")
    assert diag(diags)["model_version"] == "2"
    assert int(diag(diags)["plan_process_pid"]) == pid                 # no restart needed
