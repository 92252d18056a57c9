"""Tests of the GP dynamics model (mbrl_ros.core.models.gp): accuracy and calibration on a
noisy pendulum, growth of the variance away from the data, Jacobians against finite
differences, agreement of the fast prediction path with GPyTorch's own posterior, artifact
round trips, and robustness to non-smooth transitions (impacts on a joint stop)."""
import math

import numpy as np
import pytest
import torch

from mbrl_ros.core import registry, store
from mbrl_ros.core.models.base import ModelError, finite_difference_linearization
from mbrl_ros.core.models.evaluate import validation_metrics
from mbrl_ros.core.models.gp import GPModel
from mbrl_ros.core.models.gp.hyper import SubsetNLL
from mbrl_ros.core.models.linear import LinearModel
from mbrl_ros.core.settings import SettingsError, from_mapping
from mbrl_ros.core.types import TransitionBatch

DT = 0.05
NOISE = 0.01          # process-noise std on both state components (rad, rad/s)



def pendulum_step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Damped pendulum, semi-implicit Euler: x = [angle, angular velocity], u = [torque]."""
    th, w = x[:, 0], x[:, 1]
    w2 = w + DT * (-9.81 * np.sin(th) - 0.2 * w + u[:, 0])
    return np.stack([th + DT * w2, w2], axis=1)


def pendulum(n: int, seed: int, noise: float = NOISE, episodes: int = 1) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-2, 2, n), rng.uniform(-3, 3, n)], axis=1)
    u = rng.uniform(-2, 2, (n, 1))
    xn = pendulum_step(x, u) + noise * rng.normal(size=x.shape)
    return TransitionBatch(x, u, xn, np.full(n, DT), np.arange(n) * DT,
                           np.arange(n) * episodes // n, ("pendulum/position",
                                                           "pendulum/velocity"),
                           ("pendulum",))


def make(**kw) -> GPModel:
    return GPModel(from_mapping(GPModel.Settings, kw))


CONFIGS = {
    "exact": {},
    "exact_matern52": {"kernel": "matern52"},
    "sparse": {"max_exact": 100, "n_inducing": 60},
    "multitask": {"outputs": "multitask", "rank": 2},
    "multitask_sparse": {"outputs": "multitask", "max_exact": 100, "n_inducing": 60,
                         "sparse_iterations": 5},
}


@pytest.fixture(scope="module")
def data():
    return pendulum(200, seed=0)


@pytest.fixture(scope="module")
def test_set():
    return pendulum(400, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    out = {}
    for name, kw in CONFIGS.items():
        model = make(**kw)
        out[name] = (model, model.fit(data))
    return out


@pytest.mark.parametrize("name", ["exact", "exact_matern52", "sparse", "multitask"])
def test_interpolates_with_calibrated_variance(fitted, test_set, name):
    model, report = fitted[name]
    assert model.mode == ("sparse" if "sparse" in name else "exact")
    mean, var = model.predict(test_set.states, test_set.actions)
    assert mean.shape == var.shape == (len(test_set), 2)
    # The latent function is learnt to well below the noise level (and the spread of the
    # state change, >= 0.09), on held-out inputs.
    f_err = pendulum_step(test_set.states, test_set.actions) - mean
    f_rmse = np.sqrt(np.mean(f_err ** 2, axis=0))
    assert np.all(f_rmse < 0.5 * NOISE), (name, f_rmse)
    err = test_set.next_states - mean
    z = err / np.sqrt(var)
    assert abs(z.mean()) < 0.2, name
    assert 0.7 <= z.std() <= 1.4, (name, z.std())
    for key in ("val_mse", "val_rmse", "val_nll", "val_z_mean", "val_z_std", "train_nll"):
        assert math.isfinite(report.metrics[key]), key
    assert report.n_train + report.n_val == 200 and report.n_val == 20


def test_variance_grows_away_from_data(fitted, test_set):
    far_x, far_u = np.array([[8.0, 15.0], [-9.0, -12.0]]), np.array([[6.0], [-6.0]])
    for name in ("exact", "sparse", "multitask"):
        model, _ = fitted[name]
        noise = model.noise_variance()
        assert noise.shape == (2,) and np.all(noise > 0)
        _, var_in = model.predict(test_set.states[:50], test_set.actions[:50])
        _, var_far = model.predict(far_x, far_u)
        assert np.all(var_in >= noise * (1 - 1e-9))
        # The uncertainty about the function (variance above the noise) grows far from
        # the data: by orders of magnitude for the velocity, strongly nonlinear; for the
        # position change, which the affine mean explains almost entirely, less.
        latent_in, latent_far = var_in - noise, var_far - noise
        assert np.all(latent_far.min(axis=0) > 3.0 * latent_in.mean(axis=0)), name
        assert var_far[:, 1].min() > 100.0 * var_in[:, 1].max(), name


@pytest.mark.parametrize("name", list(CONFIGS))
def test_linearize_matches_finite_differences(fitted, data, name):
    model, _ = fitted[name]
    xs, us = data.states[:12], data.actions[:12]       # on fitted data (training points)
    lin = model.linearize(xs, us)
    fd = finite_difference_linearization(lambda x, u: model.predict(x, u)[0], xs, us,
                                         eps=1e-5)
    np.testing.assert_allclose(lin.fx, fd.fx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.fu, fd.fu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.f0, fd.f0, rtol=1e-6, atol=1e-6)
    _, var = model.predict(xs, us)
    np.testing.assert_allclose(np.diagonal(lin.cov, axis1=1, axis2=2), var)
    assert np.all(lin.cov[:, 0, 1] == 0)


@pytest.mark.parametrize("name", ["exact", "exact_matern52", "sparse", "multitask",
                                  "multitask_sparse"])
def test_fast_path_equals_gpytorch_posterior(fitted, test_set, name):
    model, _ = fitted[name]
    s = test_set.subset(slice(0, 60))
    mean, var = model.predict(s.states, s.actions)
    ref_mean, ref_var = model.predict_reference(s.states, s.actions)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-7)
    if model.mode == "exact" and model.settings.outputs == "independent":
        # N = 180 > var_rank = 64: an upper bound of the exact variance (up to rounding:
        # s / noise ~ 3e4 here), and a tight one for the smooth RBF fit.
        assert np.all(var >= ref_var * (1 - 1e-6))
        if model.settings.kernel == "rbf":
            assert np.all(var <= 1.05 * ref_var)
    else:
        np.testing.assert_allclose(var, ref_var, rtol=1e-4)


def test_variance_exact_when_rank_covers_data(data, test_set):
    model = make(var_rank=200)
    model.fit(data)
    assert not any("upper bound" in n for n in model.fit(data).notes)
    _, var = model.predict(test_set.states[:40], test_set.actions[:40])
    _, ref = model.predict_reference(test_set.states[:40], test_set.actions[:40])
    np.testing.assert_allclose(var, ref, rtol=1e-7)


def test_variance_bound_on_many_inputs():
    """N = 400 points in 5 dimensions, var_rank 32: the cached variance must never fall
    below GPyTorch's exact one (it is an upper bound by construction)."""
    rng = np.random.default_rng(3)
    n = 400
    x = rng.uniform(-1, 1, (n, 4))
    u = rng.uniform(-1, 1, (n, 1))
    xn = x + 0.1 * np.sin(3 * x + u) + 0.01 * rng.normal(size=x.shape)
    batch = TransitionBatch(x, u, xn, np.full(n, 0.01), np.arange(n) * 0.01,
                            np.zeros(n, int), tuple(f"x{i}" for i in range(4)), ("u",))
    model = make(var_rank=32, val_fraction=0.0)
    model.fit(batch)
    q = rng.uniform(-1.2, 1.2, (100, 4)), rng.uniform(-1, 1, (100, 1))
    _, var = model.predict(*q)
    _, ref = model.predict_reference(*q)
    assert np.all(var >= ref * (1 - 1e-6))


