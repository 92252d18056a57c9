"""KL-constrained LQG update (GPS C-step): LQR when the bound is loose, the bound respected
when it binds, marginals and KL checked against Monte Carlo, non-PD Q_uu handled."""
import numpy as np
import pytest

from mbrl_ros.core.lqr.kl_step import (
    CostExpansion,
    TrajOptSettings,
    expected_cost,
    forward,
    kl_constrained_update,
    kl_divergence,
    lqg_backward,
    policy_arrays,
)
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import Linearization
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

NX, NU, T = 4, 2, 25


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    A = np.eye(NX) + 0.1 * rng.standard_normal((NX, NX))
    A *= 0.98 / np.max(np.abs(np.linalg.eigvals(A)))
    B = rng.standard_normal((NX, NU))
    c = 0.05 * rng.standard_normal(NX)                    # affine drift, like a fitted f0
    M = rng.standard_normal((NX, NX))
    Q = M @ M.T / NX + 0.1 * np.eye(NX)
    R = 0.5 * np.eye(NU)
    cost = QuadraticCost(Q, R, 5.0 * Q, x_target=rng.standard_normal(NX))
    W = 1e-3 * np.eye(NX)
    dyn = Linearization(np.broadcast_to(A, (T, NX, NX)).copy(),
                        np.broadcast_to(B, (T, NX, NU)).copy(), np.tile(c, (T, 1)),
                        np.broadcast_to(W, (T, NX, NX)).copy())
    x0 = 2.0 * rng.standard_normal(NX)
    S0 = 0.01 * np.eye(NX)
    # any samples: the expansion of a quadratic cost is exact everywhere
    X = rng.standard_normal((3, T + 1, NX))
    U = rng.standard_normal((3, T, NU))
    expansion = CostExpansion.from_samples(cost, X, U)
    ref = LinearGaussianPolicy(K=0.1 * rng.standard_normal((T, NU, NX)),
                               k=0.3 * rng.standard_normal((T, NU)), xbar=np.zeros((T, NX)),
                               cov=np.tile(np.eye(NU), (T, 1, 1)), t0=0.0, dt=0.05,
                               u_min=-np.inf, u_max=np.inf)
    return A, B, c, cost, dyn, x0, S0, expansion, ref


def _riccati(A, B, c, cost):
    """u_t = K_t x + k_t minimising sum 0.5(x-r)'Q(x-r) + 0.5u'Ru + terminal, for
    x' = A x + B u + c (affine LQR, absolute coordinates)."""
    Q, R, Qf, r = cost.Q, cost.R, cost.Qf, cost.x_target
    V, v = Qf, -Qf @ r
    K = np.zeros((T, NU, NX))
    k = np.zeros((T, NU))
    for t in range(T - 1, -1, -1):
        Quu = R + B.T @ V @ B
        Qux = B.T @ V @ A
        qu = B.T @ (v + V @ c)
        K[t] = -np.linalg.solve(Quu, Qux)
        k[t] = -np.linalg.solve(Quu, qu)
        Qxx = Q + A.T @ V @ A
        qx = -Q @ r + A.T @ (v + V @ c)
        V = Qxx + Qux.T @ K[t]
        v = qx + Qux.T @ k[t]
    return K, k


def test_cost_expansion_of_quadratic_cost_is_exact():
    *_, cost, _, _, _, expansion, _ = _problem()
    rng = np.random.default_rng(5)
    x, u = rng.standard_normal(NX), rng.standard_normal(NU)
    z = np.r_[x, u]
    approx = expansion.cc[3] + expansion.cv[3] @ z + 0.5 * z @ expansion.Cm[3] @ z
    assert approx == pytest.approx(float(cost.stage(x[None], u[None])[0]), rel=1e-10)
    approx_f = expansion.cc_final + expansion.cv_final @ x + 0.5 * x @ expansion.Cm_final @ x
    assert approx_f == pytest.approx(cost.terminal(x), rel=1e-10)


def test_loose_bound_gives_the_riccati_solution():
    A, B, c, cost, dyn, x0, S0, expansion, ref = _problem()
    res = kl_constrained_update(dyn, x0, S0, expansion, ref, epsilon=1e9)
    assert res.status == "inactive"
    assert res.eta == pytest.approx(TrajOptSettings().min_eta)
    K_ref, k_ref = _riccati(A, B, c, cost)
    K, k, cov = policy_arrays(res.policy)
    np.testing.assert_allclose(K, K_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k, k_ref, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(cov)) < 1e-6            # eta -> 0: deterministic LQR


