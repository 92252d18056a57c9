"""Sampling MPC planners (CEM, MPPI): closed-loop control of known models, analytic optima,
TS-inf member bookkeeping, warm starts, determinism, colored noise, ensembles and MuJoCo."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from analytic_models import AnalyticModel as _Analytic
from analytic_models import spec_for as _spec
from mbrl_ros.core import registry
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import check_xu
from mbrl_ros.core.planners.base import shift_trajectory
from mbrl_ros.core.planners.cem import CEMPlanner, CEMSettings
from mbrl_ros.core.planners.mppi import MPPIPlanner, MPPISettings
from mbrl_ros.core.planners.sampling import RolloutEngine, colored_noise
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import SettingsError, from_mapping, specs







class DoubleIntegrator(_Analytic):
    """Position/velocity, semi-implicit Euler: v' = v + dt u, p' = p + dt v'."""

    def __init__(self, dt=0.1):
        super().__init__({}, _spec(2, 1, dt))
        self.dt = dt
        self.calls = 0

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        self.calls += 1
        v = x[:, 1] + self.dt * u[:, 0]
        return np.stack([x[:, 0] + self.dt * v, v], axis=1), None


class Static(_Analytic):
    """x' = x: the cost depends on the actions only."""

    def __init__(self, nu=1):
        super().__init__({}, _spec(1, nu, 0.1))

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        return x.copy(), None


class NaNModel(_Analytic):
    """Diverges (NaN) wherever the action is above ``threshold``."""

    def __init__(self, threshold=-np.inf):
        super().__init__({}, _spec(2, 1, 0.1))
        self.threshold = threshold

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        out = x + 0.1 * np.concatenate([x[:, 1:], u], axis=1)
        out[u[:, 0] > self.threshold] = np.nan
        return out, None


class StandInEnsemble(_Analytic):
    """Torch ensemble stand-in with the EnsembleModel's torch interface: member m moves the
    double integrator with gain (1 + 0.5 m) on the action; records every member_idx."""

    torch_dtype = torch.float64

    def __init__(self, members=3, dt=0.1):
        super().__init__({}, _spec(2, 1, dt))
        self.E, self.dt = members, dt
        self.gains = 1.0 + 0.5 * torch.arange(members, dtype=torch.float64)
        self.recorded: list[torch.Tensor | None] = []
        self.modes: list[str] = []

    def _step(self, x, u, gain):
        v = x[:, 1] + self.dt * gain * u[:, 0]
        return torch.stack([x[:, 0] + self.dt * v, v], dim=1)

    def propagate(self, x, u, mode="expectation", member_idx=None, generator=None):
        self.modes.append(mode)
        self.recorded.append(None if member_idx is None else member_idx.clone())
        x, u = x.to(self.torch_dtype), u.to(self.torch_dtype)
        if mode == "expectation":
            return self.member_means(x, u).mean(dim=0)
        if mode == "ts1":
            member_idx = torch.randint(0, self.E, (x.shape[0],), generator=generator)
        return self._step(x, u, self.gains[member_idx])

    def member_means(self, x, u):
        return torch.stack([self._step(x, u, g) for g in self.gains])

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        m = self.member_means(torch.as_tensor(x), torch.as_tensor(u)).numpy()
        return m.mean(axis=0), m.var(axis=0)


DT = 0.1
TARGET = np.array([1.0, 0.0])


def _di_cost():
    return QuadraticCost.diagonal([10.0, 1.0], [0.01], qf=[100.0, 10.0], x_target=TARGET)


def _mppi(**kw):
    kw.setdefault("horizon", 15)
    kw.setdefault("samples", 128)
    kw.setdefault("temperature", 0.1)     # x the sampled cost spread (relative units)
    return MPPIPlanner(MPPISettings(**kw), 2, 1, -1.0, 1.0, DT)


def _cem(**kw):
    kw.setdefault("horizon", 15)
    kw.setdefault("population", 64)
    kw.setdefault("iterations", 3)
    kw.setdefault("n_particles", 1)
    return CEMPlanner(CEMSettings(**kw), 2, 1, -1.0, 1.0, DT)


def _closed_loop(planner, model, cost, steps, x0=None):
    x = np.zeros(model.spec.nx) if x0 is None else x0
    for i in range(steps):
        pol = planner.optimize(x, i * DT, model, cost)
        u = pol.action(x, i * DT)
        assert np.all(u >= planner.u_min) and np.all(u <= planner.u_max)
        x = model.predict(x, u)[0][0]
    return x


@pytest.mark.parametrize("make", [_mppi, _cem], ids=["mppi", "cem"])
def test_mpc_drives_double_integrator_to_target(make):
    planner = make()
    model = DoubleIntegrator(DT)
    x = _closed_loop(planner, model, _di_cost(), 50)
    assert abs(x[0] - TARGET[0]) < 0.05 and abs(x[1]) < 0.1, x
    pol_k = planner.nominal[1]
    assert np.all(np.abs(pol_k) <= 1.0)