@pytest.mark.parametrize("name", ["exact", "sparse", "multitask", "multitask_sparse"])
def test_store_round_trip_is_identical(fitted, test_set, tmp_path, name):
    model, report = fitted[name]
    arrays = model.state_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    info = store.publish(model, tmp_path, "gp", report)
    loaded = store.load(info.uri, expect=model.spec, checksum=info.checksum)
    assert isinstance(loaded, GPModel) and loaded.mode == model.mode
    m0, v0 = model.predict(test_set.states, test_set.actions)
    m1, v1 = loaded.predict(test_set.states, test_set.actions)
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(v0, v1)
    l0 = model.linearize(test_set.states[:5], test_set.actions[:5])
    l1 = loaded.linearize(test_set.states[:5], test_set.actions[:5])
    np.testing.assert_array_equal(l0.fx, l1.fx)
    np.testing.assert_array_equal(l0.fu, l1.fu)
    # The GPyTorch modules are rebuilt too (same reference predictions).
    r0 = model.predict_reference(test_set.states[:5], test_set.actions[:5])
    r1 = loaded.predict_reference(test_set.states[:5], test_set.actions[:5])
    np.testing.assert_allclose(r0[0], r1[0], rtol=0, atol=1e-12)


def test_load_with_mismatching_settings_fails(fitted, tmp_path):
    model, _ = fitted["exact"]
    other = make(outputs="multitask")
    other.spec = model.spec
    with pytest.raises(ModelError):
        other.load_state_arrays(model.state_arrays())


