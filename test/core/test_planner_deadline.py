"""Planners under a deadline (issue 15, item 4): the sampling planners' sample budget from
measured solve times, iLQR's iteration cut-off, and the controller passing the deadline on.
Clock-free where the logic is tested (injected solve times), so a busy machine changes
nothing."""
import numpy as np
import pytest

from analytic_models import AnalyticModel as _Analytic
from analytic_models import spec_for as _spec
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import check_xu
from mbrl_ros.core.planners.base import Planner
from mbrl_ros.core.planners.cem import CEMPlanner, CEMSettings
from mbrl_ros.core.planners.ilqr.planner import ILQRPlanner
from mbrl_ros.core.planners.ilqr.settings import ILQRSettings
from mbrl_ros.core.planners.mppi import MPPIPlanner, MPPISettings
from mbrl_ros.core.planners.sampling import SampleBudget



class DoubleIntegrator(_Analytic):
    def __init__(self, dt=0.1):
        super().__init__({}, _spec(2, 1, dt))
        self.dt = dt

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        v = x[:, 1] + self.dt * u[:, 0]
        return np.stack([x[:, 0] + self.dt * v, v], axis=1), None


def _cost():
    return QuadraticCost.diagonal([10.0, 1.0], [0.01], [100.0, 10.0],
                                  x_target=np.array([1.0, 0.0]))


# ------------------------------------------------------------------ SampleBudget (no clock)
def test_budget_cuts_samples_at_once_when_a_replan_is_late_and_restores_them_gradually():
    b = SampleBudget(n_max=256, n_min=32, fraction=0.8, growth=1.5)
    assert b.n == 256
    # 256 samples took 50 ms, 40 of them in the sampled rollouts, against a 20 ms deadline:
    # fixed 10 ms, 0.15625 ms per sample -> (16 - 10) / 0.15625 = 38 samples fit.
    assert b.update(256, 0.050, 0.040, 0.020) == 38
    # Still slow (the machine is busy): the floor holds.
    assert b.update(38, 0.040, 0.030, 0.020) == 32
    # The load is gone: 1 ms fixed + 0.03 ms per sample (500 would fit into 16 ms);
    # growth by at most 1.5x per replan, up to the configured count.
    counts = [b.update(b.n, 0.001 + 3e-5 * b.n, 3e-5 * b.n, 0.020)]
    while counts[-1] < 256 and len(counts) < 20:
        n = counts[-1]
        counts.append(b.update(n, 0.001 + 3e-5 * n, 3e-5 * n, 0.020))
    assert counts[0] == 48
    assert all(c2 <= int(1.5 * c1) for c1, c2 in zip(counts, counts[1:]))
    assert counts[-1] == 256 and len(counts) <= 6


def test_budget_keeps_what_fits_and_ignores_nonsense_times():
    b = SampleBudget(n_max=128, n_min=16, fraction=0.5)
    # 128 samples in 5 ms of a 20 ms deadline (aim 10 ms): stays at the configured count.
    assert b.update(128, 0.005, 0.004, 0.020) == 128
    for bad in [(0.0, 0.0), (float("nan"), 0.001), (0.01, float("inf")), (-1.0, 0.1)]:
        assert b.update(128, *bad, 0.020) == 128
    # Fixed work alone beyond the deadline: the floor, not zero or negative.
    assert b.update(128, 0.100, 0.001, 0.020) == 16
    b.configure(n_max=8, n_min=16, fraction=0.5)       # floor above the maximum: the max
    assert b.n == 8
    with pytest.raises(ValueError):
        SampleBudget(0, 1)
    with pytest.raises(ValueError):
        SampleBudget(10, 1, fraction=0.0)


