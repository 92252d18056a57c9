"""LinearGaussianPolicy: step indexing, clamping, GPS convention, sampling."""
import numpy as np
import pytest

from mbrl_ros.core.planners.base import Policy
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

T, NX, NU = 6, 4, 2


def _policy(rng, cov=True, limit=np.inf):
    K = rng.standard_normal((T, NU, NX))
    k = rng.standard_normal((T, NU))
    xbar = rng.standard_normal((T, NX))
    C = None
    if cov:
        A = rng.standard_normal((T, NU, NU))
        C = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(NU)
    return LinearGaussianPolicy(K=K, k=k, xbar=xbar, cov=C, t0=10.0, dt=0.1,
                                u_min=-limit, u_max=limit)


def test_index_between_knots_and_outside_horizon():
    pol = _policy(np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal(NX)
    for i in range(T):
        expected = pol.k[i] + pol.K[i] @ (x - pol.xbar[i])
        for frac in (0.0, 0.3, 0.999):
            np.testing.assert_allclose(pol.action(x, 10.0 + (i + frac) * 0.1), expected,
                                       atol=1e-12)
        assert pol.index(10.0 + i * 0.1) == i       # exactly on a knot despite rounding
    assert pol.index(9.0) == 0
    assert pol.index(100.0) == T - 1
    assert pol.t_end == pytest.approx(10.6)
    assert isinstance(pol, Policy)


def test_clamping_to_limits():
    pol = _policy(np.random.default_rng(2), limit=0.5)
    rng = np.random.default_rng(3)
    us = np.array([pol.action(10 * rng.standard_normal(NX), 10.0 + 0.05 * j) for j in range(12)])
    assert np.all(np.abs(us) <= 0.5)
    assert np.any(np.abs(us) == 0.5)
    assert np.any(np.abs(pol.mean(10 * np.ones(NX), 10.0)) > 0.5)


def test_gps_convention():
    pol = _policy(np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal(NX)
    for i in range(T):
        t = 10.0 + i * 0.1
        np.testing.assert_allclose(pol.action(x, t), pol.K[i] @ x + pol.k_gps[i], atol=1e-12)
    np.testing.assert_allclose(pol.k_gps, pol.k - np.einsum("tij,tj->ti", pol.K, pol.xbar))


def test_sample_statistics():
    pol = _policy(np.random.default_rng(6))
    x = np.random.default_rng(7).standard_normal(NX)
    rng = np.random.default_rng(8)
    t = 10.0 + 3 * 0.1 + 0.01
    s = np.array([pol.sample(x, t, rng) for _ in range(20000)])
    np.testing.assert_allclose(s.mean(axis=0), pol.action(x, t), atol=0.05)
    np.testing.assert_allclose(np.cov(s.T), pol.cov[3], atol=0.05 * np.abs(pol.cov[3]).max())


def test_sample_without_covariance_raises_and_arrays_are_read_only():
    pol = _policy(np.random.default_rng(9), cov=False)
    with pytest.raises(ValueError, match="no covariance"):
        pol.sample(np.zeros(NX), 10.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        pol.K[0, 0, 0] = 1.0
    with pytest.raises(AttributeError):
        pol.t0 = 0.0


def test_shape_validation():
    with pytest.raises(ValueError, match="xbar"):
        LinearGaussianPolicy(K=np.zeros((T, NU, NX)), k=np.zeros((T, NU)),
                             xbar=np.zeros((T + 1, NX)), cov=None, t0=0.0, dt=0.1,
                             u_min=-1, u_max=1)
    with pytest.raises(ValueError, match="dt"):
        LinearGaussianPolicy(K=np.zeros((T, NU, NX)), k=np.zeros((T, NU)),
                             xbar=np.zeros((T, NX)), cov=None, t0=0.0, dt=0.0,
                             u_min=-1, u_max=1)
