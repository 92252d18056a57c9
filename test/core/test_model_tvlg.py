"""TVLG dynamics with a GMM prior, and the GMM itself.

The synthetic system is linear time-varying (LTV):
    x_{t+1} = A_t x_t + B_t u_t + c_t + w_t,   w_t ~ N(0, W),
sampled like guided policy search samples it: N trajectories around one nominal path with
random exploratory actions. The nominal path takes steps of length 3 in random directions
while the samples spread ~0.3-0.5 around it, so each time step occupies its own region of
[x, u, x'] space; that is what lets a GMM over transitions (the prior) tell the steps apart.
"""
import math

import numpy as np
import pytest

from mbrl_ros.core import store
from mbrl_ros.core.models.base import ModelError, finite_difference_linearization
from mbrl_ros.core.models.gmm import GaussianMixture, GMMError
from mbrl_ros.core.models.gmm_prior import GMMPrior, niw_prior_steps
from mbrl_ros.core.models.tvlg import (DynamicsPriorGMM, TVLGModel, TVLGSettings,
                                       gauss_fit_joint_prior)
from mbrl_ros.core.settings import SettingsError, from_mapping
from mbrl_ros.core.types import TransitionBatch

NX, NU, T = 4, 2, 15
SIG_U, SIG_X0 = 0.5, 0.3          # exploration std of actions and initial states


def _system():
    rng = np.random.default_rng(42)
    A0 = 0.7 * np.eye(NX) + 0.05 * rng.normal(size=(NX, NX))
    A1 = 0.3 * rng.normal(size=(NX, NX)) / math.sqrt(NX)
    B0 = 0.5 * rng.normal(size=(NX, NU))
    B1 = 0.3 * rng.normal(size=(NX, NU))
    phase = 2 * np.pi * np.arange(T) / T
    A = A0 + np.sin(phase)[:, None, None] * A1
    B = B0 + np.cos(phase)[:, None, None] * B1
    L = 0.05 * (np.eye(NX) + 0.3 * np.tril(rng.normal(size=(NX, NX)), -1))
    W = L @ L.T                                                   # correlated noise
    steps = rng.normal(size=(T, NX))
    steps *= 3.0 / np.linalg.norm(steps, axis=1, keepdims=True)
    xbar = np.cumsum(np.concatenate([np.zeros((1, NX)), steps]), axis=0)
    c = xbar[1:] - np.einsum("tij,tj->ti", A, xbar[:-1])          # keeps the nominal path
    return A, B, c, W, xbar


A_TRUE, B_TRUE, C_TRUE, W_TRUE, XBAR = _system()
TRUTH_NORM = np.linalg.norm(np.concatenate([A_TRUE, B_TRUE], axis=2), axis=(1, 2))  # ~2


def _rollouts(n, seed):
    rng = np.random.default_rng(seed)
    L = np.linalg.cholesky(W_TRUE)
    X = np.empty((n, T + 1, NX))
    U = SIG_U * rng.normal(size=(n, T, NU))
    X[:, 0] = XBAR[0] + SIG_X0 * rng.normal(size=(n, NX))
    for t in range(T):
        X[:, t + 1] = X[:, t] @ A_TRUE[t].T + U[:, t] @ B_TRUE[t].T + C_TRUE[t] + \
            rng.normal(size=(n, NX)) @ L.T
    return X, U


def _expected_sq_error(N):
    """E||[A_t B_t]_hat - [A_t B_t]||_F^2 of per-step least squares with intercept, from
    N Gaussian samples: tr(W) tr(Sigma_z^{-1}) / (N - p - 2), p = nx + nu, where Sigma_z is
    the covariance of [x_t, u_t] (propagated exactly through the known system)."""
    P = SIG_X0 ** 2 * np.eye(NX)
    p = NX + NU
    out = []
    for t in range(T):
        Sz = np.zeros((p, p))
        Sz[:NX, :NX] = P
        Sz[NX:, NX:] = SIG_U ** 2 * np.eye(NU)
        out.append(np.trace(W_TRUE) * np.trace(np.linalg.inv(Sz)) / (N - p - 2))
        P = A_TRUE[t] @ P @ A_TRUE[t].T + SIG_U ** 2 * B_TRUE[t] @ B_TRUE[t].T + W_TRUE
    return np.array(out)


