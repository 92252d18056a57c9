"""Sampling MPC when replans are slow (issue 15, item 4): a loaded machine makes each replan
take several control periods. Emulated in lockstep (``run_episode(plan_delay=...)``: a plan
from the state at step k takes over at step k + delay, with the node's latency
compensation), so the result is deterministic and does not depend on the machine's load.

With the default ``refine: newton`` MPPI moves its plan by a Newton step per replan and
reaches a new target as quickly as with fast replans; the sampling update alone moves the
plan by about one noise scale per replan and needs several times as long
(bench/results/contention-2026-12-07-s7.md)."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.control.closed_loop import run_episode
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.sim.env import MujocoSim

pytestmark = pytest.mark.timeout(900)

A, B = np.array([0.5, -0.5]), np.array([-0.3, 0.6])
DELAY = 10            # control periods per replan: a 100 ms solve at 100 Hz


def _after_target_change(settings: dict) -> np.ndarray:
    """End-effector distance [cm] to B at every control step after the change A -> B."""
    pytest.importorskip("mbrl_ros.core.models.mujoco_model",
                        reason="MuJoCo dynamics model not available")
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    cls = registry.lookup("planner", "mppi")
    s = cls.Settings(horizon=30, **settings)
    sim = MujocoSim("arm2", control_period=0.01, seed=1, initial_noise=0.05)
    sim.reset()
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), ["mppi"],
                        "mppi", 30, sim.effort_limits, sim.position_limits, CostSettings())
    mpc.set_model(MujocoModel.from_sim("arm2", control_period=0.01))
    mpc.set_target(A)
    run_episode(sim, mpc, 150, replan_every=DELAY, plan_delay=DELAY, compensate=True)
    mpc.set_target(B)
    res = run_episode(sim, mpc, 300, replan_every=DELAY, plan_delay=DELAY, compensate=True)
    fk = MujocoSim("arm2")

    def ee(q):
        fk.set_state(q, np.zeros(2))
        return fk.ee_position()
    goal = ee(B)
    return np.array([100 * np.linalg.norm(ee(x[:2]) - goal) for x in res.xs[1:]])


def test_default_mppi_reaches_a_new_target_with_slow_replans_where_sampling_alone_lags():
    # Measured (this set-up): default reaches < 2 cm 0.64 s after the change and holds
    # 0.0 cm; refine 'none' only after 2.8 s (5.8 cm within the last 0.5 s).
    default = _after_target_change({})
    assert default[150:].max() < 2.0, np.round(default[::25], 2)      # within 1.5 s
    assert default[-100:].max() < 0.5, np.round(default[-100::10], 3)
    alone = _after_target_change({"refine": "none"})
    assert alone[150:].max() > 2.0, np.round(alone[::25], 2)
