"""Box-QP solver of the control-limited backward pass vs scipy's L-BFGS-B."""
import numpy as np
import pytest
from scipy.optimize import minimize

from mbrl_ros.core.lqr.boxqp import STATUS_MESSAGES, solve_boxqp


def _random_qp(rng, n, infinite_fraction=0.2):
    A = rng.standard_normal((n, n))
    H = A @ A.T + 0.1 * np.eye(n)
    g = 3.0 * rng.standard_normal(n)
    lower = -rng.uniform(0.1, 1.0, n)
    upper = rng.uniform(0.1, 1.0, n)
    lower[rng.random(n) < infinite_fraction] = -np.inf
    upper[rng.random(n) < infinite_fraction] = np.inf
    return H, g, lower, upper


def _reference(H, g, lower, upper):
    n = g.shape[0]
    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
              for lo, hi in zip(lower, upper)]
    r = minimize(lambda x: (0.5 * x @ H @ x + g @ x, H @ x + g), np.zeros(n), jac=True,
                 method="L-BFGS-B", bounds=bounds,
                 options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000, maxcor=30))
    return r.x


def _f(H, g, x):
    return 0.5 * x @ H @ x + g @ x


@pytest.mark.parametrize("warm", [False, True])
def test_random_convex_qps_match_lbfgsb(warm):
    rng = np.random.default_rng(1 if warm else 0)
    n_clamped_total = 0
    for trial in range(60):
        n = int(rng.integers(1, 11))
        H, g, lower, upper = _random_qp(rng, n)
        x0 = rng.standard_normal(n) * 2.0 if warm else None
        res = solve_boxqp(H, g, lower, upper, x0=x0)
        ref = _reference(H, g, lower, upper)
        assert res.ok, (trial, res.message)
        assert np.all(res.x >= lower) and np.all(res.x <= upper)
        f, f_ref = _f(H, g, res.x), _f(H, g, ref)
        assert f <= f_ref + 1e-9 * max(1.0, abs(f_ref)), (trial, f, f_ref)
        np.testing.assert_allclose(res.x, ref, atol=1e-5)
        # The returned factor is the Cholesky factor of the free block, and clamped
        # variables are exactly on a bound.
        free = res.free
        Hff = H[np.ix_(free, free)]
        np.testing.assert_allclose(res.chol.T @ res.chol, Hff, atol=1e-10)
        clamped = ~free
        assert np.all((res.x[clamped] == lower[clamped]) | (res.x[clamped] == upper[clamped]))
        n_clamped_total += int(clamped.sum())
    assert n_clamped_total > 20   # the bounds were active in many problems


def test_projected_newton_fallback_matches_active_set_path():
    # Same problems solved from a warm start (active-set guess first) and cold (projected
    # Newton from the box centre) agree.
    rng = np.random.default_rng(7)
    for _ in range(30):
        H, g, lower, upper = _random_qp(rng, 7, infinite_fraction=0.0)
        a = solve_boxqp(H, g, lower, upper)
        b = solve_boxqp(H, g, lower, upper, x0=np.clip(-np.linalg.solve(H, g), lower, upper))
        np.testing.assert_allclose(a.x, b.x, atol=1e-6)
        np.testing.assert_array_equal(a.free, b.free)


def test_unbounded_is_newton_step():
    rng = np.random.default_rng(3)
    H, g, _, _ = _random_qp(rng, 5)
    res = solve_boxqp(H, g, np.full(5, -np.inf), np.full(5, np.inf))
    assert res.status == 3 and res.free.all()
    np.testing.assert_allclose(res.x, -np.linalg.solve(H, g), atol=1e-10)


def test_all_clamped():
    H = np.eye(3)
    g = np.array([10.0, -10.0, 10.0])
    lower, upper = -np.ones(3), np.ones(3)
    for x0 in (None, np.zeros(3)):
        res = solve_boxqp(H, g, lower, upper, x0=x0)
        assert res.status == 6 and not res.free.any()
        np.testing.assert_array_equal(res.x, [-1.0, 1.0, -1.0])


def test_indefinite_free_block_fails():
    H = np.diag([1.0, -1.0])
    res = solve_boxqp(H, np.zeros(2), -np.ones(2) * 0.5, np.ones(2) * 0.5,
                      x0=np.array([0.1, 0.1]))
    assert res.status == -1 and not res.ok
    assert res.message == STATUS_MESSAGES[-1]
