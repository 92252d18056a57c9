"""Tests of the shared input pipeline of the learned models (mbrl_ros.core.models.pipeline):
normalisation round trips, the Jacobian chain rule against finite differences (with sin/cos
features of a continuous joint), consistency of delta targets and the affine prior with
affine dynamics, numpy/torch agreement and refusals of bad input."""
import numpy as np
import pytest
import torch

from mbrl_ros.core.models.base import ModelError, ModelSpec, finite_difference_linearization
from mbrl_ros.core.models.pipeline import AffinePrior, DeltaPipeline

NAMES_X = ("a/position", "b/position", "a/velocity", "b/velocity")


def spec(periodic=()):
    return ModelSpec(4, 2, NAMES_X, ("a", "b"), 0.01, "test", periodic)


def data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [3.0, 0.5, 2.0, 4.0] + [0.5, -1.0, 0.0, 2.0]
    u = rng.normal(size=(n, 2)) * [10.0, 0.1]
    xn = x + 0.01 * np.tanh(x @ rng.normal(size=(4, 4)) + u @ rng.normal(size=(2, 4)))
    return x, u, xn


@pytest.mark.parametrize("periodic", [(), (0,), (0, 1)])
def test_normalisation_round_trip(periodic):
    x, u, xn = data()
    rows = np.arange(200)
    pipe = DeltaPipeline.fit(spec(periodic), x, u, xn, rows=rows)
    assert pipe.features.n_in == 6 + len(periodic)
    z = pipe.inputs(x[rows], u[rows])
    d = pipe.targets(x[rows], xn[rows])
    # standardised on the training rows
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(d.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(d.std(0), 1.0, rtol=1e-12)
    # and back
    np.testing.assert_allclose(pipe.next_state(x, pipe.targets(x, xn)), xn, rtol=0,
                               atol=1e-13)
    np.testing.assert_allclose(pipe.delta(pipe.targets(x, xn)), xn - x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(pipe.variance(np.ones((1, 4))), pipe.out_norm.std[None] ** 2)
    # artifact round trip
    again = DeltaPipeline.from_arrays(spec(periodic), pipe.arrays())
    np.testing.assert_array_equal(again.inputs(x, u), pipe.inputs(x, u))
    np.testing.assert_array_equal(again.targets(x, xn), pipe.targets(x, xn))
    assert set(pipe.arrays()) == {"in_mean", "in_std", "out_mean", "out_std"}


def test_periodic_features_are_a_full_turn_periodic():
    x, u, xn = data()
    pipe = DeltaPipeline.fit(spec((0,)), x, u, xn)
    shifted = x.copy()
    shifted[:, 0] += 2 * np.pi
    np.testing.assert_allclose(pipe.inputs(shifted, u), pipe.inputs(x, u), atol=1e-12)
    plain = DeltaPipeline.fit(spec((0,)), x, u, xn, periodic=False)
    assert plain.features.n_in == 6
    assert not np.allclose(plain.inputs(shifted, u), plain.inputs(x, u))


@pytest.mark.parametrize("periodic", [(), (0,), (1, 0)])
def test_jacobian_matches_finite_differences(periodic):
    """next_state(x, g(inputs(x, u))) with a smooth nonlinear g of the normalised inputs:
    pipeline.jacobian of g's analytic Jacobian equals central differences of the map."""
    x, u, xn = data()
    pipe = DeltaPipeline.fit(spec(periodic), x, u, xn)
    rng = np.random.default_rng(5)
    M = rng.normal(size=(pipe.features.n_in, 4))

    def g(zn):
        return np.tanh(zn @ M)

    def step(x_, u_):
        return pipe.next_state(x_, g(pipe.inputs(x_, u_)))

    xs, us = x[:7], u[:7]
    zn = pipe.inputs(xs, us)
    Jn = (1.0 - np.tanh(zn @ M) ** 2)[:, :, None] * M.T[None]        # (T, nx, n_in)
    fx, fu = pipe.jacobian(Jn, xs)
    ref = finite_difference_linearization(step, xs, us, eps=1e-6)
    np.testing.assert_allclose(fx, ref.fx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fu, ref.fu, rtol=1e-6, atol=1e-7)
    assert fx.shape == (7, 4, 4) and fu.shape == (7, 4, 2)


def test_affine_prior_recovers_affine_dynamics():
    """Delta targets + the affine prior reproduce exactly affine dynamics, and
    pipeline.affine turns the prior into A, B, c in state units."""
    x, u, _ = data(n=200, seed=2)
    rng = np.random.default_rng(3)
    A = np.eye(4) + 0.05 * rng.normal(size=(4, 4))
    B = 0.02 * rng.normal(size=(4, 2))
    c = rng.normal(size=4)
    xn = x @ A.T + u @ B.T + c
    pipe = DeltaPipeline.fit(spec(), x, u, xn, periodic=False)
    prior = AffinePrior.fit(pipe.inputs(x, u), pipe.targets(x, xn), ridge=0.0)
    A2, B2, c2 = pipe.affine(prior)
    np.testing.assert_allclose(A2, A, atol=1e-10)
    np.testing.assert_allclose(B2, B, atol=1e-10)
    np.testing.assert_allclose(c2, c, atol=1e-10)
    np.testing.assert_allclose(pipe.next_state(x, prior(pipe.inputs(x, u))), xn, atol=1e-10)
    np.testing.assert_allclose(prior.residual_std(pipe.inputs(x, u), pipe.targets(x, xn)),
                               0.0, atol=1e-10)
    # the prior's Jacobian through the pipeline is the same A, B
    fx, fu = pipe.jacobian(np.repeat(prior.W.T[None], 3, axis=0), x[:3])
    np.testing.assert_allclose(fx, np.repeat(A[None], 3, axis=0), atol=1e-10)
    np.testing.assert_allclose(fu, np.repeat(B[None], 3, axis=0), atol=1e-10)
    with pytest.raises(ModelError, match="not affine"):
        DeltaPipeline.fit(spec((0,)), x, u, xn).affine(prior)


def test_affine_prior_ridge_and_arrays():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(100, 3))
    Y = Z @ np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]]) + 0.5
    free = AffinePrior.fit(Z, Y, ridge=0.0)
    shrunk = AffinePrior.fit(Z, Y, ridge=1e6)
    assert np.abs(shrunk.W).max() < 1e-4 * np.abs(free.W).max()
    np.testing.assert_allclose(shrunk.c, Y.mean(0), atol=1e-4)      # free intercept
    # a constant input column is fine at ridge 0 (least squares, not normal equations)
    Zc = np.concatenate([Z, np.zeros((100, 1))], axis=1)
    p = AffinePrior.fit(Zc, Y, ridge=0.0)
    np.testing.assert_allclose(p(Zc), Y, atol=1e-10)
    again = AffinePrior.from_stacked(free.stacked())
    np.testing.assert_array_equal(again.W, free.W)
    np.testing.assert_array_equal(again.c, free.c)
    np.testing.assert_array_equal(AffinePrior.zero(3, 2)(Z), np.zeros((100, 2)))
    assert np.all(AffinePrior.zero(3, 2).residual_std(Z, Y, floor=1e3) == 1e3)
    with pytest.raises(ModelError, match="ridge"):
        AffinePrior.fit(Z, Y, ridge=-1.0)
    with pytest.raises(ModelError, match="expected Z"):
        AffinePrior.fit(Z, Y[:50], ridge=0.0)
    with pytest.raises(ModelError, match="do not fit"):
        AffinePrior(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ModelError, match="stacked"):
        AffinePrior.from_stacked(np.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numpy_and_torch_agree(dtype):
    x, u, xn = data()
    pipe = DeltaPipeline.fit(spec((0,)), x, u, xn)
    prior = AffinePrior.fit(pipe.inputs(x, u), pipe.targets(x, xn), ridge=1e-3)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    xt, ut = torch.as_tensor(x, dtype=dtype), torch.as_tensor(u, dtype=dtype)
    zt = pipe.inputs(xt, ut)
    assert isinstance(zt, torch.Tensor) and zt.dtype == dtype
    np.testing.assert_allclose(zt.numpy(), pipe.inputs(x, u), rtol=tol, atol=tol)
    dt = prior(zt)
    assert dt.dtype == dtype
    np.testing.assert_allclose(dt.numpy(), prior(pipe.inputs(x, u)), rtol=tol, atol=tol)
    np.testing.assert_allclose(pipe.next_state(xt, dt).numpy(),
                               pipe.next_state(x, prior(pipe.inputs(x, u))),
                               rtol=tol, atol=tol)


def test_mismatched_normalisers_are_refused():
    x, u, xn = data()
    pipe = DeltaPipeline.fit(spec(), x, u, xn)
    with pytest.raises(ModelError, match="do not fit"):
        DeltaPipeline(DeltaPipeline.make_features(spec((0,))), pipe.in_norm, pipe.out_norm)
