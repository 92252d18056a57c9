"""Planning within the command path's effort rate (the safety filter's max_effort_rate).

A plan that assumes efforts can jump is delayed by the rate limit, and the delayed loop can
oscillate: iLQR on arm7 diverged behind 500-1000 N·m/s even on the known model
(bench/results/arm7-live-2026-12-07-s7.md). Given the rate and the last applied command,
every planner keeps its plan within what the rate lets the robot reach."""
import numpy as np
import pytest

from analytic_models import Pendulum
from mbrl_ros.core import registry
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings

DT = 0.05
LIMIT = 5.0
RATE = 20.0              # per s: 1.0 per step of 0.05 s


def _planner(kind, **kw):
    cls = registry.lookup("planner", kind)
    defaults = {"ilqr": {}, "mppi": {"samples": 64}, "cem": {"population": 32, "iterations": 2},
                "casadi_mpc": {}}[kind]
    return cls(cls.Settings(horizon=20, **{**defaults, **kw}), 2, 1, -LIMIT, LIMIT, DT)


def _swing_up():
    # far from the target: every planner wants the full effort at once
    return QuadraticCost.diagonal([10.0, 0.1], [1e-3], qf=[100.0, 1.0],
                                  x_target=np.array([np.pi, 0.0]))


def test_action_bounds_widen_from_the_last_action_within_the_limits():
    p = ILQRPlanner(ILQRSettings(horizon=5), 2, 1, -10.0, 10.0, 0.1)
    lo, hi = p.action_bounds(0.0)
    assert np.all(lo == -10.0) and np.all(hi == 10.0)           # no rate: the limits
    p.set_effort_rate(50.0)
    lo, hi = p.action_bounds(0.0)
    assert np.all(lo == -10.0) and np.all(hi == 10.0)           # no last action yet
    p.set_last_action(np.array([2.0]), -0.1)     # applied one step before t0
    lo, hi = p.action_bounds(0.0)
    np.testing.assert_allclose(lo[:, 0], [-3.0, -8.0, -10.0, -10.0, -10.0])
    np.testing.assert_allclose(hi[:, 0], [7.0, 10.0, 10.0, 10.0, 10.0])
    # a plan that starts later (latency compensation) may have moved further
    lo, hi = p.action_bounds(0.1)
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [-8.0, 10.0])
    # at least one step's change even when the last action is stamped at t0 itself
    lo, hi = p.action_bounds(-0.1)
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [-3.0, 7.0])
    # a last action beyond the limits (a lowered effort_scale): the limit it is beyond
    p.set_last_action(np.array([12.0]), -0.1)
    lo, hi = p.action_bounds(0.0)
    assert lo[0, 0] == 7.0 and hi[0, 0] == 10.0 and np.all(lo <= hi)
    p.set_effort_rate(0.0)                                       # 0: none
    assert p.effort_rate is None and np.all(p.action_bounds(0.0)[1] == 10.0)
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="effort rate"):
            p.set_effort_rate(bad)
    with pytest.raises(ValueError, match="last action"):
        p.set_last_action(np.array([1.0, 2.0]), 0.0)
    with pytest.raises(ValueError, match="last action"):
        p.set_last_action(np.array([np.nan]), 0.0)


@pytest.mark.parametrize("kind", ["ilqr", "mppi", "cem", "casadi_mpc"])
def test_every_planner_plans_within_the_rate_from_the_last_action(kind):
    model, cost, x0 = Pendulum(DT), _swing_up(), np.zeros(2)
    free = _planner(kind)
    free.set_effort_rate(RATE)          # a rate without a last action bounds nothing
    u_free = free.optimize(x0, 0.0, model, cost).k
    assert abs(u_free[0, 0]) > 2.0      # unbounded, it asks for more than one step allows

    p = _planner(kind)
    p.set_effort_rate(RATE)
    last = np.array([-0.5])
    p.set_last_action(last, -DT)
    pol = p.optimize(x0, 0.0, model, cost)
    reach = RATE * DT * np.arange(1, 21)
    assert np.all(np.abs(pol.k[:, 0] - last[0]) <= reach + 1e-9), pol.k[:5, 0]
    assert pol.k[0, 0] == pytest.approx(last[0] + RATE * DT, abs=1e-6)   # the bound binds
    # the nominal is the plan the bounds shaped, and its policy keeps the action limits
    assert np.allclose(p.nominal[1], pol.k)
    assert pol.u_min[0] == -LIMIT and pol.u_max[0] == LIMIT


@pytest.mark.parametrize("kind", ["mppi", "cem"])
def test_sampling_plans_follow_the_rate_step_by_step(kind):
    """The sampling planners project every sample onto the rate's chain, so their plan
    changes by at most rate x dt per step all along (not only within the outer box)."""
    model, cost, x0 = Pendulum(DT), _swing_up(), np.zeros(2)
    p = _planner(kind)
    p.set_effort_rate(RATE)
    last = np.array([0.3])
    for k in range(3):                               # warm-started replans too
        p.set_last_action(last, (k - 1) * DT)
        pol = p.optimize(x0, k * DT, model, cost)
        steps = np.abs(np.diff(np.concatenate([last, pol.k[:, 0]])))
        assert steps.max() <= RATE * DT + 1e-6, steps
        assert steps.max() == pytest.approx(RATE * DT, abs=1e-6)    # it binds
        last = pol.k[0]


def test_project_rate_follows_the_chain_and_keeps_feasible_sequences():
    p = ILQRPlanner(ILQRSettings(horizon=6), 2, 2, -3.0, 3.0, 0.1)
    U = np.random.default_rng(0).uniform(-5, 5, (4, 6, 2))
    assert np.array_equal(p.project_rate(U, 0.0), np.clip(U, -3, 3))   # no rate: the box
    p.set_effort_rate([10.0, 20.0])                  # 1 and 2 per step
    p.set_last_action(np.array([0.5, -0.5]), -0.1)
    U0 = U.copy()
    P = p.project_rate(U, 0.0)
    assert np.array_equal(U, U0)                            # the input is not modified
    steps = np.abs(np.diff(np.concatenate([np.broadcast_to([0.5, -0.5], (4, 1, 2)), P],
                                          axis=1), axis=1))
    assert np.all(steps <= np.array([1.0, 2.0]) + 1e-12) and np.all(np.abs(P) <= 3.0)
    assert np.array_equal(p.project_rate(P, 0.0), P)        # feasible: unchanged
