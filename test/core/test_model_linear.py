"""LinearModel: recovers a known affine system, exact linearisation, artifacts, errors."""
import math

import numpy as np
import pytest

from mbrl_ros.core import store
from mbrl_ros.core.models.base import ModelError, finite_difference_linearization
from mbrl_ros.core.models.linear import LinearModel, LinearSettings
from mbrl_ros.core.settings import SettingsError, from_mapping
from mbrl_ros.core.types import TransitionBatch

NX, NU = 4, 2
SIGMA = 0.01          # process-noise std per state dimension


def _system(seed=0):
    rng = np.random.default_rng(seed)
    A = np.eye(NX) + 0.1 * rng.normal(size=(NX, NX))
    B = rng.normal(size=(NX, NU))
    c = rng.normal(size=NX)
    return A, B, c


def _batch(n, seed=1, sigma=SIGMA, n_episodes=4):
    A, B, c = _system()
    rng = np.random.default_rng(seed)
    # i.i.d. unit-variance inputs: the design is well conditioned, so the least-squares
    # coefficient error has a known scale sigma / sqrt(N)
    x = rng.normal(size=(n, NX))
    u = rng.normal(size=(n, NU))
    xn = x @ A.T + u @ B.T + c + sigma * rng.normal(size=(n, NX))
    return TransitionBatch(
        states=x, actions=u, next_states=xn, dt=np.full(n, 0.01), time=np.arange(n) * 0.01,
        episode=np.arange(n) * n_episodes // n,
        state_names=("j1/position", "j2/position", "j1/velocity", "j2/velocity"),
        action_names=("j1", "j2"), meta={"robot": "synthetic"})


def test_recovers_known_affine_system_and_noise():
    n = 4000
    A, B, c = _system()
    model = LinearModel()
    report = model.fit(_batch(n))
    # OLS with unit-variance regressors: each coefficient has std ~ sigma / sqrt(N), so the
    # Frobenius error over nx * (nx + nu) coefficients is ~ sigma * sqrt(nx (nx + nu) / N);
    # 4x that bound fails with negligible probability.
    tol = 4 * SIGMA * math.sqrt(NX * (NX + NU) / n)
    err = np.linalg.norm(np.hstack([model.A - A, model.B - B]))
    assert err < tol, (err, tol)
    assert np.linalg.norm(model.c - c) < 4 * SIGMA * math.sqrt(NX / n) * 2
    # residual variance: relative standard error sqrt(2 / N) ~ 2 %
    np.testing.assert_allclose(model.var, SIGMA ** 2, rtol=0.15)
    assert report.metrics["train_rmse"] == pytest.approx(SIGMA, rel=0.1)
    assert report.n_train == n

    mean, var = model.predict(np.ones(NX), np.ones(NU))
    np.testing.assert_allclose(mean[0], model.A.sum(1) + model.B.sum(1) + model.c)
    assert mean.shape == (1, NX) and var.shape == (1, NX)


def test_ridge_shrinks_towards_identity():
    # a huge ridge leaves almost no change per step: A -> I, B -> 0
    model = LinearModel(LinearSettings(ridge=1e6))
    model.fit(_batch(500))
    assert np.abs(model.A - np.eye(NX)).max() < 1e-3
    assert np.abs(model.B).max() < 1e-3


def test_linearize_is_exact_and_matches_finite_differences():
    model = LinearModel()
    model.fit(_batch(300))
    rng = np.random.default_rng(3)
    xs, us = rng.normal(size=(5, NX)), rng.normal(size=(5, NU))
    lin = model.linearize(xs, us)
    fd = finite_difference_linearization(lambda x, u: model.predict(x, u)[0], xs, us)
    np.testing.assert_allclose(lin.fx, fd.fx, atol=1e-8)
    np.testing.assert_allclose(lin.fu, fd.fu, atol=1e-8)
    np.testing.assert_allclose(lin.f0, fd.f0, atol=1e-8)
    np.testing.assert_allclose(lin.cov, np.repeat(np.diag(model.var)[None], 5, axis=0))
    assert lin.horizon == 5


def test_store_round_trip_predicts_identically(tmp_path):
    model = LinearModel(LinearSettings(ridge=1e-3))
    report = model.fit(_batch(300))
    info = store.publish(model, tmp_path, "m", report)
    loaded = store.load(info.uri, expect=model.spec, checksum=info.checksum)
    assert isinstance(loaded, LinearModel) and loaded.settings.ridge == 1e-3
    x = np.random.default_rng(4).normal(size=(7, NX))
    u = np.random.default_rng(5).normal(size=(7, NU))
    for a, b in zip(model.predict(x, u), loaded.predict(x, u)):
        np.testing.assert_array_equal(a, b)
    assert info.metrics["train_rmse"] == report.metrics["train_rmse"]


def test_too_few_transitions_is_a_clear_error():
    with pytest.raises(ModelError, match=r"more than nx \+ nu \+ 1 = 7 transitions.*got 7"):
        LinearModel().fit(_batch(7))


def test_unfitted_and_bad_shapes_and_settings():
    with pytest.raises(ModelError, match="not fitted"):
        LinearModel().predict(np.zeros(NX), np.zeros(NU))
    model = LinearModel()
    model.fit(_batch(100))
    with pytest.raises(ModelError, match=r"expected x \(B, 4\) and u \(B, 2\)"):
        model.predict(np.zeros(3), np.zeros(NU))
    with pytest.raises(ModelError, match="linearize expects"):
        model.linearize(np.zeros((3, NX)), np.zeros((2, NU)))
    with pytest.raises(SettingsError, match="'ridge'"):
        from_mapping(LinearSettings, {"ridge": -1.0})
    # refitting on data of other joints is refused
    other = _batch(100).replace(action_names=("a", "b"))
    with pytest.raises(ModelError, match="state/action names differ"):
        model.fit(other)


def test_registered_under_linear():
    from mbrl_ros.core import registry
    assert registry.lookup("model", "linear") is LinearModel