# ------------------------------------------------------------------ planners, injected times
class _Clock:
    """perf_counter stand-in: every call advances by ``step`` seconds (so every measured
    interval is a known multiple of it)."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


@pytest.mark.parametrize("kind", ["mppi", "cem"])
def test_sampling_planner_samples_fewer_when_late_and_the_full_count_without_deadline(
        kind, monkeypatch):
    import mbrl_ros.core.planners.sampling.planner as sampling
    if kind == "mppi":
        p = MPPIPlanner(MPPISettings(horizon=10, samples=200, min_samples=20), 2, 1,
                        -np.ones(1), np.ones(1), 0.1)
    else:
        p = CEMPlanner(CEMSettings(horizon=10, population=200, min_samples=20), 2, 1,
                       -np.ones(1), np.ones(1), 0.1)
    model, cost = DoubleIntegrator(), _cost()
    x = np.zeros(2)
    # No deadline: the configured count, whatever the clock says.
    monkeypatch.setattr(sampling.time, "perf_counter", _Clock(1.0))   # 1 s per reading
    p.optimize(x, 0.0, model, cost)
    assert p.stats["samples"] == 200 and "samples_next" not in p.stats
    # A deadline far below the (fake) solve times: the next replan samples the floor.
    p.set_deadline(0.5)
    p.optimize(x, 0.1, model, cost)
    assert p.stats["samples"] == 200 and p.stats["samples_next"] == 20
    p.optimize(x, 0.2, model, cost)
    assert p.stats["samples"] == 20
    # Time enough again: back up by at most 1.5x per replan, to the configured count.
    monkeypatch.setattr(sampling.time, "perf_counter", _Clock(1e-6))
    seen = []
    for k in range(10):
        p.optimize(x, 0.3 + 0.1 * k, model, cost)
        seen.append(p.stats["samples"])
    assert seen[0] == 20 and seen[1] == 30 and seen[-1] == 200
    assert all(b <= int(1.5 * a) for a, b in zip(seen, seen[1:]))
    # adapt_samples off: the configured count even with a deadline.
    import dataclasses
    p.settings = dataclasses.replace(p.settings, adapt_samples=False)
    monkeypatch.setattr(sampling.time, "perf_counter", _Clock(1.0))
    p.optimize(x, 1.5, model, cost)
    p.optimize(x, 1.6, model, cost)
    assert p.stats["samples"] == 200


def test_ilqr_stops_iterating_at_the_deadline(monkeypatch):
    import mbrl_ros.core.planners.base as base
    import mbrl_ros.core.planners.ilqr.planner as ilqr_mod
    p = ILQRPlanner(ILQRSettings(horizon=20, max_iterations=10, tol_cost=0.0, tol_grad=0.0),
                    2, 1, -np.ones(1), np.ones(1), 0.1)
    model, cost = DoubleIntegrator(), _cost()
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["iterations"] >= 2 and p.stats["status"] != "deadline"
    clock = _Clock(0.001)          # every perf_counter reading: +1 ms
    monkeypatch.setattr(ilqr_mod.time, "perf_counter", clock)
    monkeypatch.setattr(base.time, "perf_counter", clock)
    p.reset(20)
    p.set_deadline(1e-6)         # below anything: exactly one iteration
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["iterations"] == 1 and p.stats["status"] == "deadline"
    p.set_deadline(None)
    p.reset(20)
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["iterations"] > 1 and p.stats["status"] != "deadline"


def test_out_of_time_and_bad_deadlines():
    p = ILQRPlanner(ILQRSettings(horizon=5), 2, 1, -np.ones(1), np.ones(1), 0.1)
    assert not p.out_of_time(0.0, 3, now=100.0)            # no deadline
    p.set_deadline(0.010)
    assert not p.out_of_time(0.0, 0, now=1.0)              # at least one round
    assert not p.out_of_time(0.0, 2, now=0.006)            # 6 + 3 ms <= 10 ms
    assert p.out_of_time(0.0, 2, now=0.008)                # 8 + 4 ms > 10 ms
    # rounds after 6 ms of other work: 8 + (8 - 6) / 2 = 9 ms <= 10 ms
    assert not p.out_of_time(0.0, 2, now=0.008, rounds_started=0.006)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            p.set_deadline(bad)
    assert p.deadline == 0.010
    assert isinstance(p, Planner)


def test_controller_gives_its_deadline_to_every_planner_also_after_a_rebuild():
    from mbrl_ros.core.control.mpc import CostSettings, MPCController

    def factory(pid, nx, nu, lo, hi, dt):
        if pid == "mppi":
            return MPPIPlanner(MPPISettings(horizon=5, samples=16), nx, nu, lo, hi, dt)
        return ILQRPlanner(ILQRSettings(horizon=5), nx, nu, lo, hi, dt)
    from mbrl_ros.core.planners.base import RobotLayout
    layout = RobotLayout(np.array([[-3.0, 3.0]]), np.array([0]), np.array([1.0]))
    mpc = MPCController(factory, ["mppi", "ilqr"], "mppi", 5, np.ones(1),
                        np.array([[-3.0, 3.0]]), CostSettings(), robot=layout,
                        control_period=0.1, deadline=0.02)
    assert {p.deadline for p in mpc.planners.values()} == {0.02}
    mpc.rebuild_planners()
    assert {p.deadline for p in mpc.planners.values()} == {0.02}
    mpc.set_deadline(None)
    assert {p.deadline for p in mpc.planners.values()} == {None}
    with pytest.raises(ValueError):
        mpc.set_deadline(-0.1)
    with pytest.raises(ValueError):
        MPCController(factory, ["mppi"], "mppi", 5, np.ones(1), np.array([[-3.0, 3.0]]),
                      CostSettings(), deadline=float("nan"))


class _WorkClock:
    """A clock that only the model's work advances: ``per_row`` seconds per predicted row
    (the planner's own arithmetic is free), so a replan's measured time is known exactly
    from the rows it asked the model for."""

    def __init__(self, per_row):
        self.t, self.per_row = 0.0, per_row

    def __call__(self):
        return self.t


class _SlowModel(DoubleIntegrator):
    """The double integrator on a :class:`_WorkClock`: every predicted row costs time."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def predict(self, x, u, t=None):
        out = super().predict(x, u, t)
        self.clock.t += self.clock.per_row * out[0].shape[0]
        return out


@pytest.mark.parametrize("kind,feedback", [("mppi", "none"), ("cem", "none"),
                                           ("mppi", "lqr")])
def test_default_sampling_planner_fits_a_slow_model_into_the_deadline_and_recovers(
        kind, feedback, monkeypatch):
    """The default settings (refine 'newton': fixed work the budget cannot cut) against a
    model that becomes 10x slower and fast again: the sample count shrinks until a replan
    fits the deadline (measured on the clock the model's work drives), without dropping to
    the floor while more fits, and returns to the configured count when the model is fast;
    the Newton step runs in every replan. Also with ``feedback: lqr`` (its gains' timing
    once overwrote the sampled rollouts' start time: the budget then never adapted)."""
    import mbrl_ros.core.planners.sampling.planner as sampling
    clock = _WorkClock(per_row=1e-6)
    monkeypatch.setattr(sampling.time, "perf_counter", clock)
    model, cost = _SlowModel(clock), _cost()
    n_max, n_min, T, deadline = 400, 8, 10, 0.05
    if kind == "mppi":
        p = MPPIPlanner(MPPISettings(horizon=T, samples=n_max, min_samples=n_min,
                                     feedback=feedback), 2, 1, -np.ones(1), np.ones(1), 0.1)
    else:
        p = CEMPlanner(CEMSettings(horizon=T, population=n_max, min_samples=n_min,
                                   feedback=feedback), 2, 1, -np.ones(1), np.ones(1), 0.1)
    assert p.settings.refine == "newton"
    p.set_deadline(deadline)
    x, k = np.zeros(2), 0

    def replans(n):
        nonlocal k
        out = []
        for _ in range(n):
            start = clock.t
            p.optimize(x, 0.1 * k, model, cost)
            k += 1
            out.append((p.stats["samples"], clock.t - start))
            assert "refine_alpha" in p.stats       # the Newton step is never skipped
        return out

    # Fast model: 400 samples x 10 steps = 4 ms of a 50 ms deadline; the full count.
    assert all(n == n_max for n, _ in replans(5))
    # 10x slower (1e-5 s per row: 400 samples now take 40 ms of sampled rollouts, beside
    # ~3 ms of fixed work): cut at once, then every replan within 0.8 x the deadline.
    clock.per_row = 1e-5
    slow = replans(8)
    assert slow[0][0] == n_max and slow[1][0] < n_max
    fits = [(n, dt) for n, dt in slow[2:]]
    assert all(dt <= 0.8 * deadline + 1e-9 for _, dt in fits), fits
    # ... without giving away what fits: within one growth step of the count that fills it
    assert all(n > n_min and 0.8 * deadline / dt < 1.5 + 1e-9 for n, dt in fits), fits
    # Fast again: back to the configured count, at most 1.5x per replan.
    clock.per_row = 1e-6
    fast = replans(10)
    counts = [slow[-1][0]] + [n for n, _ in fast]
    assert counts[-1] == n_max
    assert all(b <= int(1.5 * a) for a, b in zip(counts, counts[1:])), counts


def test_newton_steps_after_the_first_stop_at_the_deadline(monkeypatch):
    """refine_iterations > 1: a step that would end past the controller's deadline is not
    taken (the first always is, as iLQR's first iteration); without a deadline all are."""
    import mbrl_ros.core.planners.sampling.planner as sampling
    from analytic_models import Pendulum

    clock = _WorkClock(per_row=1e-4)
    monkeypatch.setattr(sampling.time, "perf_counter", clock)

    class SlowPendulum(Pendulum):
        def predict(self, x, u, t=None):
            out = super().predict(x, u, t)
            clock.t += clock.per_row * out[0].shape[0]
            return out
    cost = QuadraticCost.diagonal([10.0, 1.0], [0.01], [100.0, 10.0],
                                  x_target=np.array([2.5, 0.0]))
    for deadline, steps, stopped in ((None, 5, ""), (0.06, 1, "deadline")):
        p = MPPIPlanner(MPPISettings(horizon=20, samples=16, refine_iterations=5,
                                     adapt_samples=False), 2, 1, -20 * np.ones(1),
                        20 * np.ones(1), 0.05)
        p.reset(20)
        p.set_deadline(deadline)
        start = clock.t
        p.optimize(np.zeros(2), 0.0, SlowPendulum(), cost)
        assert (p.stats["refine_steps"], p.stats["refine_stopped"]) == (steps, stopped), \
            (p.stats, clock.t - start)
