"""EnsembleModel (PETS probabilistic ensemble): accuracy in the data, disagreement outside
it, trajectory-sampling propagation, log-variance bounds, artifacts and linearisation."""
import numpy as np
import pytest
import torch

from mbrl_ros.core import registry, store
from mbrl_ros.core.models.base import ModelError, finite_difference_linearization
from mbrl_ros.core.models.ensemble import EnsembleModel
from mbrl_ros.core.settings import SettingsError, from_mapping
from mbrl_ros.core.types import TransitionBatch

torch.set_num_threads(1)

SMALL = dict(members=5, n_elites=4, hidden_layers=3, hidden_units=64, batch_size=128,
             epochs=150, patience=15, lr=3e-3, seed=3)


def _truth(x, u):
    return x + 0.1 * np.sin(3 * x) + 0.05 * u


def _toy(n=1000, seed=0, noise=0.01):
    """1-D system x' = x + 0.1 sin(3x) + 0.05 u + noise, x and u in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1))
    u = rng.uniform(-1, 1, (n, 1))
    x1 = _truth(x, u) + noise * rng.standard_normal((n, 1))
    return TransitionBatch(x, u, x1, np.full(n, 0.01), np.arange(n) * 0.01, np.zeros(n, int),
                           ("x",), ("u",))


def _pendulum(n=1500, seed=1):
    """2-D state [angle, rate] with a nonlinear torque-driven pendulum, for Jacobians whose
    row/column order matters."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(-2, 2, n)
    v = rng.uniform(-2, 2, n)
    u = rng.uniform(-1, 1, (n, 1))
    dt = 0.05
    v1 = v + dt * (-9.81 * np.sin(q) - 0.1 * v + 2.0 * u[:, 0])
    q1 = q + dt * v1
    x, x1 = np.stack([q, v], 1), np.stack([q1, v1], 1)
    return TransitionBatch(x, u, x1, np.full(n, dt), np.arange(n) * dt, np.zeros(n, int),
                           ("p/position", "p/velocity"), ("p",))


@pytest.fixture(scope="module")
def toy_model():
    model = EnsembleModel(EnsembleModel.Settings(**SMALL))
    report = model.fit(_toy())
    return model, report


def test_accurate_inside_the_data(toy_model):
    model, report = toy_model
    assert report.n_train + report.n_val == 1000 and report.n_val == 100
    assert report.metrics["epochs"] >= 1 and report.metrics["val_rmse"] < 0.02
    x = np.linspace(-0.9, 0.9, 50)[:, None]
    u = np.linspace(1, -1, 50)[:, None]
    mean, var = model.predict(x, u)
    assert mean.shape == (50, 1) and var.shape == (50, 1) and mean.dtype == np.float64
    np.testing.assert_allclose(mean, _truth(x, u), atol=0.01)
    # The aleatoric part has learned the noise level (std 0.01) to within a factor ~2.
    assert 0.005 ** 2 < np.median(var) < 0.02 ** 2
    single, _ = model.predict(x[3], u[3])
    np.testing.assert_allclose(single, mean[3:4], rtol=1e-6, atol=1e-7)


def test_epistemic_spread_grows_outside_the_data(toy_model):
    model, _ = toy_model
    u = np.linspace(-1, 1, 11)[:, None]
    inside = model.uncertainty(np.zeros((11, 1)), u)
    outside = model.uncertainty(np.full((11, 1), 3.0), u)
    assert inside.shape == (11,)
    assert outside.mean() > 50 * inside.mean(), (inside.mean(), outside.mean())
    _, var_in = model.predict(np.zeros((11, 1)), u)
    _, var_out = model.predict(np.full((11, 1), 3.0), u)
    assert var_out.mean() > 10 * var_in.mean()


def test_elites_are_the_best_validation_members(toy_model):
    model, _ = toy_model
    assert model.n_elite == 4 and len(model.val_mse) == 5
    worst = int(np.argmax(model.val_mse))
    assert worst not in model.elites


