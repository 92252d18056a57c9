"""Each planner closes the loop on the simulator with the known (MuJoCo) model."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.core.models.mujoco_model import MujocoModel
from mbrl_ros.core.settings import from_mapping
from mbrl_ros.core.control.closed_loop import run_episode
from mbrl_ros.sim.env import MujocoSim

# Small budgets keep the test quick; the benchmarks run the full settings.
SETTINGS = {"ilqr": {"max_iterations": 2}, "casadi_mpc": {},
            "mppi": {"samples": 128, "seed": 1},
            "cem": {"population": 64, "iterations": 3, "n_particles": 1, "seed": 1}}


def make_mpc(planner, sim, horizon, cost=CostSettings(), **extra):
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {**SETTINGS[planner], **extra})
    return MPCController(lambda pid, nx, nu, lo, hi, dt: cls(s, nx, nu, lo, hi, dt),
                         [planner], planner, horizon, sim.effort_limits,
                         sim.position_limits, cost)


@pytest.mark.parametrize("planner", ["ilqr", "casadi_mpc", "mppi", "cem"])
def test_planner_drives_arm2_to_the_target(planner):
    sim = MujocoSim("arm2", control_period=0.02)
    mpc = make_mpc(planner, sim, 20)
    mpc.set_model(MujocoModel.from_sim("arm2", control_period=0.02))
    target = np.array([0.5, -0.5])
    mpc.set_target(target)
    res = run_episode(sim, mpc, 75, replan_every=1 if planner in ("ilqr", "casadi_mpc") else 3)
    assert np.all(np.abs(res.us) <= sim.effort_limits + 1e-9)
    # sampling planners are coarser than the gradient-based ones
    tol = 0.02 if planner in ("ilqr", "casadi_mpc") else 0.1
    assert res.final_joint_error(target) < tol, res.xs[-1]


def test_ilqr_swings_the_cartpole_up():
    sim = MujocoSim("cartpole", control_period=0.02)       # starts hanging down
    mpc = make_mpc("ilqr", sim, 75, max_iterations=3)
    mpc.set_model(MujocoModel.from_sim("cartpole", control_period=0.02))
    mpc.set_target(np.array([0.0, 0.0]))                   # cart centred, pole upright
    res = run_episode(sim, mpc, 170)                        # swing-up settles by ~3 s
    pole = (res.xs[:, 1] + np.pi) % (2 * np.pi) - np.pi
    assert abs(res.xs[0, 1] - np.pi) < 1e-9                # it really started hanging
    assert np.abs(pole[-10:]).max() < 0.2, "pole not upright at the end"
    assert np.all(np.abs(res.xs[:, 0]) < 1.8)              # cart stayed on its rail


@pytest.mark.parametrize("compensate", [False, True])
def test_plan_delay_emulates_a_solve_time(compensate):
    """A plan from step k takes over at k + plan_delay; with compensation it was started
    from the state predicted for then (and is dated then)."""
    sim = MujocoSim("arm2", control_period=0.01)
    mpc = make_mpc("ilqr", sim, 20)
    mpc.set_model(MujocoModel.from_sim("arm2", control_period=0.01))
    mpc.set_target(np.array([0.5, -0.5]))
    policies = []
    replan = mpc.replan
    mpc.replan = lambda x, t, lookahead=0.0, last=None: policies.append(
        (t, replan(x, t, lookahead, last))) or policies[-1][1]
    res = run_episode(sim, mpc, 40, replan_every=5, plan_delay=4, compensate=compensate)
    assert len(res.replan_s) == 8                         # steps 0, 5, ..., 35
    assert mpc.stats["lookahead_steps"] == (4 if compensate else 0)
    t, last = policies[-1]
    assert last.t0 == pytest.approx(t + (0.04 if compensate else 0.0))
    # Each plan acted from 4 steps after its state: the actions at those steps are its own.
    t_first_use = t + 0.04
    k = int(round((t_first_use - policies[0][0]) / 0.01))
    np.testing.assert_allclose(res.us[k], last.action(res.xs[k], t_first_use), atol=1e-12)
    np.testing.assert_allclose(res.us[0], policies[0][1].action(res.xs[0], 0.0), atol=1e-12)
