"""The planning process: same plans as in-process, latest wins, crash/hang/restart, no
orphans (real child processes; ROS-free)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mbrl_ros.core import registry, store
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.core.control.plan_process import (PlanProcess, PlanProcessError, decode_policy,
                                                encode_policy, load_model)
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.models.mujoco_model import MujocoModel
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.policies.neural import NeuralPolicy
from mbrl_ros.sim.env import MujocoSim
from proc_util import alive

pytestmark = pytest.mark.timeout(120)
ROBOT = MujocoSim("arm2")
TARGET = np.array([0.5, -0.5])
X0 = np.array([0.1, -0.1, 0.0, 0.0])


def planner_settings():
    cls = registry.lookup("planner", "ilqr")
    return {"a": ("ilqr", cls.Settings(max_iterations=2)),
            "b": ("ilqr", cls.Settings(max_iterations=1))}


def controller_args():
    return dict(planner_ids=["a", "b"], active="a", horizon=20,
                effort_limits=ROBOT.effort_limits, position_limits=ROBOT.position_limits,
                cost_settings=CostSettings(), continuous=ROBOT.continuous)


def wait_until(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def proc():
    lost, logs = [], []
    p = PlanProcess("arm2", 0.01, ROBOT.joint_names, planner_settings, **controller_args(),
                    plan_timeout=5.0, on_lost=lost.append, nice=3,
                    log=lambda level, text: logs.append((level, text)))
    p.lost_reasons = lost
    p.logs = logs
    p.load_model("mujoco")
    p.set_target(TARGET)
    p.start()
    yield p
    p.stop()


def test_same_plans_as_in_process_and_settings_reach_the_child(proc):
    settings = planner_settings()
    mpc = MPCController(lambda pid, *a: registry.lookup("planner", "ilqr")(settings[pid][1], *a),
                        **controller_args())
    mpc.set_model(load_model("mujoco", robot="arm2", control_period=0.01,
                             joint_names=ROBOT.joint_names)[0])
    mpc.set_target(TARGET)
    for k in range(3):                         # warm-started replans agree too
        ref, got = mpc.replan(X0, 0.01 * k), proc.replan(X0, 0.01 * k)
        assert isinstance(got, LinearGaussianPolicy)
        for name in ("K", "k", "xbar", "cov", "u_min", "u_max"):
            np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
        assert got.t_end == ref.t_end
    assert proc._child.ready.result()[2]["torch_threads"] in (None, 1)   # one thread
    # the log says when the planner can answer (a first start compiles for seconds)
    assert [t for lv, t in proc.logs if lv == "info" and
            t.startswith(f"planning process {proc.pid} ready after ")], proc.logs
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 3
    xs, us = proc.nominal_states()
    assert xs.shape == (21, 4) and us.shape == (20, 2)
    assert proc.stats["planner"] == "a" and proc.stats["replan_seconds"] > 0
    # Commands are forwarded in order, before the next plan.
    proc.select("b")
    proc.set_target(np.array([0.2, 0.3]))
    proc.set_cost_settings(CostSettings(position_weight=10.0))
    mpc.select("b")
    mpc.set_target(np.array([0.2, 0.3]))
    mpc.set_cost_settings(CostSettings(position_weight=10.0))
    ref, got = mpc.replan(X0, 0.05), proc.replan(X0, 0.05)
    assert proc.active == "b" and proc.stats["switched"] == ("a", "b")
    np.testing.assert_array_equal(got.k, ref.k)
    with pytest.raises(ValueError, match="valid: a, b"):
        proc.select("nope")
    with pytest.raises(ValueError):
        proc.set_target(np.array([np.nan, 0.0]))
    # The effort rate and the last command reach the child: the same rate-bounded plan.
    last = (np.array([0.5, -0.5]), 0.05)
    proc.set_effort_rate(100.0)
    mpc.set_effort_rate(100.0)
    ref, got = mpc.replan(X0, 0.06, 0.0, last), proc.replan(X0, 0.06, 0.0, last)
    np.testing.assert_array_equal(got.k, ref.k)
    step = np.abs(got.k[0] - last[0])
    assert np.all(step <= 100.0 * 0.01 + 1e-9) and step.max() == pytest.approx(1.0), step
    with pytest.raises(ValueError, match="effort rate"):
        proc.set_effort_rate(-1.0)


def test_latest_state_wins_while_the_child_is_busy(proc):
    proc.replan(X0, 0.0)                       # started and ready
    child = proc._child
    os.kill(child.pid, signal.SIGSTOP)         # "busy": nothing is read meanwhile
    try:
        old = child.request("plan", X0, 0.01, 0.0)
        new = child.request("plan", X0 + 0.1, 0.02, 0.0)
    finally:
        os.kill(child.pid, signal.SIGCONT)
    assert old.result(10)[0] == "skipped"
    msg = new.result(10)
    assert msg[0] == "policy" and msg[3]["t0"] == 0.02


def test_crash_is_noticed_at_once_and_the_next_replan_restarts(proc):
    proc.replan(X0, 0.0)
    pid = proc.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: proc.lost_reasons, 5), "loss not reported"
    assert "exited" in proc.lost_reasons[0] and proc.counters["failures"] == 1 and not proc.running
    policy = proc.replan(X0, 0.1)              # a new child, initialised with the mirrors
    assert proc.counters["starts"] == 2 and proc.pid != pid and not alive(pid)
    assert policy.t0 == 0.1 and proc.model_version == 0


def test_hang_times_out_kills_and_restarts(proc):
    proc.plan_timeout = 0.5
    proc.replan(X0, 0.0)
    pid = proc.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(PlanProcessError, match="did not answer"):
        proc.replan(X0, 0.01)
    assert 0.4 < time.monotonic() - t0 < 5.0
    assert proc.counters["failures"] == 1 and wait_until(lambda: not alive(pid), 5)
    proc.plan_timeout = 5.0
    assert proc.replan(X0, 0.02).t0 == 0.02 and proc.counters["starts"] == 2


def test_stop_leaves_no_process_and_refuses_to_plan(proc):
    proc.replan(X0, 0.0)
    pid = proc.pid
    proc.stop()
    assert not alive(pid) and proc.pid is None and not proc.lost_reasons
    with pytest.raises(PlanProcessError, match="stopped"):
        proc.replan(X0, 0.1)
    proc.start()                               # a new one on demand
    assert proc.replan(X0, 0.1).t0 == 0.1 and proc.counters["starts"] == 2


def test_child_exits_when_the_parent_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, numpy as np\n"
        "sys.path[:0] = [%r, os.path.dirname(%r)]\n"
        "from test_plan_process import ROBOT, planner_settings, controller_args, X0, TARGET\n"
        "from mbrl_ros.core.control.plan_process import PlanProcess\n"
        "p = PlanProcess('arm2', 0.01, ROBOT.joint_names, planner_settings, "
        "**controller_args())\n"
        "p.load_model('mujoco'); p.set_target(TARGET); p.start(); p.replan(X0, 0.0)\n"
        "print(p.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n" % ((os.path.dirname(__file__),) * 2))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=90)
    pid = int(out.stdout.split()[0])
    assert wait_until(lambda: not alive(pid), 5), "planning process outlived its parent"


def test_models_load_in_the_child_and_bad_ones_are_refused(proc, tmp_path):
    proc.replan(X0, 0.0)
    m = MujocoModel.from_sim("arm2", control_period=0.01)
    store.publish(m, tmp_path, "arm2")
    info = store.publish(m, tmp_path, "arm2")                    # v2
    assert proc.load_model(info.uri, info.version, info.checksum) == 2
    assert proc.model_version == 2 and proc.running
    proc.replan(X0, 0.01)
    assert proc.stats["model_version"] == 2    # the child plans with it
    with pytest.raises(ModelError, match="announced"):
        proc.load_model(info.uri, 3, "0" * 64)
    with pytest.raises(ModelError):
        proc.load_model(str(tmp_path / "missing"), 4)
    assert proc.model_version == 2 and proc.running
    # A restarted child starts from the last good model.
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_until(lambda: proc.lost_reasons, 5)
    proc.replan(X0, 0.02)
    assert proc.stats["model_version"] == 2


def test_model_loading_keeps_planning(proc, monkeypatch):
    """A load on the child's loader thread does not stop replans on the old model."""
    proc.replan(X0, 0.0)
    done = threading.Event()
    result = []

    def load():
        try:
            result.append(proc.load_model("mujoco", version=5))
        finally:
            done.set()
    threading.Thread(target=load).start()
    n = 0
    while not done.is_set() and n < 50:
        proc.replan(X0, 0.01 * n)
        n += 1
    assert done.wait(30) and result == [5] and proc.model_version == 5