def test_propagation_modes(toy_model):
    model, _ = toy_model
    P, E = 40, model.n_elite
    x = torch.linspace(-0.8, 0.8, P, dtype=model.torch_dtype)[:, None]
    u = torch.full((P, 1), 0.3, dtype=model.torch_dtype)
    means = model.member_means(x, u)
    assert means.shape == (E, P, 1) and means.dtype == model.torch_dtype
    exp = model.propagate(x, u, "expectation")
    torch.testing.assert_close(exp, means.mean(0))
    np.testing.assert_allclose(exp.numpy(), model.predict(x.numpy(), u.numpy())[0], atol=1e-6)

    members = model.draw_members(P, torch.Generator().manual_seed(0))
    assert torch.bincount(members, minlength=E).tolist() == [P // E] * E
    # TS-inf without sampling: particle p follows exactly the mean of its elite.
    det = model.propagate(x, u, "tsinf", members, sample=False)
    torch.testing.assert_close(det, means[members, torch.arange(P)])
    # Unbalanced assignments take the padded path and give the same per-particle answer.
    skew = torch.zeros(P, dtype=torch.long)
    skew[:3] = torch.tensor([1, 2, 3])
    torch.testing.assert_close(model.propagate(x, u, "tsinf", skew, sample=False),
                               means[skew, torch.arange(P)])
    # Sampled TS-inf is deterministic given the generator, and differs between seeds.
    a = model.propagate(x, u, "tsinf", members, torch.Generator().manual_seed(5))
    b = model.propagate(x, u, "tsinf", members, torch.Generator().manual_seed(5))
    c = model.propagate(x, u, "tsinf", members, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # TS1 re-draws the member every call: different generators give different members.
    t1 = model.propagate(x, u, "ts1", generator=torch.Generator().manual_seed(1), sample=False)
    t2 = model.propagate(x, u, "ts1", generator=torch.Generator().manual_seed(2), sample=False)
    assert not torch.equal(t1, t2)
    assert bool(((t1 >= means.min(0).values - 1e-6) & (t1 <= means.max(0).values + 1e-6)).all())
    with pytest.raises(ModelError, match="member_idx"):
        model.propagate(x, u, "tsinf")
    with pytest.raises(ModelError, match="unknown propagation mode"):
        model.propagate(x, u, "ts2")
    with pytest.raises(ModelError, match=r"\[0, 4\)"):
        model.propagate(x, u, "tsinf", torch.full((P,), 4, dtype=torch.long))


def test_tsinf_keeps_each_particle_on_its_member_over_a_horizon(toy_model):
    model, _ = toy_model
    P, H = 8, 10
    x0 = torch.zeros(P, 1, dtype=model.torch_dtype)
    u = torch.full((P, 1), 0.5, dtype=model.torch_dtype)
    members = model.draw_members(P, torch.Generator().manual_seed(1))
    x = x0
    for _ in range(H):
        x = model.propagate(x, u, "tsinf", members, sample=False)
    # Reference: roll each elite on its own and pick each particle's elite.
    ref = x0.expand(model.n_elite, P, 1)
    for _ in range(H):
        ref = torch.stack([model.member_means(ref[e], u)[e] for e in range(model.n_elite)])
    torch.testing.assert_close(x, ref[members, torch.arange(P)])


@pytest.fixture(scope="module")
def pendulum_models():
    """Small float64 ensembles (4 members, 3 elites) on the pendulum, with and without the
    linear prior, whose normalisers are far from identity (angles +-2, rates +-2)."""
    data = _pendulum(600)
    out = {}
    for prior in (True, False):
        m = EnsembleModel(EnsembleModel.Settings(members=4, n_elites=3, hidden_layers=2,
                                                 hidden_units=24, epochs=4, dtype="float64",
                                                 linear_prior=prior, seed=2))
        m.fit(data)
        out[prior] = m
    return out


def _per_member_reference(model, x0, U, member, sample_gen=None):
    """Reference TS rollout computed member by member from member_means and the
    log-variances of member_outputs: row r takes elite member[t][r] at step t."""
    n, T, _ = U.shape
    E = model.n_elite
    x = x0.expand(n, -1).clone()
    xs = [x]
    std = torch.as_tensor(model.out_norm.std, dtype=model.torch_dtype)
    for t in range(T):
        m_t = member[t]
        nxt = torch.empty_like(x)
        lv_all = None
        if sample_gen is not None:
            _, lv = model.member_outputs(x.numpy(), U[:, t].numpy())
            lv_all = torch.as_tensor(lv[model.elites], dtype=model.torch_dtype)
        for e in range(E):
            rows = torch.nonzero(m_t == e).flatten()
            nxt[rows] = model.member_means(x[rows], U[rows, t])[e]
        if sample_gen is not None:
            noise = torch.randn((n, x.shape[1]), generator=sample_gen, dtype=x.dtype)
            sd = torch.exp(0.5 * lv_all[m_t, torch.arange(n)]) * std
            nxt = nxt + sd * noise
        x = nxt
        xs.append(x)
    return torch.stack(xs)


@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("sample", [False, True])
def test_rollout_tsinf_equals_the_per_member_computation(pendulum_models, prior, sample):
    # The member-sorted rollout (rows regrouped once, normalisers folded into the weights)
    # gives the states of the plain per-member computation and of T propagate() calls.
    model = pendulum_models[prior]
    E, n, T = model.n_elite, 12, 7
    gen = torch.Generator().manual_seed(4)
    U = torch.rand((n, T, 1), generator=gen, dtype=torch.float64) * 2 - 1
    x0 = torch.tensor([0.4, -0.3], dtype=torch.float64)
    xs = model.rollout(x0, U, "tsinf", torch.Generator().manual_seed(9), sample=sample)
    assert xs.shape == (T + 1, n, 2) and torch.equal(xs[0], x0.expand(n, 2))
    member = [torch.arange(n) % E] * T
    ref = _per_member_reference(model, x0, U, member,
                                torch.Generator().manual_seed(9) if sample else None)
    torch.testing.assert_close(xs, ref, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(9)
    x = x0.expand(n, 2)
    for t in range(T):
        x = model.propagate(x, U[:, t], "tsinf", torch.arange(n) % E, g, sample=sample)
        torch.testing.assert_close(xs[t + 1], x, rtol=1e-12, atol=1e-12)
    # Per-row initial states and a caller's buffer.
    x0s = x0 + 0.1 * torch.arange(n, dtype=torch.float64)[:, None]
    out = torch.empty((T + 1, n, 2), dtype=torch.float64)
    assert model.rollout(x0s, U, "tsinf", sample=False, out=out) is out
    ref = _per_member_reference(model, x0s, U, member)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["ts1", "expectation"])
def test_rollout_other_modes_equal_propagate(pendulum_models, mode, monkeypatch):
    import mbrl_ros.core.models.ensemble.network as ens
    model = pendulum_models[True]
    n, T = 9, 6
    gen = torch.Generator().manual_seed(1)
    U = torch.rand((n, T, 1), generator=gen, dtype=torch.float64) * 2 - 1
    x0 = torch.tensor([-0.2, 0.5], dtype=torch.float64)
    for chunk in (1024, 2):           # also the chunked path (rows per member > _CHUNK)
        monkeypatch.setattr(ens, "_CHUNK", chunk)
        for sample in ((False, True) if mode == "ts1" else (False,)):
            xs = model.rollout(x0, U, mode, torch.Generator().manual_seed(3), sample=sample)
            g = torch.Generator().manual_seed(3)
            x = x0.expand(n, 2)
            for t in range(T):
                x = model.propagate(x, U[:, t], mode, None, g, sample=sample)
                torch.testing.assert_close(xs[t + 1], x, rtol=1e-12, atol=1e-12)


def test_expectation_rollout_returns_the_disagreement_along_it(pendulum_models):
    model = pendulum_models[True]
    n, T = 3, 5
    U = torch.linspace(-1, 1, n * T, dtype=torch.float64).view(n, T, 1)
    x0 = torch.tensor([0.5, 1.0], dtype=torch.float64)
    unc = torch.empty((T, n), dtype=torch.float64)
    xs = model.rollout(x0, U, "expectation", disagreement=unc)
    for t in range(T):
        ref = model.uncertainty(xs[t].numpy(), U[:, t].numpy())
        np.testing.assert_allclose(unc[t].numpy(), ref, rtol=1e-9, atol=1e-15)
    assert float(unc.max()) > 0
    with pytest.raises(ModelError, match="disagreement"):
        model.rollout(x0, U[:3], "tsinf", disagreement=unc)


def test_rollout_float32_and_errors(toy_model, monkeypatch):
    import mbrl_ros.core.models.ensemble.network as ens
    model, _ = toy_model                                      # float32, linear prior
    E = model.n_elite
    n, T = 3 * E, 5
    U = torch.linspace(-1, 1, n * T, dtype=torch.float32).view(n, T, 1)
    x0 = torch.tensor([0.3])
    member = torch.arange(n) % E
    for chunk in (1024, 2):
        monkeypatch.setattr(ens, "_CHUNK", chunk)
        xs = model.rollout(x0, U, "tsinf", sample=False)
        ref = _per_member_reference(model, x0, U, [member] * T)
        torch.testing.assert_close(xs, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="multiple of 4"):
        model.rollout(x0, U[:n - 1], "tsinf")
    with pytest.raises(ModelError, match="unknown propagation mode"):
        model.rollout(x0, U, "ts2")
    with pytest.raises(ModelError, match="expected U"):
        model.rollout(x0, U[:, :, 0])
    with pytest.raises(ModelError, match="out must be"):
        model.rollout(x0, U, out=torch.empty((T, n, 1)))
    # Loading (or refitting) replaces the folded weights built by an earlier rollout.
    arrays = model.state_arrays()
    other = dict(arrays, W1=arrays["W1"] * 1.5, in_mean=arrays["in_mean"] + 0.2)
    a, b = EnsembleModel(model.settings, model.spec), EnsembleModel(model.settings, model.spec)
    a.load_state_arrays(arrays)
    torch.testing.assert_close(a.rollout(x0, U, "expectation"),
                               model.rollout(x0, U, "expectation"), rtol=0, atol=0)
    a.load_state_arrays(other)
    b.load_state_arrays(other)
    torch.testing.assert_close(a.rollout(x0, U, "expectation"),
                               b.rollout(x0, U, "expectation"), rtol=0, atol=0)
    assert not torch.allclose(a.rollout(x0, U, "expectation"),
                              model.rollout(x0, U, "expectation"))


def test_log_variance_stays_within_the_learned_bounds(toy_model):
    model, _ = toy_model
    lo, hi = model.logvar_bounds()
    assert lo.shape == hi.shape == (5, 1) and (lo < hi).all()
    s = model.settings
    # The penalty pulled the upper bound down (and possibly the lower one up) from init.
    assert (hi < s.max_logvar_init).all() or (lo > s.min_logvar_init).all()
    x = np.concatenate([np.linspace(-1, 1, 20), [50.0, -50.0, 1e3]])[:, None]
    u = np.zeros_like(x)
    _, logvar = model.member_outputs(x, u)
    assert logvar.shape == (5, 23, 1)
    # The PETS soft clamp: min + softplus(max - softplus(max - raw) - min) lies in
    # [min, min + softplus(max - min)] (the upper edge exceeds max by < exp(min - max)).
    upper = lo + np.logaddexp(0.0, hi - lo)
    assert (logvar <= upper[:, None, :] + 1e-6).all() and (logvar >= lo[:, None, :] - 1e-6).all()
    assert (upper - hi < 1e-2).all()
    # Far outside the data the clamp is what limits the variance.
    assert np.isclose(logvar[:, -1], lo, atol=1e-3).any() or \
        np.isclose(logvar[:, -1], upper, atol=1e-3).any()


def test_store_round_trip_predicts_identically(toy_model, tmp_path):
    model, report = toy_model
    info = store.publish(model, tmp_path, "ens", report)
    loaded = store.load(info.uri)
    assert isinstance(loaded, EnsembleModel)
    np.testing.assert_array_equal(loaded.elites, model.elites)
    x = np.linspace(-2, 2, 30)[:, None]
    u = np.linspace(-1, 1, 30)[:, None]
    for a, b in zip(loaded.predict(x, u), model.predict(x, u)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.uncertainty(x, u), model.uncertainty(x, u))
    xt = torch.as_tensor(x, dtype=model.torch_dtype)
    ut = torch.as_tensor(u, dtype=model.torch_dtype)
    m = model.draw_members(30, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.propagate(xt, ut, "tsinf", m, torch.Generator().manual_seed(2)),
        model.propagate(xt, ut, "tsinf", m, torch.Generator().manual_seed(2)), rtol=0, atol=0)
    arrays = model.state_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    bad = dict(arrays, W0=arrays["W0"][:, :, :3])
    fresh = EnsembleModel(model.settings, model.spec)
    with pytest.raises(ModelError, match="W0"):
        fresh.load_state_arrays(bad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linearize_matches_finite_differences(dtype):
    data = _pendulum()
    settings = EnsembleModel.Settings(members=3, n_elites=2, hidden_layers=2, hidden_units=32,
                                      epochs=15, batch_size=256, dtype=dtype, seed=1)
    model = registry.create("model", "ensemble", settings)
    model.fit(data)
    xs, us = data.states[:7], data.actions[:7]
    lin = model.linearize(xs, us)
    eps = 1e-3 if dtype == "float32" else 1e-6
    fd = finite_difference_linearization(lambda x, u: model.predict(x, u)[0], xs, us, eps=eps)
    tol = 3e-4 if dtype == "float32" else 1e-8
    np.testing.assert_allclose(lin.fx, fd.fx, atol=tol)
    np.testing.assert_allclose(lin.fu, fd.fu, atol=tol)
    # The Jacobian is not trivially the identity: the learned dynamics couple the states.
    assert np.abs(lin.fx[:, 1, 0]).max() > 0.1
    mean, var = model.predict(xs, us)
    affine = np.einsum("tij,tj->ti", lin.fx, xs) + np.einsum("tij,tj->ti", lin.fu, us) + lin.f0
    np.testing.assert_allclose(affine, mean, atol=1e-9)
    np.testing.assert_allclose(np.diagonal(lin.cov, axis1=1, axis2=2), var)


def test_fit_is_deterministic_for_a_seed():
    data = _toy(200)
    s = EnsembleModel.Settings(members=2, n_elites=2, hidden_layers=1, hidden_units=16,
                               epochs=5, batch_size=64)
    a, b = EnsembleModel(s), EnsembleModel(s)
    a.fit(data)
    b.fit(data)
    for k, v in a.state_arrays().items():
        np.testing.assert_array_equal(v, b.state_arrays()[k], err_msg=k)


def test_errors():
    with pytest.raises(SettingsError, match="min_logvar_init"):
        from_mapping(EnsembleModel.Settings, {"min_logvar_init": 1.0, "max_logvar_init": 0.5})
    model = EnsembleModel()
    with pytest.raises(ModelError, match="not fitted"):
        model.predict(np.zeros(1), np.zeros(1))
    with pytest.raises(ModelError, match="at least 10"):
        model.fit(_toy(5))
    bad = _toy(50)
    states = bad.states.copy()
    states[3] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        model.fit(bad.replace(states=states))


def _collinear_episodes(n, seed, T=100):
    """Episodes of T chained steps of x' = 0.95 x + 0.1 u + 0.5 noise, observed three
    times (two copies differ by 0.01 noise): nearly collinear inputs, noisy targets."""
    rng = np.random.default_rng(seed)
    xs, x1s, us = [], [], []
    for _ in range(n // T):
        x = np.zeros((T + 1, 3))
        u = rng.uniform(-1, 1, (T, 1))
        for t in range(T):
            x[t + 1, 0] = 0.95 * x[t, 0] + 0.1 * u[t, 0] + 0.5 * rng.standard_normal()
        x[:, 1:] = x[:, :1] + 0.01 * rng.standard_normal((T + 1, 2))
        xs.append(x[:-1])
        x1s.append(x[1:])
        us.append(u)
    E = n // T
    return TransitionBatch(np.concatenate(xs), np.concatenate(us), np.concatenate(x1s),
                           np.full(E * T, 0.01), np.tile(np.arange(T) * 0.01, E),
                           np.repeat(np.arange(E), T), ("a", "b", "c"), ("u",))


_TINY = dict(members=2, n_elites=2, hidden_layers=1, hidden_units=8, epochs=2, min_epochs=1)


def test_cross_validated_prior_ridge_grows_as_the_data_shrinks():
    """On simulated 7-DoF arm excitation (nonlinear, 14 collinear-ish states), the
    cross-validated ridge of the linear prior is large on 500 transitions and the
    smallest candidate on 10,000."""
    from mbrl_ros.core.fitting import FitSettings, fit_model
    from mbrl_ros.core.control.closed_loop import simulate_excitation

    def ridge(data, **kw):
        res = fit_model(data, FitSettings(model="ensemble", val_fraction=0.0),
                        {**_TINY, **kw}, robot="arm7")
        return res.report.metrics["prior_ridge"]
    for seed in (1, 2):
        data = simulate_excitation("arm7", 100.0, 25, seed=seed)
        small = ridge(data.subset(np.arange(500)))
        large = ridge(data.subset(np.arange(10000)))
        assert small >= 0.1 and large == 1e-4, (seed, small, large)
    # A fixed ridge is used as given; without the prior there is none.
    small = data.subset(np.arange(500))
    assert ridge(small, prior_ridge=0.5) == 0.5
    assert ridge(small, linear_prior=False) == 0.0


def test_block_validation_needs_contiguous_blocks():
    def fit(data, **kw):
        model = EnsembleModel(EnsembleModel.Settings(**_TINY, **kw))
        return model, model.fit(data)
    # Enough blocks: 2000 * 0.1 / 20 = 10 whole held-out blocks, scored by rollouts.
    _, rep = fit(_collinear_episodes(2000, 0))
    assert rep.metrics["val_horizon"] == 20 and rep.n_val == 200
    _, rep = fit(_collinear_episodes(2000, 0), val_horizon=10)
    assert rep.metrics["val_horizon"] == 10 and rep.n_val == 200
    _, rep = fit(_collinear_episodes(2000, 0), val_horizon=25)    # 8 blocks
    assert rep.metrics["val_horizon"] == 1 and rep.n_val == 200
    # Too few blocks (500 * 0.1 / 20 = 2.5 < min_val_blocks) or one-step validation
    # asked for: random held-out transitions, one-step error.
    _, rep = fit(_collinear_episodes(500, 0))
    assert rep.metrics["val_horizon"] == 1 and rep.n_val == 50
    _, rep = fit(_collinear_episodes(500, 0), min_val_blocks=2)
    assert rep.metrics["val_horizon"] == 20 and rep.n_val == 40
    _, rep = fit(_collinear_episodes(2000, 0), val_horizon=1)
    assert rep.metrics["val_horizon"] == 1 and rep.n_val == 200
    # No contiguous runs at all (independent random transitions): today's random split
    # and the fixed default ridge.
    _, rep = fit(_toy(2000), min_val_blocks=1)
    assert rep.metrics["val_horizon"] == 1 and rep.n_val == 200
    assert rep.metrics["prior_ridge"] == 1e-4


def test_block_validation_scores_each_members_open_loop_rollout():
    data = _collinear_episodes(2000, 1)
    model = EnsembleModel(EnsembleModel.Settings(**_TINY, dtype="float64"))
    rep = model.fit(data)
    assert rep.metrics["val_horizon"] == 20
    # The held-out blocks: 10 of the 20-step blocks of the episodes, drawn first from the
    # settings' seed. Recompute the elites' scores: open loop from each block's first
    # state on the logged actions, errors in units of the training states' spread.
    from mbrl_ros.core.models.evaluate import blocks as contiguous_blocks
    cand = contiguous_blocks(data, 20)[0]
    assert cand.shape == (100, 20)
    blocks = cand[np.sort(np.random.default_rng(0).choice(100, 10, replace=False))]
    scale = np.std(np.delete(data.states, blocks.reshape(-1), axis=0), axis=0)
    for k in range(model.n_elite):
        x = torch.as_tensor(data.states[blocks[:, 0]])
        err = 0.0
        for h in range(20):
            x = model.member_means(x, torch.as_tensor(data.actions[blocks[:, h]]))[k]
            err += np.mean(((x.numpy() - data.next_states[blocks[:, h]]) / scale) ** 2)
        np.testing.assert_allclose(err / 20, model.val_mse[model.elites[k]], rtol=1e-9)


def test_small_data_gets_small_minibatches_and_enough_steps_per_epoch():
    """Below min_batches x batch_size training transitions the minibatch shrinks (not
    below 32) and an epoch repeats passes until it has made epoch_steps gradient steps;
    on enough data one pass of batch_size-row minibatches is an epoch, as before."""
    def fit(n, **kw):
        model = EnsembleModel(EnsembleModel.Settings(**{**_TINY, "epochs": 3, **kw}))
        return model.fit(_toy(n)).metrics
    # 270 training transitions: 270 // 16 = 16 -> 32 rows, 9 minibatches a pass, 4 passes.
    m = fit(300)
    assert m["batch_size"] == 32 and m["steps"] == 3 * 4 * 9, m
    # 1,800 training transitions: 1,800 // 16 = 112 rows, 17 minibatches, 2 passes.
    m = fit(2000)
    assert m["batch_size"] == 112 and m["steps"] == 3 * 2 * 17, m
    # Enough data for the setting's batch size (16 x 32 and 32 x 32 <= 1,800): one pass
    # of batch_size rows per epoch, as before.
    m = fit(2000, batch_size=32)
    assert m["batch_size"] == 32 and m["steps"] == 3 * 57, m
    # min_batches = epoch_steps = 1: one pass of min(batch_size, N) rows per epoch.
    m = fit(300, min_batches=1, epoch_steps=1)
    assert m["batch_size"] == 256 and m["steps"] == 3 * 2, m


def test_small_data_rule_trains_a_more_accurate_model():
    """300 pendulum transitions: the small-data rule (default) predicts held-out states
    clearly better than one pass of 256-row minibatches per epoch with the same early
    stopping, which stops after a few dozen gradient steps."""
    train, test = _pendulum(300, seed=4), _pendulum(500, seed=5)

    def rmse(**kw):
        model = EnsembleModel(EnsembleModel.Settings(seed=2, **kw))
        rep = model.fit(train)
        pred, _ = model.predict(test.states, test.actions)
        return float(np.sqrt(np.mean((pred - test.next_states) ** 2))), rep.metrics["steps"]
    new, new_steps = rmse()
    old, old_steps = rmse(min_batches=1, epoch_steps=1)
    assert new_steps > 5 * old_steps
    assert new < 0.5 * old, (new, old)


def _pendulum_trajectory(n, seed=0, dt=0.02):
    """One contiguous pendulum episode under random piecewise-constant torques."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n + 1, 2))
    x[0] = [0.3, 0.0]
    u = np.repeat(rng.uniform(-2, 2, (n // 10 + 1, 1)), 10, axis=0)[:n]
    for k in range(n):
        q, v = x[k]
        v1 = v + dt * (-9.81 * np.sin(q) - 0.5 * v + 3.0 * u[k, 0])
        x[k + 1] = [q + dt * v1, v1]
    return x, u


def test_repeated_rest_transitions_count_once():
    """A live data set starts with the robot at rest under zero effort (the simulator runs
    before the controller's first command; on a busy machine for thousands of steps):
    fit_model counts those identical transitions once, so they neither make up the
    training split nor swamp the ensemble's normalisers."""
    from mbrl_ros.core.fitting import FitSettings, drop_repeats, fit_model
    n_rest, n_move, dt = 3000, 600, 0.02
    xm, um = _pendulum_trajectory(n_move, dt=dt)
    rest = np.zeros((n_rest, 2))
    states = np.concatenate([rest, xm[:-1]])
    next_states = np.concatenate([rest, xm[1:]])
    actions = np.concatenate([np.zeros((n_rest, 1)), um])
    n = n_rest + n_move
    data = TransitionBatch(states, actions, next_states, np.full(n, dt), np.arange(n) * dt,
                           np.zeros(n, int), ("p/position", "p/velocity"), ("p",))
    clean, dropped = drop_repeats(data)
    assert dropped == n_rest - 1 and len(clean) == n_move + 1
    assert np.array_equal(clean.states[1:], xm[:-1])
    # an episode boundary is no repeat; a non-identical neighbour is no repeat
    two = TransitionBatch(rest[:2], np.zeros((2, 1)), rest[:2], np.full(2, dt),
                          np.arange(2) * dt, np.array([0, 1]), data.state_names,
                          data.action_names)
    assert drop_repeats(two)[1] == 0

    result = fit_model(data, FitSettings(model="ensemble", val_fraction=0.2),
                       {**SMALL, "epochs": 30, "min_epochs": 5})
    model, report = result.model, result.report
    assert result.extra["repeats_dropped"] == n_rest - 1
    assert report.n_train + report.n_val == n_move + 1
    assert any("counted once" in note for note in report.notes)
    # the output normaliser has the spread of the moving data, not a rest-dominated one
    # (with the repeats: 0.4 x that spread, and 3,000 of the 3,600 rows at rest)
    dy = xm[1:] - xm[:-1]
    train = slice(0, report.n_train - 1)
    assert np.allclose(model.out_norm.std, dy[train].std(axis=0), rtol=0.25)


def test_warm_start_continues_from_the_previous_weights():
    """A live refit with ``warm_start`` begins from the previous model's weights: one
    short fit then ends no worse than the previous model on its validation data (the
    starting weights are scored too), where a cold fit as short is far off; without the
    setting, or with other shapes, it starts cold."""
    data = _toy(800)
    prev = EnsembleModel(EnsembleModel.Settings(**SMALL))
    prev_report = prev.fit(data)
    short = {**SMALL, "epochs": 1, "min_epochs": 1, "seed": 4}
    warm = EnsembleModel(EnsembleModel.Settings(**short, warm_start=True))
    assert warm.warm_start_from(prev)
    warm_report = warm.fit(data)
    cold = EnsembleModel(EnsembleModel.Settings(**short))
    assert not cold.warm_start_from(prev)            # setting off
    cold_report = cold.fit(data)
    assert warm_report.metrics["warm_start"] == 1.0 and cold_report.metrics["warm_start"] == 0.0
    assert warm_report.metrics["val_rmse"] < 1.5 * prev_report.metrics["val_rmse"]
    assert cold_report.metrics["val_rmse"] > 3 * warm_report.metrics["val_rmse"]
    other = EnsembleModel(EnsembleModel.Settings(**{**short, "hidden_units": 32},
                                                 warm_start=True))
    assert not other.warm_start_from(prev)
    assert other.fit(data).metrics["warm_start"] == 0.0
    wider = _toy(300)                                # other inputs: a cold start at fit
    wider = TransitionBatch(np.hstack([wider.states, wider.states]), wider.actions,
                            np.hstack([wider.next_states, wider.next_states]), wider.dt,
                            wider.time,
                            wider.episode, ("x", "y"), ("u",))
    two = EnsembleModel(EnsembleModel.Settings(**short, warm_start=True))
    assert two.warm_start_from(prev)
    assert two.fit(wider).metrics["warm_start"] == 0.0


def test_repeats_stay_for_time_varying_models():
    """tvlg indexes the steps of each episode: fit_model drops no repeated transition for
    it (a linear model of the same data counts them once)."""
    from mbrl_ros.core.fitting import FitSettings, fit_model
    rng = np.random.default_rng(0)
    rows = []
    for e in range(8):
        x = np.zeros(2)
        for t in range(40):                       # 5 steps at rest, then random efforts
            u = np.zeros(1) if t < 5 else rng.normal(size=1)
            nxt = np.array([x[0] + 0.01 * x[1], x[1] + 0.01 * u[0]])
            rows.append((x, u, nxt, e))
            x = nxt
    n = len(rows)
    data = TransitionBatch(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                           np.array([r[2] for r in rows]), np.full(n, 0.01),
                           np.arange(n) * 0.01, np.array([r[3] for r in rows]),
                           ("p/position", "p/velocity"), ("p",))
    tv = fit_model(data, FitSettings(model="tvlg"))
    assert tv.report.n_train + tv.report.n_val == n and tv.extra["repeats_dropped"] == 0
    lin = fit_model(data, FitSettings(model="linear"))
    assert lin.extra["repeats_dropped"] == 8 * 4