def test_single_query_and_batches(fitted, test_set):
    model, _ = fitted["exact"]
    m1, v1 = model.predict(test_set.states[3], test_set.actions[3])
    mb, vb = model.predict(test_set.states, test_set.actions)
    assert m1.shape == v1.shape == (1, 2)
    np.testing.assert_allclose(m1[0], mb[3], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v1[0], vb[3], rtol=1e-10)
    with pytest.raises(ModelError):
        model.predict(np.zeros(3), np.zeros(1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mean_only_prediction_equals_the_mean(fitted, test_set, name):
    """predict_mean (what sampling planners roll out) skips the variance, nothing else."""
    model, _ = fitted[name]
    mean, _ = model.predict(test_set.states, test_set.actions)
    np.testing.assert_allclose(model.predict_mean(test_set.states, test_set.actions), mean,
                               rtol=1e-12, atol=1e-12)


def test_too_few_or_nan_transitions():
    with pytest.raises(ModelError, match="at least 10"):
        make().fit(pendulum(9, seed=2))
    bad = pendulum(50, seed=2)
    states = bad.states.copy()
    states[4, 1] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        make().fit(bad.replace(states=states))
    with pytest.raises(ModelError, match="not fitted"):
        make().predict(np.zeros(2), np.zeros(1))


def test_registry_settings_and_threads(data):
    model = registry.create("model", "gp")
    assert isinstance(model, GPModel) and model.settings.outputs == "independent"
    with pytest.raises(SettingsError):
        from_mapping(GPModel.Settings, {"kernel": "cubic"})
    torch.set_num_threads(1)
    m = make(threads=2, iterations=5, optimizer="adam", val_fraction=0.0)
    report = m.fit(data.subset(slice(0, 60)))
    assert torch.get_num_threads() == 1          # restored after fitting
    assert report.n_val == 0 and len(m.history) == 5
    fractions = []
    make(iterations=5).fit(data.subset(slice(0, 60)), progress=fractions.append)
    assert fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)


def test_seed_makes_fits_reproducible(data):
    a, b = make(iterations=10), make(iterations=10)
    a.fit(data)
    b.fit(data)
    q = data.states[:7], data.actions[:7]
    np.testing.assert_array_equal(a.predict(*q)[0], b.predict(*q)[0])


@pytest.mark.parametrize("kind", ["rbf", "matern52", "matern32"])
def test_subset_nll_gradient(kind):
    """The fused marginal-likelihood function against numerical derivatives."""
    g = torch.Generator().manual_seed(0)
    T, m, d = 2, 15, 3
    Z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(T, m, 1, generator=g, dtype=torch.float64)
    ls = (torch.rand(T, 1, d, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    os_ = (torch.rand(T, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    noise = (0.05 + 0.1 * torch.rand(T, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: SubsetNLL.apply(Z, a, b, c, y, kind),
                                    (ls, os_, noise))


def test_multitask_fit_is_reproducible(data):
    a, b = make(outputs="multitask", rank=2, iterations=10), make(outputs="multitask",
                                                                   rank=2, iterations=10)
    torch.manual_seed(1)
    a.fit(data)
    torch.manual_seed(2)                # the global RNG must not matter
    b.fit(data)
    q = data.states[:7], data.actions[:7]
    np.testing.assert_array_equal(a.predict(*q)[0], b.predict(*q)[0])


# ---------------------------------------------------------------------------------------
# non-smooth dynamics: a pendulum on a joint stop

STOP = 0.8            # rad


def stopped_pendulum(episodes: int, seed: int, steps: int = 100
                     ) -> tuple[TransitionBatch, np.ndarray]:
    """Noiseless trajectories of the pendulum driven by sums of sines into a stop at
    +-STOP, where an inelastic impact reverses the velocity (x 0.2): smooth dynamics plus a
    few non-smooth transitions, like the excitation data of the simulated arms. Returns the
    batch and which transitions hit the stop."""
    rng = np.random.default_rng(seed)
    X, U, XN, E = [], [], [], []
    for e in range(episodes):
        x = np.array([[rng.uniform(-0.5, 0.5), 0.0]])
        f, ph, a = rng.uniform(0.5, 2, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(6, 12, 3)
        for k in range(steps):
            u = np.array([[0.5 * np.sum(a * np.sin(2 * np.pi * f * k * DT + ph))]])
            xn = pendulum_step(x, u)
            if abs(xn[0, 0]) > STOP:
                xn = np.array([[np.sign(xn[0, 0]) * STOP, -0.2 * xn[0, 1]]])
            X.append(x[0]), U.append(u[0]), XN.append(xn[0]), E.append(e)
            x = xn
    X, U, XN = np.array(X), np.array(U), np.array(XN)
    n = len(X)
    hit = np.abs(XN[:, 0]) >= STOP
    return (TransitionBatch(X, U, XN, np.full(n, DT), np.arange(n) * DT, np.array(E),
                            ("pendulum/position", "pendulum/velocity"), ("pendulum",)), hit)


@pytest.mark.parametrize("seed", [1, 2])
def test_outliers_on_joint_stop_are_down_weighted(seed):
    """Near-noiseless data with a few impacts: interpolating the impacts made the posterior
    mean oscillate between trajectories, and 10-step open-loop rollouts on new episodes
    were worse than the global affine model's (as on the simulated arms at N = 2000).
    Down-weighting the transitions with large held-out residuals fixes that."""
    data, hit = stopped_pendulum(4, seed)
    val, _ = stopped_pendulum(4, 100 + seed)
    rollout = {}
    models = {"robust": make(val_fraction=0.0, var_rank=500),
              "off": make(val_fraction=0.0, outlier_threshold=0.0),
              "linear": LinearModel()}
    for name, model in models.items():
        model.fit(data)
        rollout[name] = validation_metrics(model, val, 10)["rollout_rmse"]
    robust = models["robust"]
    assert rollout["robust"] < 0.8 * rollout["linear"], rollout
    assert rollout["off"] > 1.5 * rollout["robust"], rollout
    flagged = (robust._outlier_noise > 0).any(0).numpy()
    assert robust.n_outliers == flagged.sum()
    assert flagged[hit].mean() >= 0.8, "most impacts are down-weighted"
    assert flagged.sum() <= 0.06 * len(data), "and little else"
    # The fast path equals GPyTorch's posterior with the same per-point noise (exact
    # variances: var_rank >= N), and artifacts keep the down-weighting.
    q = val.states[:50], val.actions[:50]
    mean, var = robust.predict(*q)
    ref_mean, ref_var = robust.predict_reference(*q)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-7)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    loaded = make(val_fraction=0.0, var_rank=500)
    loaded.spec = robust.spec
    loaded.load_state_arrays(robust.state_arrays())
    assert loaded.n_outliers == robust.n_outliers
    np.testing.assert_array_equal(loaded.predict(*q)[0], mean)
    np.testing.assert_allclose(loaded.predict_reference(*q)[0], ref_mean, rtol=0, atol=1e-12)


def test_outlier_down_weighting_in_sparse_posterior():
    """The sparse GP's closed-form q(u) uses the per-point noise too: it matches the exact
    GP's down-weighted posterior when every training input is an inducing point."""
    data, _ = stopped_pendulum(2, 1)
    kw = {"val_fraction": 0.0, "iterations": 20}
    exact = make(**kw)
    exact.fit(data)
    sparse = make(max_exact=100, n_inducing=1000, **kw)
    sparse.fit(data)
    assert sparse.mode == "sparse" and sparse.n_outliers == exact.n_outliers > 0
    q = data.states[::7], data.actions[::7]
    np.testing.assert_allclose(sparse.predict(*q)[0], exact.predict(*q)[0], rtol=0, atol=1e-4)


def test_continuous_joint_features_wrap_and_extrapolate(tmp_path):
    """A pendulum whose joint is continuous: with sin/cos inputs the GP predicts the same
    change a full turn away (where the raw-angle GP has no data), its Jacobians through the
    features match finite differences, and the periodic spec survives an artifact."""
    n = 300
    rng = np.random.default_rng(3)
    x = np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-3, 3, n)], axis=1)
    u = rng.uniform(-2, 2, (n, 1))
    xn = pendulum_step(x, u)
    names = ("pendulum/position", "pendulum/velocity")

    def batch(meta):
        return TransitionBatch(x, u, xn, np.full(n, DT), np.arange(n) * DT, np.zeros(n, int),
                               names, ("pendulum",), meta)
    wrapped = make(val_fraction=0.0)
    wrapped.fit(batch({"continuous_joints": ["pendulum"]}))
    raw = make(val_fraction=0.0)
    raw.fit(batch({}))
    assert wrapped.spec.periodic == (0,) and raw.spec.periodic == ()
    xq = np.stack([rng.uniform(-2.5, 2.5, 50), rng.uniform(-2, 2, 50)], axis=1)
    uq = rng.uniform(-1, 1, (50, 1))
    turn = np.array([2 * np.pi, 0.0])
    truth = pendulum_step(xq, uq) - xq
    d0 = wrapped.predict(xq, uq)[0] - xq
    d1 = wrapped.predict(xq + turn, uq)[0] - (xq + turn)
    np.testing.assert_allclose(d1, d0, atol=1e-6)
    err_wrapped = np.abs(d1 - truth)[:, 1].mean()
    err_raw = np.abs(raw.predict(xq + turn, uq)[0] - (xq + turn) - truth)[:, 1].mean()
    assert err_wrapped < 0.2 * err_raw, (err_wrapped, err_raw)
    lin = wrapped.linearize(xq[:10] + turn, uq[:10])
    fd = finite_difference_linearization(lambda a, b: wrapped.predict(a, b)[0],
                                         xq[:10] + turn, uq[:10], eps=1e-5)
    np.testing.assert_allclose(lin.fx, fd.fx, atol=2e-5)
    np.testing.assert_allclose(lin.fu, fd.fu, atol=2e-5)
    info = store.publish(wrapped, tmp_path, "gp")
    loaded = store.load(info.uri)
    assert loaded.spec.periodic == (0,)
    np.testing.assert_allclose(loaded.predict(xq, uq)[0], wrapped.predict(xq, uq)[0],
                               atol=1e-9)
