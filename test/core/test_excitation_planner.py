"""The 'excitation' planner: exploration without a model behind the planner interface,
and the MPC controller exploring with it until its first model (issue 12)."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.planners.base import RobotLayout
from mbrl_ros.core.planners.excitation import ExcitationPlanner, ExcitationPlannerSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.sim.env import MujocoSim

DT = 0.01


def layout(sim):
    return RobotLayout(sim.position_limits, sim.command_index, sim.effective_inertia())


def planner(robot="arm2", scale=1.0, **settings):
    sim = MujocoSim(robot)
    u = scale * sim.effort_limits
    p = ExcitationPlanner(ExcitationPlannerSettings(**settings), 2 * sim.n_joints,
                          sim.n_commands, -u, u, DT)
    p.set_robot(layout(sim))
    return p, sim


def factory(pid, nx, nu, u_min, u_max, dt):
    cls = registry.lookup("planner", pid)
    return cls(cls.Settings(), nx, nu, u_min, u_max, dt)


def test_registered_and_model_free():
    assert registry.lookup("planner", "excitation") is ExcitationPlanner
    assert ExcitationPlanner.needs_model is False
    assert registry.lookup("planner", "ilqr").needs_model is True


@pytest.mark.parametrize("robot", ["arm2", "arm7", "cartpole"])
def test_commands_bounded_without_a_model_even_for_wild_states(robot):
    p, sim = planner(robot, scale=0.5)
    rng = np.random.default_rng(1)
    for i in range(50):
        x = rng.normal(0.0, 50.0, size=2 * sim.n_joints)
        pol = p.optimize(x, i * 0.02, None, None)
        assert isinstance(pol, LinearGaussianPolicy)
        for j in range(5):
            u = pol.action(x + rng.normal(size=x.size), i * 0.02 + j * DT)
            assert np.all(np.isfinite(u)) and np.all(np.abs(u) <= 0.5 * sim.effort_limits + 1e-12)
    assert p.nominal is None            # nothing to warm-start another planner from


def test_plan_is_the_excitation_policy_and_overlapping_plans_agree():
    """The plan equals the PD-plus-noise law with the policy's gains; a replan two steps
    later repeats the shared steps exactly (one continuous excitation stream)."""
    p, sim = planner("arm2", noise_std=0.2)
    x = np.array([0.3, -0.2, 0.5, 1.0])
    a = p.optimize(x, 1.00, None, None)
    b = p.optimize(x, 1.02, None, None)
    for k in range(2, 10):
        t = 1.0 + k * DT + 1e-6
        np.testing.assert_allclose(a.action(x, t), b.action(x, t), atol=1e-12)
    # u = noise - kp (q - target) - kd qd at every step
    ref = p._policy
    np.testing.assert_allclose(a.K[0, :, :2], -np.diag(ref.kp))
    np.testing.assert_allclose(a.K[0, :, 2:], -np.diag(ref.kd))
    assert np.any(a.k != 0.0) and np.ptp(a.k, axis=0).max() > 0    # noise varies over time


def test_excites_the_arm_across_its_range():
    """Closed loop on arm2 (MuJoCo, replanning every 2 steps): both joints sweep."""
    p, sim = planner("arm2")
    qs = []
    t = 0.0
    for k in range(1000):
        x = sim.state()
        if k % 2 == 0:
            pol = p.optimize(x, t, None, None)
        sim.step(pol.action(x, t))
        t += DT
        qs.append(sim.positions().copy())
    qs = np.array(qs)
    span = sim.position_limits[:, 1] - sim.position_limits[:, 0]
    span = np.where(np.isfinite(span), span, 2 * np.pi)
    assert np.all(np.ptp(qs, axis=0) > 0.3 * span)


def test_needs_the_robot_layout():
    sim = MujocoSim("arm2")
    p = ExcitationPlanner(None, 4, 2, -sim.effort_limits, sim.effort_limits, DT)
    with pytest.raises(ValueError, match="set_robot"):
        p.optimize(np.zeros(4), 0.0, None, None)
    with pytest.raises(ValueError, match="layout"):
        p.set_robot(layout(MujocoSim("arm7")))


def test_mpc_explores_until_the_first_model_then_plans_with_it():
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    sim = MujocoSim("arm2")
    ids = ["ilqr", "excitation"]
    holding = MPCController(factory, ids, "ilqr", 20, sim.effort_limits, sim.position_limits,
                            CostSettings())       # no layout: holds without a model, as before
    assert not holding.ready and holding.explorer() is None
    mpc = MPCController(factory, ids, "ilqr", 20, sim.effort_limits, sim.position_limits,
                        CostSettings(), fallback="excitation", robot=layout(sim),
                        control_period=DT)
    assert mpc.ready and mpc.explorer() == "excitation"
    pol = mpc.replan(sim.state(), 0.0)
    assert mpc.stats["exploring"] and mpc.stats["planner"] == "excitation"
    assert np.any(pol.action(sim.state(), 0.0) != 0.0)
    mpc.set_model(MujocoModel.from_sim("arm2", control_period=DT), 1)
    mpc.set_target(np.array([0.5, -0.5]))
    mpc.replan(sim.state(), 0.02)
    assert not mpc.stats["exploring"] and mpc.stats["planner"] == "ilqr"
    # No model and no model-free planner: not ready, and replan says why.
    only = MPCController(factory, ["ilqr"], "ilqr", 20, sim.effort_limits,
                         sim.position_limits, CostSettings(), robot=layout(sim),
                         control_period=DT)
    assert not only.ready
    with pytest.raises(ModelError, match="no model"):
        only.replan(sim.state(), 0.0)


def test_non_finite_plan_falls_back_to_exploration_or_fails_the_replan():
    """A poor early model can make a planner diverge: its NaN plan is never handed out
    (the actuator would latch on it); the model-free fallback plans instead, and without
    a fallback the replan fails (the controller keeps its previous plan)."""
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    from mbrl_ros.core.planners.base import Planner

    class Diverging(Planner):
        Settings = ExcitationPlannerSettings       # any settings with a horizon

        def optimize(self, x0, t0, model, cost):
            T = self.horizon
            return LinearGaussianPolicy(K=np.zeros((T, self.nu, self.nx)),
                                        k=np.full((T, self.nu), np.nan),
                                        xbar=np.zeros((T, self.nx)), cov=None, t0=t0,
                                        dt=self.dt, u_min=self.u_min, u_max=self.u_max)

    def fac(pid, nx, nu, u_min, u_max, dt):
        if pid == "diverging":
            return Diverging(None, nx, nu, u_min, u_max, dt)
        return factory(pid, nx, nu, u_min, u_max, dt)

    sim = MujocoSim("arm2")
    for fallback in ("excitation", ""):
        mpc = MPCController(fac, ["diverging", "excitation"], "diverging", 20,
                            sim.effort_limits, sim.position_limits, CostSettings(),
                            fallback=fallback, robot=layout(sim), control_period=DT)
        mpc.set_model(MujocoModel.from_sim("arm2", control_period=DT), 1)
        mpc.set_target(np.array([0.5, -0.5]))
        if fallback:
            pol = mpc.replan(sim.state(), 0.0)
            assert mpc.stats["fallback"] and mpc.stats["exploring"]
            assert np.all(np.isfinite(pol.action(sim.state(), 0.0)))
        else:
            with pytest.raises(ModelError, match="non-finite plan"):
                mpc.replan(sim.state(), 0.0)