def test_returned_policy_is_open_loop_plan_over_mean_rollout():
    model = DoubleIntegrator(DT)
    planner = _mppi(feedback="none")        # the open-loop plan (default: LQR gains)
    x0 = np.array([0.2, -0.1])
    pol = planner.optimize(x0, 3.0, model, _di_cost())
    assert isinstance(pol, LinearGaussianPolicy) and pol.cov is None
    xs, us = planner.nominal
    assert pol.horizon == planner.horizon and np.all(pol.K == 0)
    np.testing.assert_allclose(pol.k, us)
    # xbar is the rollout of the plan through the model's mean prediction.
    x = x0
    for t in range(planner.horizon):
        np.testing.assert_allclose(pol.xbar[t], x, atol=1e-9)
        x = model.predict(x, us[t])[0][0]
    np.testing.assert_allclose(xs[-1], x, atol=1e-9)
    assert planner.stats["cost"] == pytest.approx(_di_cost().total(xs, us))
    assert planner.nominal_time == 3.0
    # The policy plays the plan open loop, whatever the state.
    np.testing.assert_allclose(pol.action(np.array([5.0, 5.0]), 3.0 + 2 * DT), us[2])
    for key in ("solve_time_s", "best_cost", "mean_cost", "iterations", "ess"):
        assert key in planner.stats


@pytest.mark.parametrize("make", [_mppi, _cem], ids=["mppi", "cem"])
def test_sample_average_states_match_mean_rollout_on_linear_model(make):
    # Linear dynamics: the weighted (MPPI) / elite (CEM, alpha = 0) average of the sampled
    # trajectories is the trajectory of the averaged actions, i.e. of the new plan.
    model = DoubleIntegrator(DT)
    # the sampling update alone, no gains (their linearisation would call the model)
    kw = dict(horizon=8, nominal_rollout=False, refine="none", feedback="none")
    if make is _cem:
        kw.update(alpha=0.0, iterations=1)
    else:
        kw.update(noise_sigma=(0.5,), noise_units="absolute")
    wide = 10.0                                  # no clipping of the averaged plan
    planner = type(make())(dataclasses.replace(make().settings, **kw), 2, 1, -wide, wide, DT)
    x0 = np.array([0.3, -0.2])
    pol = planner.optimize(x0, 0.0, model, _di_cost())
    assert model.calls == 8                      # the sample rollout only
    xs = [x0]
    for t in range(8):
        xs.append(model.predict(xs[-1], pol.k[t])[0][0])
    np.testing.assert_allclose(planner.nominal[0], np.array(xs), atol=1e-5)
    np.testing.assert_allclose(pol.xbar, np.array(xs[:8]), atol=1e-5)


def test_cem_mean_converges_to_analytic_optimum():
    # minimise sum_t (u_t - c)^2 inside [-1, 1]: u* = c at every step.
    c = np.array([0.3, -0.6])
    cost = QuadraticCost.diagonal([0.0], [2.0, 2.0], qf=[0.0], u_ref=c)
    planner = CEMPlanner(CEMSettings(horizon=4, population=200, iterations=8, n_particles=1,
                                     init_std=(0.5,)), 1, 2, -1.0, 1.0, DT)
    pol = planner.optimize(np.zeros(1), 0.0, Static(nu=2), cost)
    np.testing.assert_allclose(pol.k, np.broadcast_to(c, (4, 2)), atol=0.02)
    assert planner.stats["std_mean"] < 0.05


@pytest.mark.parametrize("control_cost", [0.0, 1.0, 0.5])
def test_mppi_mean_converges_to_analytic_fixed_point(control_cost):
    # S = sum_t (v_t - c)^2. Without the control-cost term MPPI's fixed point is c; with it
    # (gamma = lambda), the mean of exp(-S/lambda) N(0, sigma^2):
    # c * 2 sigma^2 / (2 sigma^2 + lambda).
    c, sigma, lam = 1.0, 0.5, 0.5
    cost = QuadraticCost.diagonal([0.0], [2.0], qf=[0.0], u_ref=[c])
    planner = MPPIPlanner(MPPISettings(horizon=3, samples=1000, temperature=lam,
                                       temperature_units="absolute", keep_nominal=False,
                                       noise_sigma=(sigma,), noise_units="absolute",
                                       iterations=20, control_cost=control_cost,
                                       refine="none"),   # MPPI's own fixed point
                          1, 1, -10.0, 10.0, DT)
    pol = planner.optimize(np.zeros(1), 0.0, Static(), cost)
    # gamma = control_cost * lambda: the prior N(0, sigma^2) enters with exponent
    # control_cost, i.e. as N(0, sigma^2 / control_cost).
    expected = c * 2 * sigma ** 2 / (2 * sigma ** 2 + control_cost * lam)
    np.testing.assert_allclose(pol.k[:, 0], expected, atol=0.03)