def test_policies_cross_as_arrays():
    rng = np.random.default_rng(0)
    lg = LinearGaussianPolicy(K=rng.standard_normal((5, 2, 4)), k=rng.standard_normal((5, 2)),
                              xbar=rng.standard_normal((5, 4)), cov=np.tile(np.eye(2), (5, 1, 1)),
                              t0=1.0, dt=0.01, u_min=-np.ones(2), u_max=np.ones(2))
    kind, fields = encode_policy(lg)
    assert kind == "linear_gaussian"
    assert all(isinstance(v, (np.ndarray, float)) for v in fields.values())
    back = decode_policy(kind, fields)
    x = rng.standard_normal(4)
    np.testing.assert_array_equal(back.action(x, 1.02), lg.action(x, 1.02))
    nn = NeuralPolicy((rng.standard_normal((3, 4)), rng.standard_normal((2, 3))),
                      (np.zeros(3), np.zeros(2)), np.zeros(4), np.ones(4), np.zeros(2),
                      np.ones(2), np.ones(2), -np.ones(2), np.ones(2), t0=2.0, duration=0.5)
    kind, fields = encode_policy(nn)
    back = decode_policy(kind, fields)
    assert kind == "neural" and back.t_end == nn.t_end
    np.testing.assert_array_equal(back.action(x, 2.1), nn.action(x, 2.1))
    with pytest.raises(TypeError, match="cannot be sent"):
        encode_policy(object())


