"""Safety filter and MPC controller logic (ROS-free)."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.control.mpc import CostSettings, MPCController, joints_of
from mbrl_ros.core.control.safety import SafetyFilter, SafetySettings
from mbrl_ros.core.models.base import ModelError, ModelSpec

LIMITS = np.array([3.0, 2.0])
POS = np.array([[-1.0, 1.0], [-2.0, 2.0]])


def make_filter(**kw):
    return SafetyFilter(SafetySettings(**kw), LIMITS, POS, np.array([0, 1]), 2)


def test_clamp_and_rate_limit():
    f = make_filter(max_effort_rate=100.0)
    x = np.zeros(4)
    u = f(np.array([10.0, -10.0]), x, 0.01)           # clamp to ±limits, then 1 N·m/step
    np.testing.assert_allclose(u, [1.0, -1.0])
    for _ in range(10):
        u = f(np.array([10.0, -10.0]), x, 0.01)
    np.testing.assert_allclose(u, [3.0, -2.0])
    f2 = make_filter(effort_scale=0.5, max_effort_rate=0.0)
    np.testing.assert_allclose(f2(np.array([10.0, 10.0]), x, 0.01), [1.5, 1.0])


def test_joint_limit_guard_removes_outward_effort_and_brakes():
    f = make_filter(max_effort_rate=0.0, joint_limit_margin=0.1, limit_damping=2.0)
    x = np.array([0.95, 0.0, 0.5, 0.0])                # joint 0 near its upper limit, moving up
    u = f(np.array([2.0, 1.0]), x, 0.01)
    assert u[0] == pytest.approx(-1.0)                 # outward effort removed, braking
    assert u[1] == pytest.approx(1.0)                  # joint 1 untouched
    x = np.array([0.95, 0.0, -0.5, 0.0])               # already moving away: no brake
    assert f(np.array([2.0, 1.0]), x, 0.01)[0] == pytest.approx(0.0)
    assert f(np.array([-2.0, 1.0]), x, 0.01)[0] == pytest.approx(-2.0)


def test_hold_modes():
    x = np.array([0.0, 0.0, 1.0, -0.5])
    np.testing.assert_allclose(make_filter(hold_damping=2.0).hold(x), [-2.0, 1.0])
    np.testing.assert_allclose(make_filter(hold_mode="zero").hold(x), [0.0, 0.0])
    np.testing.assert_allclose(make_filter().hold(np.full(4, np.nan)), [0.0, 0.0])
    np.testing.assert_allclose(make_filter().hold(None), [0.0, 0.0])


@pytest.mark.parametrize("delay", [0, 1])
def test_hold_damps_arm2_in_a_sampled_loop(delay):
    """The safe hold on the real arm2 (MuJoCo), command computed once per 10 ms period from
    the state ``delay`` periods old (1: a timer-driven loop): the motion dies out. Without
    the per-joint cap, 2 N·m·s/rad on the elbow (0.0097 kg·m²) is b dt / I = 2.06 and the
    hold oscillates at full torque (it did in the hostile-state node test)."""
    from mbrl_ros.core.robot import RobotDescription
    from mbrl_ros.sim.env import MujocoSim

    sim = MujocoSim("arm2", control_period=0.01)
    idx = np.arange(2)
    f = SafetyFilter.for_robot(SafetySettings(hold_damping=2.0),
                               RobotDescription.load("arm2"), 0.01)
    np.testing.assert_array_equal(f.index, idx)
    np.testing.assert_array_equal(f.position_limits, sim.position_limits)
    assert f.damping_cap[1] < 2.0                       # the elbow's gain is capped
    sim.set_state([0.5, -0.5], [1.0, -2.0])
    states = [sim.state()] * (delay + 1)
    for _ in range(100):                                # 1 s
        u = f.rate_limit(f.hold(states[-1 - delay]), 0.01)
        sim.step(u)
        states.append(sim.state())
    assert np.abs(sim.velocities()).max() < 0.05        # rad/s: damped, not oscillating
    uncapped = SafetyFilter(SafetySettings(hold_damping=2.0), sim.effort_limits,
                            sim.position_limits, idx, 2)
    assert uncapped.hold(np.array([0.0, 0.0, 0.0, 1.0]))[1] == -2.0   # no cap without inertia


class DoubleIntegrator:
    """x = [q, qd] per joint, u = effort; exact discrete model."""
    kind, time_varying = "toy", False

    def __init__(self, n=2, dt=0.01, names=("a", "b")):
        self.n, self.dt = n, dt
        self.spec = ModelSpec(2 * n, n, tuple(f"{j}/position" for j in names)
                              + tuple(f"{j}/velocity" for j in names), tuple(names), dt)

    def predict(self, x, u, t=None):
        x, u = np.atleast_2d(x), np.atleast_2d(u)
        q, qd = x[:, :self.n], x[:, self.n:]
        qd2 = qd + self.dt * u
        return np.concatenate([q + self.dt * qd2, qd2], axis=1), None

    def linearize(self, xs, us):
        from mbrl_ros.core.models.base import finite_difference_linearization
        return finite_difference_linearization(lambda x, u: self.predict(x, u)[0], xs, us)


def make_mpc(ids=("ilqr", "ilqr_b"), active="ilqr", **kw):
    cls = registry.lookup("planner", "ilqr")

    def factory(pid, nx, nu, u_min, u_max, dt):
        return cls(cls.Settings(max_iterations=2), nx, nu, u_min, u_max, dt)
    return MPCController(factory, list(ids), active, 20, LIMITS, POS, CostSettings(), **kw)


def test_unknown_planner_rejected_with_list():
    with pytest.raises(ValueError, match="planner_plugins: ilqr"):
        make_mpc(ids=("ilqr",), active="mppi")
    mpc = make_mpc()
    with pytest.raises(ValueError, match="valid: ilqr, ilqr_b"):
        mpc.select("cem")


def test_mpc_reaches_target_and_switch_is_warm_started():
    mpc = make_mpc()
    model = DoubleIntegrator()
    mpc.set_model(model, 1)
    mpc.set_target(np.array([0.5, -0.5]))
    x, t = np.zeros(4), 0.0
    us = []
    for k in range(150):
        if k == 60:
            mpc.select("ilqr_b")
        policy = mpc.replan(x, t)
        u = policy.action(x, t)
        us.append(u)
        x = model.predict(x, u)[0][0]
        t += 0.01
        if k == 60:
            assert mpc.stats["switched"] == ("ilqr", "ilqr_b")
            assert mpc.active == "ilqr_b"
    np.testing.assert_allclose(x[:2], [0.5, -0.5], atol=0.02)
    jump = np.abs(np.diff(np.array(us), axis=0))
    assert jump[59:62].max() < 0.5, "switch made the command jump"


def test_latency_compensation_plans_from_the_predicted_state():
    mpc = make_mpc()
    model = DoubleIntegrator()
    mpc.set_model(model, 1)
    mpc.set_target(np.array([0.5, -0.5]))
    x0 = np.zeros(4)
    first = mpc.replan(x0, 0.0, lookahead=0.03)      # no current policy: plans from x0
    assert mpc.stats["lookahead_steps"] == 0 and first.t0 == 0.0
    # 0.034 s ahead = 3 model steps (0.01 s) under the current policy, mean prediction.
    x, t = x0.copy(), 0.0
    for _ in range(3):
        x = model.predict(x, first.action(x, t))[0][0]
        t += 0.01
    second = mpc.replan(x0, 0.0, lookahead=0.034)
    assert mpc.stats["lookahead_steps"] == 3
    assert second.t0 == pytest.approx(0.03)
    np.testing.assert_allclose(second.xbar[0], x, atol=1e-12)
    # Beyond the horizon it is capped; a non-finite prediction plans from the measurement.
    mpc.replan(x0, 0.0, lookahead=10.0)
    assert mpc.stats["lookahead_steps"] == mpc.horizon
    model.predict = lambda x, u, t=None: (np.full((1, 4), np.nan), None)
    xp, tp, steps, last = mpc._predict_ahead(x0, 0.0, 0.03)
    assert steps == 0 and tp == 0.0 and xp is x0 and last is None


def test_latency_compensation_bounds_the_plan_from_the_predicted_command():
    """With an effort rate, the commands predicted for the lookahead are rate-limited
    from the last one sent, and the new plan's first action is bounded from the last of
    them -- the command the robot will have when the plan takes over."""
    rate = 20.0                                      # 0.2 per 0.01 s step
    mpc = make_mpc()
    model = DoubleIntegrator()
    mpc.set_model(model, 1)
    mpc.set_effort_rate(rate)
    mpc.set_target(np.array([0.5, -0.5]))
    x0 = np.zeros(4)
    last = (np.zeros(2), -0.01)
    first = mpc.replan(x0, 0.0, 0.0, last)
    assert np.all(np.abs(first.k[0]) <= rate * 0.01 + 1e-9)
    # two steps ahead: the current policy's commands, rate-limited as the filter will
    x, t, lp = x0.copy(), 0.0, last
    for _ in range(2):
        u = np.clip(first.action(x, t), lp[0] - rate * 0.01, lp[0] + rate * 0.01)
        x, lp, t = model.predict(x, u)[0][0], (u, t), t + 0.01
    second = mpc.replan(x0, 0.0, 0.02, last)
    assert mpc.stats["lookahead_steps"] == 2
    planner = mpc.planners[mpc.active]
    np.testing.assert_allclose(planner._last_action[0], lp[0], atol=1e-12)
    assert planner._last_action[1] == pytest.approx(0.01)
    step = np.abs(second.k[0] - lp[0])
    assert np.all(step <= rate * 0.01 + 1e-9) and step.max() == pytest.approx(rate * 0.01)
    # the command for the measured state itself may be sent already (the node's control
    # thread runs between the state and the replan): it is the first predicted command
    sent = (np.array([0.05, -0.05]), 0.0)
    mpc.replan(x0, 0.0, 0.0, sent)
    xp, tp, steps, out = mpc._predict_ahead(x0, 0.0, 0.01, sent)
    assert steps == 1 and out[1] == 0.0 and np.array_equal(out[0], sent[0])
    np.testing.assert_allclose(xp, model.predict(x0, sent[0])[0][0])
    # without a rate the predicted commands are the policy's, unlimited
    mpc.set_effort_rate(0.0)
    xp, tp, steps, out = mpc._predict_ahead(x0, 0.0, 0.02, last)
    assert steps == 2 and out[1] == pytest.approx(0.01)


def test_model_for_other_joints_is_refused():
    mpc = make_mpc()
    mpc.set_model(DoubleIntegrator(), 1)
    with pytest.raises(ModelError, match="names differ"):
        mpc.set_model(DoubleIntegrator(names=("x", "y")), 2)
    assert mpc.model_version == 1
    assert joints_of(DoubleIntegrator().spec) == ("a", "b")


def test_uncertainty_triggers_fallback():
    class Uncertain(DoubleIntegrator):
        def predict(self, x, u, t=None):
            mean, _ = super().predict(x, u)
            return mean, np.full_like(mean, 4.0)      # std 2 everywhere
    mpc = make_mpc(fallback="ilqr_b", uncertainty_threshold=1.0)
    mpc.set_model(Uncertain(), 1)
    mpc.set_target(np.zeros(2))
    mpc.replan(np.zeros(4), 0.0)
    assert mpc.stats["fallback"] and mpc.stats["planner"] == "ilqr_b"
    assert mpc.stats["uncertainty"] == pytest.approx(2.0)