def test_rollout_engine_tsinf_keeps_member_per_row():
    ens = StandInEnsemble(members=3)
    engine = RolloutEngine(2, 1, torch.float64)
    gen = torch.Generator().manual_seed(0)
    U = torch.rand((7, 5, 1), generator=gen, dtype=torch.float64) * 2 - 1
    x0 = np.array([0.1, -0.2])
    cost = _di_cost()
    J, xs = engine.run(ens, cost, x0, U, "tsinf", gen)
    # 7 rows padded to 9 (a multiple of E = 3) so every member gets the same row count.
    assert engine.rows == 9 and xs.shape == (6, 9, 2)
    idx = [r for r in ens.recorded]
    assert len(idx) == 5 and all(torch.equal(r, torch.arange(9) % 3) for r in idx)
    for r in range(7):            # row r follows member r % 3 over the whole horizon
        x = torch.as_tensor(x0)[None]
        for t in range(5):
            x = ens._step(x, U[r, t][None], ens.gains[r % 3])
            torch.testing.assert_close(xs[t + 1, r], x[0])
        ref = cost.total(xs[:, r].numpy(), U[r].numpy())
        assert float(J[r]) == pytest.approx(ref)
    # The mean ('expectation') needs neither member indices nor padding.
    ens.recorded.clear()
    J2, xs2 = engine.run(ens, cost, x0, U, "expectation", gen)
    assert engine.rows == 7 and ens.recorded == [None] * 5 and xs2.shape == (6, 7, 2)


def test_cem_particles_keep_their_member_and_cover_all_members():
    ens = StandInEnsemble(members=3)
    planner = CEMPlanner(CEMSettings(horizon=6, population=10, iterations=2, n_particles=3,
                                     nominal_rollout=False, propagation="tsinf"),
                         2, 1, -1.0, 1.0, DT)
    planner.optimize(np.zeros(2), 0.0, ens, _di_cost())
    tsinf = [r for r, m in zip(ens.recorded, ens.modes) if m == "tsinf"]
    assert len(tsinf) == 2 * 6                       # iterations x horizon
    expected = torch.arange(30) % 3                  # rows c * 3 + j -> member j
    assert all(torch.equal(r, expected) for r in tsinf)
    assert torch.equal(expected.view(10, 3), torch.arange(3).expand(10, 3))
    assert planner.stats["rows_per_call"] == 30


def test_mppi_sample_k_uses_member_k_mod_e_and_reports_disagreement():
    ens = StandInEnsemble(members=4)
    # refine 'none': the model calls of the sampling and the plan's own mean rollout only.
    planner = _mppi(samples=10, horizon=5, propagation="tsinf", refine="none")
    planner.optimize(np.zeros(2), 0.0, ens, _di_cost())
    tsinf = [r for r, m in zip(ens.recorded, ens.modes) if m == "tsinf"]
    assert len(tsinf) == 5 and all(torch.equal(r[:10], torch.arange(10) % 4) for r in tsinf)
    assert ens.modes.count("expectation") == 5       # the mean rollout of the plan
    st = planner.stats
    assert st["uncertainty_source"] == "member_means"
    assert planner.plan_uncertainty.shape == (5,)
    # Members differ by their action gain: disagreement wherever the plan acts.
    assert st["uncertainty_max"] > 0 and st["uncertainty_max"] >= st["uncertainty_mean"]
    assert st["uncertainty_first"] == pytest.approx(planner.plan_uncertainty[0])


@pytest.mark.parametrize("make", [_mppi, _cem], ids=["mppi", "cem"])
def test_warm_start_from_shifted_mean_and_handover(make):
    model = DoubleIntegrator(DT)
    planner = make()
    planner.optimize(np.zeros(2), 0.0, model, _di_cost())
    assert planner.stats["warm_start_shift"] == 0
    np.testing.assert_array_equal(planner.initial_actions, np.zeros((15, 1)))
    us1 = planner.nominal[1]
    planner.optimize(np.array([0.01, 0.1]), 2 * DT, model, _di_cost())
    assert planner.stats["warm_start_shift"] == 2
    # The two appended steps hold the plan's final position at rest: u = 0 here.
    assert planner.stats["warm_start_fill"] == "hold"
    expected = shift_trajectory(us1, 2)
    expected[-2:] = 0.0
    np.testing.assert_allclose(planner.initial_actions, expected, atol=1e-12)
    # Hand-over from another planner's nominal, shifted by the elapsed time.
    other = _cem() if isinstance(planner, MPPIPlanner) else _mppi()
    other.optimize(np.zeros(2), 1.0, model, _di_cost())
    planner.warm_start(other.nominal[1], other.nominal_time)
    planner.optimize(np.zeros(2), 1.0 + DT, model, _di_cost())
    # Another plan's actions come without their final state: the last action is repeated.
    assert planner.stats["warm_start_fill"] == "repeat"
    np.testing.assert_array_equal(planner.initial_actions, shift_trajectory(other.nominal[1], 1))