def test_explores_in_this_process_while_the_child_starts():
    """No model yet: while the child starts (seconds: a fresh interpreter), the explorer
    plans in the parent, so the robot explores instead of holding; once the child is
    ready it plans there."""
    from mbrl_ros.core.planners.base import RobotLayout
    from mbrl_ros.core.robot import RobotDescription
    robot = RobotDescription.load("arm2")
    layout = RobotLayout(robot.position_limits, robot.command_index, robot.effective_inertia())
    ilqr, exc = registry.lookup("planner", "ilqr"), registry.lookup("planner", "excitation")
    settings = {"a": ("ilqr", ilqr.Settings(max_iterations=1)),
                "x": ("excitation", exc.Settings())}
    p = PlanProcess("arm2", 0.01, ROBOT.joint_names, lambda: settings,
                    planner_ids=["a", "x"], active="a", fallback="x", horizon=20,
                    effort_limits=ROBOT.effort_limits, position_limits=ROBOT.position_limits,
                    cost_settings=CostSettings(), continuous=ROBOT.continuous, layout=layout,
                    effort_rate=200.0)
    p.start()
    try:
        assert p._child is not None and not p._child.ready.done()    # still starting
        tic = time.monotonic()
        pol = p.replan(X0, 0.0, 0.0, (np.zeros(2), -0.01))
        assert time.monotonic() - tic < 1.0 and p.stats.get("planned_here")
        assert p.stats["exploring"] and p.stats["planner"] == "x"
        u = pol.action(X0, 0.0)
        assert np.all(np.isfinite(u)) and np.all(np.abs(u) <= ROBOT.effort_limits)
        assert np.abs(u).max() > 0.1                      # it excites, not a zero hold
        assert wait_until(lambda: p._child.ready.done(), 60)
        p.replan(X0, 0.01)
        assert "planned_here" not in p.stats and p.stats["exploring"]    # the child's plan
    finally:
        p.stop()
