"""The controller's control thread (control_mode timer, control_loop thread) against
sim_node over DDS: commands at control_rate (not at the state rate), the thread runs only
while active and is gone after destroy; use_sim_time falls back to the executor timer.
(Stale states and a NaN state are tested in test_controller.py for both control loops.)"""
import os
import sys
import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from std_msgs.msg import Float64MultiArray

from conftest import diagnostics_values
from test_controller import BASE, CMD

pytestmark = pytest.mark.timeout(120)
DIAG = "mbrl_ros/controller"
THREAD = "mbrl_control"                  # the control thread's name (Python and OS)
TIMER = {**BASE, "control_mode": "timer", "control_rate": 100.0, "control_loop": "thread",
         "planning": "thread"}


def diag(diags) -> dict:
    return diagnostics_values(diags, DIAG)


def os_threads(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def transition(probe, tid) -> None:
    res = probe.call(ChangeState, "/controller/change_state",
                     ChangeState.Request(transition=Transition(id=tid)))
    assert res.success, tid


def node_command_rate(probe, diags, seconds: float) -> float:
    """Commands per second by the node's own count and clock: the 'commands' counter of its
    /diagnostics and their header stamps, over at least ``seconds`` from now. A probe that
    a busy machine starves receives the commands in bursts, so counting arrivals on its own
    clock measured 72/s for a loop running at 100/s (two CPU hogs beside the suite)."""
    def entries(start):
        out = []
        for arr in diags[start:]:
            for st in arr.status:
                if st.name == DIAG:
                    kv = {k.key: k.value for k in st.values}
                    t = arr.header.stamp.sec + 1e-9 * arr.header.stamp.nanosec
                    out.append((t, int(kv["commands"])))
        return out
    n0 = len(diags)
    probe.spin_until(lambda: len(e := entries(n0)) >= 2 and e[-1][0] - e[0][0] >= seconds,
                     10 * seconds + 30, f"{seconds} s of the controller's diagnostics")
    e = entries(n0)
    return (e[-1][1] - e[0][1]) / (e[-1][0] - e[0][0])


def test_thread_commands_at_control_rate_not_state_rate(start_node, probe):
    # States at 40 Hz: a command per state (on_state) or none at all would be obvious.
    start_node("sim_node", {"model": "arm2", "publish_rate": 40.0})
    ctrl = start_node("controller", {**TIMER, "autostart": True})
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: int(diag(diags).get("replans", 0)) > 0 and len(cmds) > 50, 40,
                     "control running")
    rate = node_command_rate(probe, diags, 2.0)
    assert 90.0 <= rate <= 110.0, f"{rate:.1f} commands/s at control_rate 100"
    d = diag(diags)
    assert d["control_loop"] == "thread"
    assert d["control_sched"].startswith(("SCHED_FIFO", "SCHED_OTHER"))
    assert float(d["timer_late_ms_median"]) < 10.0          # lateness still measured
    assert THREAD in os_threads(ctrl.proc.pid)
    assert "Traceback" not in ctrl.output()


@pytest.mark.timeout(310)      # six transitions of up to 30 s each among the waits
def test_thread_stops_on_deactivate_and_restarts(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", TIMER)                # lifecycle by service
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    transition(probe, Transition.TRANSITION_CONFIGURE)
    assert THREAD not in os_threads(ctrl.proc.pid)        # configured, not active: none
    transition(probe, Transition.TRANSITION_ACTIVATE)
    probe.spin_until(lambda: len(cmds) > 20, 20, "commands once active")
    assert THREAD in os_threads(ctrl.proc.pid)
    transition(probe, Transition.TRANSITION_DEACTIVATE)
    assert THREAD not in os_threads(ctrl.proc.pid)
    # Take what the node sent before it went inactive (a starved probe may hold a backlog):
    # the count settles (it would not if the node kept commanding), the zero last.
    n, end = -1, time.monotonic() + 30
    while n != len(cmds):
        assert time.monotonic() < end, "inactive controller still commands"
        n = len(cmds)
        probe.spin_for(0.5)
    assert cmds[-1].data.tolist() == [0.0, 0.0]           # released to zero effort
    n = len(cmds)
    probe.spin_for(0.5)
    assert len(cmds) == n, "inactive controller still commands"
    transition(probe, Transition.TRANSITION_ACTIVATE)     # again: exactly one thread
    probe.spin_until(lambda: len(cmds) > n + 20, 20, "commands after reactivation")
    assert os_threads(ctrl.proc.pid).count(THREAD) == 1
    assert 85.0 <= node_command_rate(probe, diags, 1.0) <= 115.0   # one loop, not two
    transition(probe, Transition.TRANSITION_DEACTIVATE)
    transition(probe, Transition.TRANSITION_CLEANUP)
    assert THREAD not in os_threads(ctrl.proc.pid)


def test_thread_gone_after_destroy(domain_id):
    """In process: the control thread exists only while active, and destroy_node (from
    active, as at shutdown) leaves no control thread behind."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mbrl_ros.ros.controller import Controller

    def control_threads():
        return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    executor = SingleThreadedExecutor(context=ctx)
    spinning = threading.Event()

    def spin():
        while not spinning.is_set():
            executor.spin_once(timeout_sec=0.02)
    spinner = threading.Thread(target=spin, daemon=True)
    try:
        sys_switch = sys.getswitchinterval()
        before = control_threads()
        params = {**TIMER, "plan_mode": "sync", "autostart": False}
        node = Controller(context=ctx, parameter_overrides=[
            Parameter(k, value=list(v) if isinstance(v, list) else v)
            for k, v in params.items()])
        executor.add_node(node)
        spinner.start()
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert control_threads() == before
        node.trigger_activate()
        assert len(control_threads()) == len(before) + 1
        assert sys.getswitchinterval() <= 0.0005 + 1e-12
        deadline = time.monotonic() + 5.0
        while node.counters["commands"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.counters["commands"] >= 10, "control thread does not command"
        node.trigger_deactivate()
        assert control_threads() == before
        assert sys.getswitchinterval() == sys_switch          # restored when it stops
        node.trigger_activate()
        assert len(control_threads()) == len(before) + 1
        spinning.set()
        spinner.join(timeout=5.0)
        executor.remove_node(node)
        node.destroy_node()                                   # from active
        assert control_threads() == before
        assert sys.getswitchinterval() == sys_switch
    finally:
        spinning.set()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown(context=ctx)


def test_sim_time_uses_the_executor_timer(start_node, probe):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0, "publish_clock": True})
    start_node("controller", {**TIMER, "autostart": True, "use_sim_time": True})
    cmds = probe.collect(Float64MultiArray, CMD)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    probe.spin_until(lambda: len(cmds) > 20 and diag(diags), 30, "control running")
    assert diag(diags)["control_loop"] == "executor (use_sim_time)"
    assert diag(diags)["control_sched"] == ""