@pytest.mark.parametrize("make", [_mppi, _cem], ids=["mppi", "cem"])
@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_same_seed_same_plan(make, beta):
    model = StandInEnsemble(members=3)

    def run(planner):
        plans = []
        for i in range(3):
            plans.append(planner.optimize(np.array([0.1 * i, 0.0]), i * DT, model,
                                          _di_cost()).k)
        return plans

    a, b = run(make(seed=7, noise_beta=beta)), run(make(seed=7, noise_beta=beta))
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
    c = run(make(seed=8, noise_beta=beta))
    assert not np.array_equal(a[0], c[0])
    planner = make(seed=7, noise_beta=beta)
    run(planner)
    planner.reset(planner.horizon)                   # reset re-seeds
    for pa, pr in zip(a, run(planner)):
        np.testing.assert_array_equal(pa, pr)


def test_colored_noise_has_unit_variance_and_low_frequency_power():
    gen = torch.Generator().manual_seed(1)
    for T in (30, 31):
        white = colored_noise(4000, T, 2, 0.0, gen)
        brown = colored_noise(4000, T, 2, 2.0, gen, torch.float64)
        assert white.shape == brown.shape == (4000, T, 2) and brown.dtype == torch.float64
        assert float(brown.var()) == pytest.approx(1.0, abs=0.1)

        def lag1(z):
            z = z - z.mean(dim=1, keepdim=True)
            return float((z[:, 1:] * z[:, :-1]).mean() / (z * z).mean())

        assert abs(lag1(white)) < 0.1 and lag1(brown) > 0.7
    assert colored_noise(3, 1, 2, 2.0, gen).shape == (3, 1, 2)   # T = 1: white


def test_actions_respect_asymmetric_limits_with_colored_noise_and_clipped_sampling():
    model = DoubleIntegrator(DT)
    lo, hi = np.array([-0.2]), np.array([0.7])
    cost = _di_cost()
    for planner in (MPPIPlanner(MPPISettings(horizon=10, samples=64, noise_beta=1.0), 2, 1,
                                lo, hi, DT),
                    CEMPlanner(CEMSettings(horizon=10, population=32, sampling="clipped",
                                           noise_beta=1.0, n_particles=1), 2, 1, lo, hi, DT),
                    CEMPlanner(CEMSettings(horizon=10, population=32, noise_beta=2.0,
                                           n_particles=1), 2, 1, lo, hi, DT)):
        x = np.zeros(2)
        for i in range(5):
            pol = planner.optimize(x, i * DT, model, cost)
            assert np.all(pol.k >= lo) and np.all(pol.k <= hi)
            x = model.predict(x, pol.action(x, i * DT))[0][0]