@pytest.mark.parametrize("epsilon, tol", [(2.0, 0.1), (20.0, 0.1), (20.0, 0.01)])
def test_binding_bound_is_respected(epsilon, tol):
    _, _, _, _, dyn, x0, S0, expansion, ref = _problem(1)
    settings = TrajOptSettings(kl_tolerance=tol)
    res = kl_constrained_update(dyn, x0, S0, expansion, ref, epsilon, settings=settings)
    assert res.status == "converged", res
    assert abs(res.kl - epsilon) <= tol * epsilon
    assert res.iterations < 30
    # The reported KL is the KL of the returned controller under its own marginals.
    K, k, cov = policy_arrays(res.policy)
    ref_K, ref_k, ref_cov = policy_arrays(ref)
    marg = forward(K, k, cov, dyn, x0, S0)
    kl = kl_divergence(K, k, cov, ref_K, ref_k, np.linalg.inv(ref_cov),
                       np.linalg.slogdet(ref_cov)[1], marg)
    assert kl.sum() == pytest.approx(res.kl, rel=1e-9)
    # The step improves on the reference but not beyond the unconstrained optimum.
    c_ref = expected_cost(forward(ref_K, ref_k, ref_cov, dyn, x0, S0), expansion).sum()
    lqr = kl_constrained_update(dyn, x0, S0, expansion, ref, 1e9)
    assert lqr.expected_cost < res.expected_cost < c_ref


def test_kl_falls_with_eta():
    _, _, _, _, dyn, x0, S0, expansion, ref = _problem(2)
    ref_K, ref_k, ref_cov = policy_arrays(ref)
    prec = np.linalg.inv(ref_cov)
    logdet = np.linalg.slogdet(ref_cov)[1]
    kls = []
    for eta in np.logspace(-3, 4, 8):
        K, k, cov, _, used = lqg_backward(dyn, expansion, ref_K, ref_k, prec, eta)
        assert used == eta
        kls.append(kl_divergence(K, k, cov, ref_K, ref_k, prec, logdet,
                                 forward(K, k, cov, dyn, x0, S0)).sum())
    assert np.all(np.diff(kls) < 0)
    assert kls[-1] < 1e-3 * kls[0]


def test_marginals_and_kl_match_monte_carlo():
    _, _, _, _, dyn, x0, S0, expansion, ref = _problem(3)
    res = kl_constrained_update(dyn, x0, S0, expansion, ref, 5.0)
    K, k, cov = policy_arrays(res.policy)
    rng = np.random.default_rng(0)
    n = 20000
    x = rng.multivariate_normal(x0, S0, size=n)
    Lw = np.linalg.cholesky(dyn.cov[0])
    ref_K, ref_k, ref_cov = policy_arrays(ref)
    ref_prec = np.linalg.inv(ref_cov)
    kl_mc = 0.0
    t_check = 10
    for t in range(T):
        if t == t_check:
            z = np.concatenate([x, x @ K[t].T + k[t]], axis=1)
            np.testing.assert_allclose(x.mean(0), res.marginals.mu[t, :NX], atol=0.02)
            np.testing.assert_allclose(np.cov(x.T), res.marginals.sigma[t, :NX, :NX],
                                       rtol=0.05, atol=0.06)   # ~4 sampling std
        # analytic KL between the two conditionals, averaged over sampled states
        d = x @ (K[t] - ref_K[t]).T + k[t] - ref_k[t]
        kl_mc += 0.5 * (np.trace(ref_prec[t] @ cov[t]) - NU
                        + np.linalg.slogdet(ref_cov[t])[1] - np.linalg.slogdet(cov[t])[1]
                        + np.mean(np.einsum("ni,ij,nj->n", d, ref_prec[t], d)))
        u = x @ K[t].T + k[t] + rng.standard_normal((n, NU)) @ np.linalg.cholesky(cov[t]).T
        x = x @ dyn.fx[t].T + u @ dyn.fu[t].T + dyn.f0[t] + rng.standard_normal((n, NX)) @ Lw.T
    assert z.shape == (n, NX + NU)
    assert kl_mc == pytest.approx(res.kl, rel=0.05)


def test_non_pd_action_cost_raises_eta():
    """A concave action cost makes Q_uu indefinite for small eta: the update raises eta
    until the surrogate's Q_uu (which gains the reference precision) is PD."""
    _, _, _, _, dyn, x0, S0, _, ref = _problem(4)
    cost = QuadraticCost(0.01 * np.eye(NX), -2.0 * np.eye(NU))
    X = np.zeros((2, T + 1, NX))
    U = np.zeros((2, T, NU))
    expansion = CostExpansion.from_samples(cost, X, U)
    ref_K, ref_k, ref_cov = policy_arrays(ref)
    prec = np.linalg.inv(ref_cov)
    *_, q_uu, used = lqg_backward(dyn, expansion, ref_K, ref_k, prec, 1e-6)
    assert used > 1e-6
    assert np.all(np.linalg.eigvalsh(q_uu) > 0)
    res = kl_constrained_update(dyn, x0, S0, expansion, ref, 1.0, eta=1e-6)
    assert np.all(np.linalg.eigvalsh(res.policy.cov) > 0)
    assert res.kl <= 1.1


def test_eta_to_infinity_leaves_the_controller():
    """A vanishing KL bound (eta -> max_eta) hands back the reference controller."""
    _, _, _, _, dyn, x0, S0, expansion, ref = _problem(3)
    res = kl_constrained_update(dyn, x0, S0, expansion, ref, epsilon=1e-9)
    K, k, cov = policy_arrays(res.policy)
    ref_K, ref_k, ref_cov = policy_arrays(ref)
    assert res.kl < 1e-6
    np.testing.assert_allclose(K, ref_K, atol=1e-4)
    np.testing.assert_allclose(k, ref_k, atol=1e-4)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-5)
