"""``Linearization.about``: the one construction of a linearisation through the predicted
means at its knots, which every model's ``linearize`` uses."""
import numpy as np

from mbrl_ros.core.models.base import Linearization


def _knots(T=6, nx=4, nu=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(T, nx, nx)), rng.normal(size=(T, nx, nu)),
            rng.normal(size=(T, nx)), rng.normal(size=(T, nu)), rng.normal(size=(T, nx)))


def test_about_passes_through_the_means_at_the_knots():
    fx, fu, xs, us, mean = _knots()
    lin = Linearization.about(fx, fu, xs, us, mean)
    assert lin.cov is None and lin.fx is fx and lin.fu is fu
    np.testing.assert_array_equal(
        lin.f0, mean - np.einsum("tij,tj->ti", fx, xs) - np.einsum("tij,tj->ti", fu, us))
    affine = np.einsum("tij,tj->ti", fx, xs) + np.einsum("tij,tj->ti", fu, us) + lin.f0
    np.testing.assert_allclose(affine, mean, rtol=0, atol=1e-12)


def test_about_makes_the_covariance_diagonal_from_the_variance():
    fx, fu, xs, us, mean = _knots()
    var = np.abs(mean) + 0.1
    lin = Linearization.about(fx, fu, xs, us, mean, var.astype(np.float32))
    assert lin.cov.dtype == np.float64 and lin.cov.shape == (6, 4, 4)
    np.testing.assert_array_equal(np.diagonal(lin.cov, axis1=1, axis2=2),
                                  var.astype(np.float32))
    off = lin.cov.copy()
    off[:, np.arange(4), np.arange(4)] = 0.0
    assert not off.any()