def test_nonfinite_rollouts_are_ignored_or_reported():
    cost = QuadraticCost.diagonal([1.0, 1.0], [0.1], x_target=[1.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        _mppi().optimize(np.zeros(2), 0.0, NaNModel(), cost)
    with pytest.raises(ValueError, match="non-finite"):
        _cem().optimize(np.zeros(2), 0.0, NaNModel(), cost)
    with pytest.raises(ValueError, match="finite"):
        _mppi().optimize(np.array([np.nan, 0.0]), 0.0, DoubleIntegrator(), cost)
    # Samples with an action above 0.5 diverge: the plans avoid them.
    for planner in (_mppi(horizon=5), _cem(horizon=5, sampling="clipped")):
        pol = planner.optimize(np.zeros(2), 0.0, NaNModel(threshold=0.5), cost)
        assert np.all(pol.k <= 0.5) and math.isfinite(planner.stats["cost"])


def test_settings_schema_registry_and_limits():
    import mbrl_ros.core.planners  # noqa: F401  (declares the providers)
    assert registry.lookup("planner", "cem") is CEMPlanner
    assert registry.lookup("planner", "mppi") is MPPIPlanner
    p = registry.create("planner", "mppi", None, 2, 1, -3.0, 3.0, DT)
    np.testing.assert_allclose(p.noise_std, [0.15])                   # 0.05 * 3
    p = registry.create("planner", "cem", None, 2, 2, [-1.0, -4.0], [1.0, 2.0], DT)
    np.testing.assert_allclose(p.initial_std, [0.1, 0.3])             # 0.1 * half range
    names = {s.name for s in specs(MPPISettings)}
    assert {"horizon", "samples", "temperature", "noise_sigma", "noise_units", "iterations",
            "noise_beta", "threads", "dtype", "seed", "propagation"} <= names
    names = {s.name for s in specs(CEMSettings)}
    assert {"population", "elite_ratio", "iterations", "alpha", "n_particles",
            "noise_beta"} <= names
    with pytest.raises(ValueError, match="limit_fraction"):
        MPPIPlanner(None, 2, 1, -np.inf, np.inf, DT)
    MPPIPlanner(MPPISettings(noise_units="absolute"), 2, 1, -np.inf, np.inf, DT)
    with pytest.raises(ValueError, match="noise_sigma"):
        MPPIPlanner(MPPISettings(noise_sigma=(0.1, 0.2, 0.3)), 2, 2, -1.0, 1.0, DT)
    with pytest.raises(SettingsError):
        from_mapping(MPPISettings, {"noise_sigma": []})
    with pytest.raises(SettingsError):
        from_mapping(CEMSettings, {"propagation": "ts2"})


def test_threads_setting_is_restored():
    torch.set_num_threads(2)
    _mppi(threads=1, horizon=4, samples=8).optimize(np.zeros(2), 0.0, DoubleIntegrator(),
                                                    _di_cost())
    assert torch.get_num_threads() == 2


def test_float64_and_time_varying_numpy_model():
    class TV(DoubleIntegrator):
        time_varying = True

        def predict(self, x, u, t=None):
            assert t is not None
            self.ts.append(t)
            return super().predict(x, u)

    model = TV(DT)
    model.ts = []
    planner = _mppi(dtype="float64", horizon=4, samples=8)
    planner.optimize(np.zeros(2), 0.0, model, _di_cost())
    assert model.ts == [0, 1, 2, 3, 0, 1, 2, 3]      # samples, then the mean rollout
    # No linearisation (time-varying without its own): neither Newton step nor gains.
    assert planner.stats["refine_alpha"] == 0.0 and planner.stats["feedback"] == "none"


def test_with_fitted_ensemble_model():
    ensemble = pytest.importorskip("mbrl_ros.core.models.ensemble")
    from mbrl_ros.core.types import TransitionBatch
    rng = np.random.default_rng(0)
    model_true = DoubleIntegrator(DT)
    x = rng.uniform(-1, 1, (400, 2))
    u = rng.uniform(-1, 1, (400, 1))
    data = TransitionBatch(states=x, actions=u, next_states=model_true.predict(x, u)[0],
                           dt=np.full(400, DT), time=np.arange(400) * DT,
                           episode=np.zeros(400, dtype=np.int64), state_names=("p", "v"),
                           action_names=("u",))
    model = ensemble.EnsembleModel(ensemble.EnsembleModel.Settings(
        members=3, n_elites=3, hidden_layers=2, hidden_units=32, epochs=20))
    model.fit(data)
    for planner in (_mppi(horizon=8, samples=32),
                    _cem(horizon=8, population=16, iterations=2, n_particles=3)):
        pol = planner.optimize(np.zeros(2), 0.0, model, _di_cost())
        assert np.all(np.abs(pol.k) <= 1.0) and np.all(np.isfinite(pol.xbar))
        st = planner.stats
        assert st["uncertainty_source"] == "uncertainty" and st["uncertainty_max"] >= 0
        assert st["rows_per_call"] % model.n_elite == 0
        # Taken from the mean rollout's forward pass: model.uncertainty along the plan.
        xs, us = planner.nominal
        np.testing.assert_allclose(planner.plan_uncertainty, model.uncertainty(xs[:8], us),
                                   rtol=1e-4, atol=1e-9)


def test_mppi_drives_mujoco_arm2_toward_target():
    mm = pytest.importorskip("mbrl_ros.core.models.mujoco_model",
                             reason="MuJoCo dynamics model not available")
    dt = 0.05
    model = mm.MujocoModel.from_sim("arm2", control_period=dt)
    nx, nu = model.spec.nx, model.spec.nu
    target = np.array([0.8, -0.6, 0.0, 0.0])
    cost = QuadraticCost.diagonal([100.0, 100.0, 10.0, 10.0], [0.01, 0.01],
                                  qf=[1000.0, 1000.0, 100.0, 100.0], x_target=target)
    # arm2's links are light (0.15 N m for one step moves the elbow at 0.6 rad/s), so the
    # noise is small (0.05 x 3 N m) and the zero-action prior of the control-cost term,
    # lambda/2 u' Sigma^-1 u, would dominate the cost: it is switched off.
    planner = MPPIPlanner(MPPISettings(horizon=12, samples=64, noise_sigma=(0.05,),
                                       temperature=10.0, temperature_units="absolute",
                                       control_cost=0.0, keep_nominal=True),
                          nx, nu, -3.0, 3.0, dt)
    x = np.zeros(nx)
    for i in range(int(2.0 / dt)):
        pol = planner.optimize(x, i * dt, model, cost)
        u = pol.action(x, i * dt)
        assert np.all(np.abs(u) <= 3.0)
        x = model.predict(x, u)[0][0]
    assert np.max(np.abs(x[:2] - target[:2])) < 0.08, x
    assert np.max(np.abs(x[2:])) < 0.6, x


class Recording(DoubleIntegrator):
    """Double integrator that records the action rows of every rollout (numpy path:
    one predict call per step, all rows at once)."""

    def __init__(self, dt=0.1):
        super().__init__(dt)
        self.batches: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []

    def predict(self, x, u, t=None):
        u2 = np.atleast_2d(u)
        self._steps.append(u2.copy())
        out = super().predict(x, u)
        return out

    def rollouts(self, T):
        """(N, T, nu) action batches of the rollouts so far (mean rollouts excluded)."""
        steps, self._steps = self._steps, []
        out, i = [], 0
        while i < len(steps):
            if steps[i].shape[0] == 2:        # warm_start_fill 'hold': nu + 1 rows, once
                i += 1
                continue
            if steps[i].shape[0] == 1:        # the single-row mean rollout of the plan
                i += T
                continue
            out.append(np.stack(steps[i:i + T], axis=1))
            i += T
        return out


def test_cem_keeps_the_mean_and_elites_across_iterations_and_calls():
    model = Recording(DT)
    T, pop = 6, 40
    planner = _cem(horizon=T, population=pop, iterations=3, keep_elites=0.5, keep_mean=True,
                   alpha=0.0, refine="none", feedback="none")   # the rollouts of CEM alone
    cost = _di_cost()
    n_elite, n_keep = 4, 2
    planner.optimize(np.array([0.1, 0.0]), 0.0, model, cost)
    assert planner.stats["n_kept"] == n_keep
    batches = model.rollouts(T)
    assert len(batches) == 3 and all(b.shape == (pop, T, 1) for b in batches)

    def costs(batch):
        xs = np.empty((pop, T + 1, 2))
        xs[:, 0] = [0.1, 0.0]
        for t in range(T):
            xs[:, t + 1] = DoubleIntegrator(DT).predict(xs[:, t], batch[:, t])[0]
        return cost.stage_batch(xs[:, :T], batch) + cost.terminal_batch(xs[:, T])

    for prev, nxt in zip(batches[:-1], batches[1:]):
        J = costs(prev)
        elite = prev[np.argsort(J, kind="stable")[:n_elite]]
        # alpha = 0: the new mean is the elites' mean, and candidate 0 of the next iteration.
        np.testing.assert_allclose(nxt[0], np.clip(elite.mean(axis=0), -1, 1), atol=1e-6)
        # The two best elites are candidates again (re-evaluated, so the best cost of an
        # iteration never exceeds the previous one on a deterministic model).
        np.testing.assert_allclose(nxt[1:1 + n_keep], elite[:n_keep], atol=1e-6)
        assert costs(nxt).min() <= J.min() + 1e-9
    last_elites = batches[-1][np.argsort(costs(batches[-1]), kind="stable")[:n_keep]]
    # Next call, 2 steps later: the kept elites come back shifted like the mean, with the
    # mean's appended actions (warm_start_fill 'hold': u = 0 holds the double integrator).
    planner.optimize(np.array([0.1, 0.0]), 2 * DT, model, cost)
    first = model.rollouts(T)[0]
    assert planner.stats["warm_start_fill"] == "hold"
    shifted = np.concatenate([last_elites[:, 2:], np.zeros((n_keep, 2, 1))], 1)
    np.testing.assert_allclose(first[1:1 + n_keep], shifted, atol=1e-6)
    np.testing.assert_allclose(first[0], shift_trajectory(planner.initial_actions, 0),
                               atol=1e-6)
    # A hand-over from another plan drops them (candidates 1.. are fresh samples).
    planner.warm_start(np.zeros((T, 1)))
    planner.optimize(np.array([0.1, 0.0]), 3 * DT, model, cost)
    first = model.rollouts(T)[0]
    assert not np.allclose(first[1], shift_trajectory(last_elites, 3)[0], atol=1e-3)
    # keep_elites = 0 and keep_mean = False: mbrl-lib's CEM, every candidate sampled.
    plain = _cem(horizon=T, population=pop, iterations=2, keep_elites=0.0, keep_mean=False)
    plain.optimize(np.array([0.1, 0.0]), 0.0, model, cost)
    assert plain.stats["n_kept"] == 0


def test_cem_truncated_samples_stay_within_two_std():
    planner = _cem()
    z = planner._truncated_normal((20000, 3))
    assert float(z.abs().max()) <= 2.0
    # Variance of N(0, 1) truncated to [-2, 2]: 1 - 4 phi(2) / (2 Phi(2) - 1) = 0.774.
    assert float(z.var()) == pytest.approx(0.774, abs=0.02)
    assert abs(float(z.mean())) < 0.02


def test_mppi_relative_temperature_ignores_the_cost_scale():
    model = DoubleIntegrator(DT)
    x0 = np.array([0.2, 0.0])

    def plan(units, scale):
        cost = QuadraticCost.diagonal([10.0 * scale, scale], [0.01 * scale],
                                      qf=[100.0 * scale, 10.0 * scale], x_target=TARGET)
        p = _mppi(temperature_units=units, temperature=0.1, dtype="float64", seed=3,
                  refine="none")               # the plans of the sampling update alone
        for i in range(3):
            p.optimize(x0, i * DT, model, cost)
        return p.nominal[1], p.stats

    a, st_a = plan("relative", 1.0)
    b, st_b = plan("relative", 1000.0)
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert st_b["temperature"] == pytest.approx(1000.0 * st_a["temperature"], rel=1e-9)
    assert st_a["ess"] > 1.0 and st_b["ess"] == pytest.approx(st_a["ess"], rel=1e-9)
    # In cost units the same lambda means greedier weights on the larger costs.
    c, st_c = plan("absolute", 0.01)
    d, st_d = plan("absolute", 1.0)
    assert st_d["ess"] < st_c["ess"] and not np.allclose(c, d, atol=1e-3)


def test_engine_whole_horizon_rollout_matches_the_per_step_path(monkeypatch):
    ensemble = pytest.importorskip("mbrl_ros.core.models.ensemble")
    from mbrl_ros.core.planners.sampling import rollout as sampling
    from mbrl_ros.core.types import TransitionBatch
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (300, 2))
    u = rng.uniform(-1, 1, (300, 1))
    data = TransitionBatch(states=x, actions=u, next_states=DoubleIntegrator(DT).predict(x, u)[0],
                           dt=np.full(300, DT), time=np.arange(300) * DT,
                           episode=np.zeros(300, dtype=np.int64), state_names=("p", "v"),
                           action_names=("u",))
    model = ensemble.EnsembleModel(ensemble.EnsembleModel.Settings(
        members=3, n_elites=3, hidden_layers=2, hidden_units=16, epochs=3, dtype="float64"))
    model.fit(data)
    U = torch.rand((10, 7, 1), generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64) * 2 - 1
    x0 = np.array([0.2, -0.1])
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(sampling, "_has_rollout", lambda m, f=fused: f)
        engine = RolloutEngine(2, 1, torch.float64)
        for mode in ("tsinf", "ts1", "expectation"):
            for aleatoric in (False, True):
                J, xs = engine.run(model, _di_cost(), x0, U, mode,
                                   torch.Generator().manual_seed(5), aleatoric)
                results[fused, mode, aleatoric] = (J.clone(), xs.clone(), engine.rows)
        xm = engine.mean_rollout(model, x0, U[0].numpy())
        results[fused, "mean"] = xm
    for key, val in results.items():
        if key[0] and key[1] != "mean":
            (J, xs, rows), (J2, xs2, rows2) = val, results[(False,) + key[1:]]
            assert rows == rows2 == (10 if key[1] == "expectation" else 12)
            torch.testing.assert_close(J, J2, rtol=1e-12, atol=1e-10)
            torch.testing.assert_close(xs, xs2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[True, "mean"], results[False, "mean"], atol=1e-12)


def test_hold_action_holds_mujoco_arm7_at_rest():
    mm = pytest.importorskip("mbrl_ros.core.models.mujoco_model",
                             reason="MuJoCo dynamics model not available")
    from mbrl_ros.core.planners.sampling import hold_action
    model = mm.MujocoModel.from_sim("arm7", control_period=0.01)
    n = 7
    lim = np.array([87.0] * 4 + [12.0] * 3)
    q = np.array([0.3, -0.5, 0.0, -2.0, 0.0, 1.6, 0.8])
    x = np.concatenate([q, np.full(n, 0.7)])       # its velocity is not what is held
    at_rest = np.concatenate([q, np.zeros(n)])
    v_free = model.predict(at_rest, np.zeros(n))[0][0, n:]
    assert np.max(np.abs(v_free)) > 0.02            # gravity: zero torque falls
    u = hold_action(model, x, np.zeros(n), -lim, lim)
    v_held = model.predict(at_rest, u)[0][0, n:]
    assert np.max(np.abs(v_held)) < 1e-3 * np.max(np.abs(v_free)), (u, v_held)
    # Not computable: a time-varying model, a state that is not [q, qd], a NaN state.
    tv = type("TV", (), {"time_varying": True})()
    assert hold_action(tv, x, np.zeros(n), -lim, lim) is None
    assert hold_action(model, x[:-1], np.zeros(n), -lim, lim) is None
    assert hold_action(model, np.full(2 * n, np.nan), np.zeros(n), -lim, lim) is None


@pytest.mark.parametrize("fill", ["hold", "repeat"])
@pytest.mark.parametrize("planner", ["mppi", "cem"])
def test_replanning_every_five_steps_holds_arm2_with_the_hold_fill(planner, fill):
    """Replanning every 5 control periods (a 50 ms solve at 100 Hz), 64 samples, horizon
    40 on arm2 with the known model: the appended steps decide whether the arm holds the
    target. Repeating the plan's last action drifts into a joint stop (measured: 1.8-3.5
    rad); holding the final configuration stays within a few mrad. The sampling update
    alone (refine 'none'): the default Newton step corrects either fill."""
    pytest.importorskip("mbrl_ros.core.models.mujoco_model",
                        reason="MuJoCo dynamics model not available")
    from mbrl_ros.core.control.mpc import CostSettings, MPCController
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim("arm2", control_period=0.01)
    cls = registry.lookup("planner", planner)
    size = {"samples": 64} if planner == "mppi" else {"population": 64}
    s = cls.Settings(horizon=40, warm_start_fill=fill, refine="none", **size)
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), [planner],
                        planner, 40, sim.effort_limits, sim.position_limits, CostSettings())
    mpc.set_model(MujocoModel.from_sim("arm2", control_period=0.01))
    target = np.array([0.5, -0.5])
    mpc.set_target(target)
    res = run_episode(sim, mpc, 500, replan_every=5)
    late = np.abs(res.xs[250:, :2] - target).max()
    if fill == "hold":
        assert late < 0.05, late
        assert mpc.stats["warm_start_fill"] == "hold"
    else:
        assert late > 0.5, late