def _errors(model):
    """(T,) Frobenius errors of [fx fu] per step."""
    return np.linalg.norm(np.concatenate([model.fx - A_TRUE, model.fu - B_TRUE], axis=2),
                          axis=(1, 2))


def _batch(X, U, dt=0.01):
    n, T_ = U.shape[:2]
    return TransitionBatch(
        states=X[:, :-1].reshape(-1, NX), actions=U.reshape(-1, NU),
        next_states=X[:, 1:].reshape(-1, NX), dt=np.full(n * T_, dt),
        time=np.tile(np.arange(T_) * dt, n), episode=np.repeat(np.arange(n), T_),
        state_names=tuple(f"j{i}/position" for i in range(NX // 2)) +
        tuple(f"j{i}/velocity" for i in range(NX // 2)),
        action_names=tuple(f"j{i}" for i in range(NU)))


# ------------------------------------------------------------------------------ GMM
def _three_clusters(n=300, seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, -8.0, 10.0]])
    covs = [np.diag([1.0, 0.5, 2.0]), np.array([[1.0, 0.8, 0], [0.8, 1.0, 0], [0, 0, 0.3]]),
            0.5 * np.eye(3)]
    X = np.concatenate([rng.multivariate_normal(m, c, size=n) for m, c in zip(means, covs)])
    return X, means, covs


def test_gmm_recovers_means_of_separated_clusters():
    X, means, covs = _three_clusters()
    g = GaussianMixture().fit(X, 3, rng=np.random.default_rng(1))
    order = [int(np.argmin(np.linalg.norm(g.means - m, axis=1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    for k, m, c in zip(order, means, covs):
        # standard error of a mean of 300 points: sqrt(var / 300) <= 0.09; 5 sigma
        np.testing.assert_allclose(g.means[k], m, atol=0.45)
        np.testing.assert_allclose(g.covariances[k], c, atol=0.4)
    np.testing.assert_allclose(g.weights, 1 / 3, atol=0.01)
    assert g.converged and g.n_points == 900


def test_gmm_responsibilities_sum_to_one_even_far_away():
    X, _, _ = _three_clusters()
    g = GaussianMixture().fit(X, 3)
    pts = np.concatenate([X[::50], [[1e3, -1e3, 1e3]]])    # last point: exp() underflows
    r = g.responsibilities(pts)
    assert r.shape == (len(pts), 3) and np.all(np.isfinite(r))
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-12)
    w = g.cluster_weights(pts)
    assert w.shape == (3,) and w.sum() == pytest.approx(1.0)
    assert np.all(np.isfinite(g.log_likelihood_points(pts)))


def test_gmm_moments_and_inference():
    X, _, _ = _three_clusters()
    g = GaussianMixture().fit(X, 3)
    mu, sig = g.moments(np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(mu, g.means[1])
    np.testing.assert_allclose(sig, g.covariances[1], atol=1e-12)
    # moments with the mixture weights = mean and covariance of the whole mixture, which
    # EM matches to the data's (the M-step preserves the first two moments)
    mu, sig = g.moments(g.weights)
    np.testing.assert_allclose(mu, X.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(sig, np.cov(X, rowvar=False, bias=True), atol=1e-3)
    mus, sigs = g.moments(np.eye(3))
    assert mus.shape == (3, 3) and sigs.shape == (3, 3, 3)
    mu0, phi, m, n0 = niw_prior_steps(g, X[:10, None, :], 1.0)
    assert m == 1.0 and n0 == pytest.approx((900 - 2 - 3) / 900)
    assert mu0.shape == (1, 3) and np.all(np.linalg.eigvalsh(phi[0]) > 0)
    # the prior mean is the mixture re-weighted by the batch's average responsibilities
    np.testing.assert_allclose(mu0[0], g.moments(g.cluster_weights(X[:10]))[0], atol=1e-12)
    mu2, phi2, m2, n02 = niw_prior_steps(g, X[:10, None, :], 2.0)
    np.testing.assert_allclose(phi2, 2.0 * phi, rtol=1e-12)
    assert (m2, n02) == (2.0, pytest.approx(2 * n0))


def test_gmm_restarts_keep_the_best_likelihood_and_arrays_round_trip():
    X, _, _ = _three_clusters()
    one = GaussianMixture(n_init=1).fit(X, 5, rng=np.random.default_rng(3))
    three = GaussianMixture(n_init=3).fit(X, 5, rng=np.random.default_rng(3))
    assert three.log_likelihood >= one.log_likelihood - 1e-9
    copy = GaussianMixture()
    copy.load_arrays(three.to_arrays("g"), "g")
    np.testing.assert_allclose(copy.log_prob_components(X), three.log_prob_components(X))


def test_gmm_input_errors():
    with pytest.raises(GMMError, match="K must be >= 1"):
        GaussianMixture().fit(np.zeros((5, 2)), 0)
    with pytest.raises(GMMError, match="NaN"):
        GaussianMixture().fit(np.full((5, 2), np.nan), 1)
    with pytest.raises(GMMError, match="not been fitted"):
        GaussianMixture().responsibilities(np.zeros((1, 2)))
    g = GaussianMixture().fit(np.random.default_rng(0).normal(size=(20, 2)), 2)
    with pytest.raises(GMMError, match=r"points must be \(N, 2\)"):
        g.responsibilities(np.zeros((3, 4)))


# ------------------------------------------------------------------------------ TVLG
def test_recovers_time_varying_dynamics_and_noise_from_50_trajectories():
    X, U = _rollouts(50, seed=1)
    rms = np.sqrt(_expected_sq_error(50))          # ~0.12-0.17 per step
    model = TVLGModel(TVLGSettings(strength=0.0))
    report = model.fit_trajectories(X, U)
    err = _errors(model)
    # Each step's squared error is (roughly) a scaled chi-square with nx (nx + nu) = 24
    # degrees of freedom around its expectation, so it stays within 3x the RMS; averaged
    # over 15 steps it is close to 1x.
    assert np.all(err < 3 * rms), err / rms
    assert np.mean(err ** 2 / rms ** 2) < 1.5
    # Noise covariance: the conditional covariance of the (1/N) joint estimate is biased
    # by (N - p - 1) / N = 0.86 (p = 6 regressors + intercept); the average over 15 steps
    # has a sampling error of a few % on top.
    rel = np.linalg.norm(model.cov.mean(axis=0) - W_TRUE) / np.linalg.norm(W_TRUE)
    assert rel < 0.25
    assert report.metrics["n_trajectories"] == 50 and report.metrics["horizon"] == T
    assert model.f0.shape == (T, NX) and model.cov.shape == (T, NX, NX)

    # With the prior (fitted on these samples, as GPS does) the fit stays close. Its
    # pseudo-count is ~1 sample, but its scale Phi comes from clusters that may span
    # neighbouring steps (whose A_t differ here by up to ~0.3) and are much wider than one
    # step's spread, so it adds a bias of about the sampling error: over GMM seeds the
    # worst step reached 3.7x the RMS above.
    with_prior = TVLGModel(TVLGSettings(max_samples=50, gmm_restarts=3))
    with_prior.update_prior(X, U, rng=np.random.default_rng(0))
    with_prior.fit_trajectories(X, U)
    assert np.all(_errors(with_prior) < 5 * rms)


@pytest.fixture(scope="module")
def prior_model():
    """A model whose prior has seen 50 trajectories (750 transitions, 37 clusters)."""
    model = TVLGModel(TVLGSettings(max_samples=50, gmm_restarts=3))
    Xp, Up = _rollouts(50, seed=2)
    model.update_prior(Xp, Up, rng=np.random.default_rng(0))
    return model


def test_prior_makes_three_trajectories_well_posed(prior_model):
    no_prior = TVLGModel(TVLGSettings(strength=0.0))
    errs_prior, errs_none = [], []
    for seed in range(3, 8):
        X, U = _rollouts(3, seed)                   # N = 3 < nx + nu = 6
        report = prior_model.fit_trajectories(X, U)
        assert report.metrics["prior_clusters"] > 0
        assert np.all(np.isfinite(prior_model.fx)) and np.all(np.isfinite(prior_model.cov))
        eig = np.linalg.eigvalsh(prior_model.cov)
        # positive definite and well conditioned at every step
        assert eig.min() > 0 and np.max(eig[:, -1] / eig[:, 0]) < 1e3
        errs_prior.append(_errors(prior_model))

        report = no_prior.fit_trajectories(X, U)
        assert any("under-determined" in n for n in report.notes)
        # without a prior the noise covariance is degenerate: 3 samples span 2 directions
        eig = np.linalg.eigvalsh(no_prior.cov)
        assert np.all(eig[:, 0] < 1e-6 * eig[:, -1])
        errs_none.append(_errors(no_prior))
    errs_prior, errs_none = np.array(errs_prior), np.array(errs_none)
    # Without the prior only the 2-D span of the samples is identified, so the error is
    # of the order of the truth itself (~80 % of ||[A_t B_t]||).
    assert errs_none.mean() > 0.6 * TRUTH_NORM.mean()
    # With it, the error is a fraction of that: 3 samples carry 3/4 of the weight against
    # a pseudo-count of ~1, so their noise still shows (20-33 % of ||[A_t B_t]|| over GMM
    # seeds, 0.25-0.39 of the error without prior).
    assert errs_prior.mean() < 0.5 * errs_none.mean()
    assert errs_prior.mean() < 0.4 * TRUTH_NORM.mean()


def test_stronger_prior_pulls_towards_it(prior_model):
    # strength scales the pseudo-counts: with strength 20 the 3 samples count for little
    X, U = _rollouts(3, seed=11)
    prior_model.fit_trajectories(X, U)
    weak = _errors(prior_model)
    strong = TVLGModel(TVLGSettings(max_samples=50, strength=20.0))
    strong.prior.load_arrays(prior_model.prior.to_arrays())
    strong.fit_trajectories(X, U)
    assert _errors(strong).mean() < weak.mean()


def test_prior_accumulates_and_drops_oldest():
    prior = DynamicsPriorGMM(max_samples=4, min_samples_per_cluster=10, max_clusters=3)
    for seed in range(3):
        X, U = _rollouts(2, seed)
        prior.update(X, U)
    assert prior.n_trajectories == 4 and len(prior.points) == 4 * T
    assert prior.gmm.n_components == 3              # clip(60 // 10, 2, 3)
    mu0, phi, m, n0 = prior.eval(NX, NU, prior.points[:5])
    assert mu0.shape == (2 * NX + NU,) and phi.shape == (2 * NX + NU,) * 2
    with pytest.raises(ModelError, match=r"prior points must be \(N, 10\)"):
        prior.eval(NX, NU, np.zeros((3, 9)))
    # trajectories of different lengths are fine for the prior
    X, U = _rollouts(1, 9)
    prior.update([X[0], X[0, :6]], [U[0], U[0, :5]])
    assert prior.traj_lengths.tolist()[-2:] == [T, 5]


def test_gauss_fit_joint_prior_without_prior_is_least_squares():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 1, 3))
    F = np.array([[1.0, -2.0, 0.5]])
    y = z @ F.T + 0.3 + 0.01 * rng.normal(size=(200, 1, 1))
    pts = np.concatenate([z, y], axis=2)
    Fm, fv, cov = gauss_fit_joint_prior(pts, np.zeros((1, 4)), np.zeros((1, 4, 4)), 0.0, 0.0,
                                        3, np.zeros((4, 4)))
    Z1 = np.concatenate([z[:, 0], np.ones((200, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(Z1, y[:, 0], rcond=None)
    np.testing.assert_allclose(Fm[0], coef[:3].T, atol=1e-10)
    np.testing.assert_allclose(fv[0], coef[3], atol=1e-10)
    resid = y[:, 0] - Z1 @ coef
    np.testing.assert_allclose(cov[0], resid.T @ resid / 200, rtol=1e-8)


def test_fit_from_transition_batch():
    X, U = _rollouts(6, seed=20)
    batch = _batch(X, U)
    model = TVLGModel(TVLGSettings(strength=0.0))
    report = model.fit(batch)
    direct = TVLGModel(TVLGSettings(strength=0.0))
    direct.fit_trajectories(X, U)
    np.testing.assert_allclose(model.fx, direct.fx)
    np.testing.assert_allclose(model.cov, direct.cov)
    assert model.spec.nx == NX and model.spec.dt == pytest.approx(0.01)
    assert report.n_train == 6 * T and report.fit_seconds > 0

    # with the prior: fit() refits it on these episodes
    with_prior = TVLGModel(TVLGSettings(horizon=10, min_samples_per_cluster=10))
    with_prior.fit(batch)
    assert with_prior.horizon == 10 and with_prior.prior.n_trajectories == 6
    assert with_prior.prior.fitted

    # a shorter episode than the horizon is refused with the lengths
    short = TransitionBatch.concat([batch, _batch(X[:1, :8], U[:1, :7])])
    with pytest.raises(ModelError, match=r"horizon is 15 steps.*has 7.*min 7, max 15"):
        TVLGModel(TVLGSettings(horizon=T)).fit(short)
    # horizon 0 (default) fits the shortest episode's length instead
    assert TVLGModel(TVLGSettings(strength=0.0)).fit(short).metrics["horizon"] == 7


def test_too_few_samples_are_clear_errors():
    X, U = _rollouts(1, seed=0)
    with pytest.raises(ModelError, match="at least 2 episodes"):
        TVLGModel().fit(_batch(X, U))
    with pytest.raises(ModelError, match="at least 2 sample trajectories"):
        TVLGModel().fit_trajectories(X, U)
    with pytest.raises(ModelError, match="needs at least 2 transitions"):
        TVLGModel().fit(_batch(X[:, :2], U[:, :1]))
    with pytest.raises(ModelError, match=r"expected X \(N, T\+1, nx\)"):
        TVLGModel().fit_trajectories(X[:, :-1], U)
    with pytest.raises(SettingsError, match="'strength'"):
        from_mapping(TVLGSettings, {"strength": -1})
    with pytest.raises(SettingsError, match="'max_clusters'"):
        from_mapping(TVLGSettings, {"max_clusters": 1})


def test_predict_and_linearize_time_indexing(prior_model):
    X, U = _rollouts(3, seed=30)
    prior_model.fit_trajectories(X, U)
    m = prior_model
    # t as an int, as (B,) ints; variance is the diagonal of cov[t]
    mean, var = m.predict(X[:, 4], U[:, 4], t=4)
    np.testing.assert_allclose(mean, X[:, 4] @ m.fx[4].T + U[:, 4] @ m.fu[4].T + m.f0[4])
    np.testing.assert_allclose(var, np.tile(np.diag(m.cov[4]), (3, 1)))
    ts = np.array([0, 7, 14])
    mean, _ = m.predict(X[0, ts], U[0, ts], t=ts)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(mean[i], m.fx[t] @ X[0, t] + m.fu[t] @ U[0, t] + m.f0[t])
    assert m.predict(X[0, 3], U[0, 3], t=3)[0].shape == (1, NX)

    # linearize returns step t's matrices at row t, which central differences of
    # predict(., ., t) reproduce
    Tp = 6
    xs, us = X[1, :Tp], U[1, :Tp]
    lin = m.linearize(xs, us)

    def step(x, u):
        B = x.shape[0]
        t = np.arange(Tp) if B == Tp else np.repeat(np.arange(Tp), B // Tp)
        return m.predict(x, u, t=t)[0]

    fd = finite_difference_linearization(step, xs, us)
    assert lin.fx.shape == (Tp, NX, NX) and lin.fu.shape == (Tp, NX, NU)
    assert lin.cov.shape == (Tp, NX, NX)
    np.testing.assert_allclose(lin.fx, fd.fx, atol=1e-7)
    np.testing.assert_allclose(lin.fu, fd.fu, atol=1e-7)
    np.testing.assert_allclose(lin.f0, fd.f0, atol=1e-6)
    np.testing.assert_array_equal(lin.cov, m.cov[:Tp])


def test_time_index_errors(prior_model):
    m = prior_model
    X, U = _rollouts(3, seed=31)
    m.fit_trajectories(X, U)
    with pytest.raises(ModelError, match="time-varying: predict needs the time index t"):
        m.predict(X[0, 0], U[0, 0])
    with pytest.raises(ModelError, match=r"covers t = 0 .. 14, got 15 .. 15"):
        m.predict(X[0, 0], U[0, 0], t=15)
    with pytest.raises(ModelError, match=r"shape \(3,\)"):
        m.predict(X[:, 0], U[:, 0], t=np.array([0, 1]))
    with pytest.raises(ModelError, match="must be integer"):
        m.predict(X[0, 0], U[0, 0], t=1.5)
    with pytest.raises(ModelError, match=r"asked for 16 steps.*T = 15"):
        m.linearize(np.zeros((16, NX)), np.zeros((16, NU)))
    with pytest.raises(ModelError, match="not fitted"):
        TVLGModel().predict(X[0, 0], U[0, 0], t=0)


def test_store_round_trip_keeps_predictions_and_prior(tmp_path):
    X, U = _rollouts(8, seed=40)
    model = TVLGModel(TVLGSettings(min_samples_per_cluster=30))
    report = model.fit(_batch(X, U))
    info = store.publish(model, tmp_path, "tvlg", report)
    loaded = store.load(info.uri, expect=model.spec)
    assert isinstance(loaded, TVLGModel) and loaded.settings == model.settings
    t = np.arange(8) % T
    for a, b in zip(model.predict(X[:, 2], U[:, 2], t=t), loaded.predict(X[:, 2], U[:, 2], t=t)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.initial_state(), loaded.initial_state()):
        np.testing.assert_array_equal(a, b)
    # the reloaded prior evaluates identically and can keep accumulating
    pts = np.concatenate([X[:, :T], U, X[:, 1:]], axis=2)
    for a, b in zip(model.prior.eval_steps(pts), loaded.prior.eval_steps(pts)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    loaded.update_prior(*_rollouts(2, seed=41))
    assert loaded.prior.n_trajectories == 10


def test_registered_under_tvlg():
    from mbrl_ros.core import registry
    assert registry.lookup("model", "tvlg") is TVLGModel
    assert TVLGModel.time_varying


def test_dynamics_and_policy_priors_share_one_gmm_prior():
    """Issue 13: the GMM/NIW prior exists once (models/gmm_prior.py); the dynamics prior
    and the policy linearisation's prior only decide which points they keep."""
    from mbrl_ros.core.policies.linearization import PolicyPriorGMM

    for cls in (DynamicsPriorGMM, PolicyPriorGMM):
        assert issubclass(cls, GMMPrior)
        for name in ("eval_steps", "fit_points", "n_clusters"):
            assert getattr(cls, name) is getattr(GMMPrior, name), (cls, name)
    dyn, pol = DynamicsPriorGMM(min_samples_per_cluster=10, max_clusters=3), \
        PolicyPriorGMM(min_samples_per_cluster=10, max_clusters=3)
    assert [dyn.n_clusters(n) for n in (1, 15, 60, 1000)] == [1, 2, 3, 3]
    assert [pol.n_clusters(n) for n in (1, 15, 60, 1000)] == [1, 2, 3, 3]
    with pytest.raises(ModelError, match="policy prior has no data yet"):
        pol.eval_steps(np.zeros((2, 3, 6)))
    X, U = _rollouts(2, 0)
    dyn.update(X, U)
    with pytest.raises(ModelError, match="dynamics prior was fitted on 10-D points"):
        dyn.eval_steps(np.zeros((2, 3, 9)))
