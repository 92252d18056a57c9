"""Sampling MPC on arm2 with learned models holds the target without a steady-state offset
(issue 15, item 3). Lockstep (no wall clock, no deadline: the planners do the same work
every replan), seeded: the result does not depend on the machine's load."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.control.closed_loop import run_episode, simulate_excitation
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.core.settings import from_mapping
from mbrl_ros.sim.env import MujocoSim

# Two small fits and four 2-s episodes (a 64-sample GP rollout per step): about a minute on
# an idle core, many on a loaded machine.
pytestmark = pytest.mark.timeout(1500)

TARGET = np.array([0.5, -0.5])
STEPS = 200
# The largest end-effector distance over the last 0.5 s, with the planners' default settings
# (refine 'newton'). Measured (last 1 s, same set-up): 0.16 cm (GP) and 0.19 cm (ensemble)
# for both planners -- what iLQR gets on the same GP, the model's own bias --; with refine
# 'none' 0.74-1.23 cm at the end; bench/results/sampling-contention-2026-12-07.md.
# Asserted with margin.
HOLD_CM = 0.5



@pytest.fixture(scope="module")
def models():
    from mbrl_ros.core.fitting import FitSettings, fit_model
    data = simulate_excitation("arm2", 5.0, 4)
    out = {}
    for kind, settings in (("gp", {}), ("ensemble", {"epochs": 30})):
        out[kind] = fit_model(data, FitSettings(model=kind, val_fraction=0.1),
                              settings).model
    return out


def _hold_cm(planner: str, model, settings: dict) -> float:
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {"horizon": 30, **settings})
    sim = MujocoSim("arm2", control_period=0.01, seed=1, initial_noise=0.05)
    sim.reset()
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), [planner],
                        planner, 30, sim.effort_limits, sim.position_limits, CostSettings())
    mpc.set_model(model)
    mpc.set_target(TARGET)
    res = run_episode(sim, mpc, STEPS)
    fk = MujocoSim("arm2")

    def ee(q):
        fk.set_state(q, np.zeros(2))
        return fk.ee_position()
    goal = ee(TARGET)
    return 100 * max(float(np.linalg.norm(ee(x[:2]) - goal)) for x in res.xs[-50:])


@pytest.mark.parametrize("kind", ["gp", "ensemble"])
@pytest.mark.parametrize("planner,size", [("mppi", {"samples": 64}),
                                          ("cem", {"population": 64})], ids=["mppi", "cem"])
def test_sampling_mpc_holds_arm2_target_with_a_learned_model(models, kind, planner, size):
    d = _hold_cm(planner, models[kind], size)       # the default refinement
    print(f"{planner} {kind}: held within {d:.3f} cm")
    assert d < HOLD_CM, f"{planner} over the {kind}: {d:.3f} cm from the target"