@pytest.mark.parametrize("make", [_mppi, _cem], ids=["mppi", "cem"])
def test_lqr_feedback_gains_are_the_riccati_gains_of_the_plan(make):
    """feedback 'lqr': on a linear model with a quadratic cost the gains along the plan are
    the discrete-time finite-horizon LQR gains (independent of the plan itself); 'none'
    returns the open-loop plan."""
    model = DoubleIntegrator(DT)
    cost = _di_cost()
    x0 = np.array([0.95, 0.0])          # near the target: no action at its limit
    pol = make(feedback="lqr").optimize(x0, 0.0, model, cost)
    assert np.abs(pol.k).max() < 0.9     # unclamped, so every step has its gain
    A = np.array([[1.0, DT], [0.0, 1.0]])
    B = np.array([[DT * DT], [DT]])
    Q, R, P = np.diag([10.0, 1.0]), np.array([[0.01]]), np.diag([100.0, 10.0])
    K = np.zeros((15, 1, 2))
    for t in range(14, -1, -1):
        K[t] = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A + B @ K[t])
    np.testing.assert_allclose(pol.K, K, rtol=1e-6, atol=1e-9)
    open_loop = make(feedback="none").optimize(x0, 0.0, model, cost)
    assert not np.any(open_loop.K)


def test_an_error_inside_a_linearisation_fails_the_replan():
    """Only a model without a linearisation skips the Newton step and the gains: an error
    inside a real one is not taken for "no linearisation" (it fails the replan)."""
    from mbrl_ros.core.models.base import offers_linearization

    class Broken(DoubleIntegrator):
        def linearize(self, xs, us):
            raise TypeError("a bug inside the linearisation")

    class TV(DoubleIntegrator):
        time_varying = True

        def predict(self, x, u, t=None):
            return super().predict(x, u)

    class NoLin:                       # a bare rollout model: predict only
        time_varying = False

        def __init__(self):
            self.inner = DoubleIntegrator(DT)

        def predict(self, x, u, t=None):
            return self.inner.predict(x, u)

    assert offers_linearization(DoubleIntegrator(DT)) and offers_linearization(Broken(DT))
    assert not offers_linearization(TV(DT)) and not offers_linearization(NoLin())
    with pytest.raises(TypeError, match="inside the linearisation"):
        _mppi(horizon=4, samples=8).optimize(np.zeros(2), 0.0, Broken(DT), _di_cost())
    planner = _mppi(horizon=4, samples=8)
    planner.optimize(np.zeros(2), 0.0, NoLin(), _di_cost())
    assert planner.stats["refine_alpha"] == 0.0 and planner.stats["feedback"] == "none"


def test_refine_iterations_take_gauss_newton_steps_until_none_lowers_the_cost():
    """refine 'newton' with refine_iterations n: up to n line-searched steps per replan, each
    lowering the plan's cost (a nonlinear pendulum: every one does), stopping at the first
    that lowers nothing (linear-quadratic: the first step is the optimum)."""
    from analytic_models import Pendulum
    cost = QuadraticCost.diagonal([10.0, 1.0], [0.01], qf=[100.0, 10.0],
                                  x_target=np.array([2.5, 0.0]))
    costs = []
    for n in (1, 2, 3):
        p = MPPIPlanner(MPPISettings(horizon=20, samples=16, refine_iterations=n), 2, 1,
                        -20.0, 20.0, 0.05)
        p.reset(20)
        p.optimize(np.zeros(2), 0.0, Pendulum(), cost)
        assert p.stats["refine_steps"] == n
        costs.append(p.stats["cost"])
    assert costs[0] > costs[1] > costs[2]
    p = _mppi(refine_iterations=3)
    p.reset(15)
    p.optimize(np.array([0.95, 0.0]), 0.0, DoubleIntegrator(DT), _di_cost())
    assert p.stats["refine_steps"] == 1 and p.stats["refine_alpha"] == 1.0


def test_every_torch_call_of_a_replan_runs_under_the_threads_setting():
    """The tail fill of a shifted plan (hold_action's model call) too: a call outside the
    setting right after switching back cost 35 ms instead of 0.7 ms on arm7."""
    seen = []

    class Counting(DoubleIntegrator):
        def predict(self, x, u, t=None):
            seen.append(torch.get_num_threads())
            return super().predict(x, u, t)
    torch.set_num_threads(2)
    p = _mppi(threads=1, horizon=6, samples=8, warm_start_fill="hold")
    p.reset(6)
    model, cost = Counting(DT), _di_cost()
    p.optimize(np.zeros(2), 0.0, model, cost)
    seen.clear()
    p.optimize(np.zeros(2), 2 * DT, model, cost)        # shifted by 2: the hold fill runs
    assert p.stats["warm_start_fill"] == "hold" and seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
