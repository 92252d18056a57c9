"""KL-constrained LQG update: the trajectory-optimisation step (C-step) of guided policy
search.

Given time-varying linear-Gaussian dynamics

    x_{t+1} ~ N(fx[t] x_t + fu[t] u_t + f0[t], W[t]),          x_0 ~ N(mu_0, S_0),

a quadratic model of the cost (:class:`CostExpansion`), a reference linear-Gaussian
controller p_ref(u_t | x_t) = N(K_r x_t + k_r, S_r) and a bound epsilon, find the
linear-Gaussian controller p(u_t | x_t) = N(K x_t + k, S) solving

    min_p  E_p[ sum_t l(x_t, u_t) + l_T(x_T) ]   s.t.  sum_t E_p[ KL(p(.|x_t) || p_ref(.|x_t)) ] <= epsilon

(Levine & Abbeel, "Learning Neural Network Policies with Guided Policy Search under
Unknown Dynamics", NIPS 2014, Sec. 3; in MDGPS the reference is the global policy's
linearisation, Montgomery & Levine, "Guided Policy Search via Approximate Mirror Descent",
NIPS 2016). The Lagrangian with dual variable eta > 0 is, divided by eta, a maximum-entropy
LQR problem with the surrogate cost l/eta - log p_ref(u|x): its solution is a Riccati sweep
(:func:`lqg_backward`) giving K = -Q_uu^-1 Q_ux, k = -Q_uu^-1 q_u and S = Q_uu^-1. The
KL of the result falls monotonically with eta; eta is bracketed in log space (factor-10
moves, then safeguarded secant steps on log KL vs log eta) until the KL is within
``kl_tolerance`` * epsilon of epsilon, or eta reaches ``min_eta`` with the KL still below
epsilon (constraint inactive: the result is the plain LQR controller) or ``max_eta`` with
it still above. A Q_uu that is not positive definite raises eta (eta0 + d, d doubling from
``eta_increment``) and repeats the sweep, as the reference implementation does
(cbfinn/gps ``TrajOptLQRPython``).

Conventions follow :class:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy`:
T steps, states x_0 .. x_T, actions u_0 .. u_{T-1}, cost ``sum_t stage(x_t, u_t) +
terminal(x_T)``; controllers are held as LinearGaussianPolicy objects and used in their
GPS form (K, ``k_gps``, cov). :func:`sample_kl` measures the KL of an update on sampled
states instead of the fitted state marginals (what its bound became on the system).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from mbrl_ros.core.costs.quadratic import Cost
from mbrl_ros.core.models.base import Linearization
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import setting

__all__ = ["TrajOptSettings", "CostExpansion", "Marginals", "TrajOptResult", "TrajOptError",
           "sample_costs", "forward", "expected_cost", "kl_divergence", "lqg_backward",
           "kl_constrained_update", "policy_arrays", "sample_kl"]


class TrajOptError(ValueError):
    """The update cannot be computed (non-finite dynamics, no PD solution)."""


@dataclass(frozen=True)
class TrajOptSettings:
    """Dual (eta) search of the KL-constrained update (defaults from cbfinn/gps)."""
    min_eta: float = setting(1e-8, "smallest dual variable; the KL at min_eta below epsilon "
                             "means the constraint is inactive (plain LQR)", low=1e-300)
    max_eta: float = setting(1e16, "largest dual variable (the update is then the reference)",
                             low=1e-300)
    kl_tolerance: float = setting(0.1, "accept eta when |KL - epsilon| <= this * epsilon",
                                  low=1e-9, high=1.0)
    max_iterations: int = setting(50, "backward/forward passes of the eta search", low=1,
                                  high=10000)
    eta_increment: float = setting(1e-4, "first increase of eta when Q_uu is not positive "
                                   "definite (doubled on each further failure)", low=1e-300)


@dataclass(frozen=True)
class CostExpansion:
    """Quadratic model of a trajectory cost in absolute coordinates, z_t = [x_t; u_t]:

        l_t(z) ~ cc[t] + cv[t]' z + 0.5 z' Cm[t] z        (t < T)
        l_T(x) ~ cc_final + cv_final' x + 0.5 x' Cm_final x

    Attributes:
        Cm: (T, n, n), cv: (T, n), cc: (T,) with n = nx + nu.
        Cm_final: (nx, nx), cv_final: (nx,), cc_final: float.
    """
    Cm: np.ndarray
    cv: np.ndarray
    cc: np.ndarray
    Cm_final: np.ndarray
    cv_final: np.ndarray
    cc_final: float

    @property
    def horizon(self) -> int:
        return int(self.Cm.shape[0])

    @property
    def nx(self) -> int:
        return int(self.Cm_final.shape[0])

    @property
    def nu(self) -> int:
        return int(self.Cm.shape[1]) - self.nx

    @classmethod
    def from_samples(cls, cost: Cost, X: np.ndarray, U: np.ndarray) -> "CostExpansion":
        """Second-order expansion of ``cost`` around each sample, shifted to absolute
        coordinates and averaged over the samples (cbfinn/gps ``Algorithm._eval_cost``).

        Args:
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost` with analytic derivatives.
            X: (N, T+1, nx) sampled states; U: (N, T, nu) sampled actions.
        """
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        N, T, nu = U.shape
        nx = X.shape[2]
        n = nx + nu
        Cm = np.zeros((T, n, n))
        cv = np.zeros((T, n))
        cc = np.zeros(T)
        Cf = np.zeros((nx, nx))
        cf = np.zeros(nx)
        ccf = 0.0
        for i in range(N):
            xs, us = X[i, :T], U[i]
            lx, lu, lxx, luu, lux = cost.stage_derivatives(xs, us)
            H = np.empty((T, n, n))
            H[:, :nx, :nx] = lxx
            H[:, nx:, nx:] = luu
            H[:, nx:, :nx] = lux
            H[:, :nx, nx:] = np.swapaxes(lux, 1, 2)
            g = np.concatenate([lx, lu], axis=1)
            z = np.concatenate([xs, us], axis=1)
            Hz = np.einsum("tij,tj->ti", H, z)
            # l(z) ~ l(z^) + g'(z - z^) + 0.5 (z - z^)' H (z - z^), collected in powers of z
            Cm += H
            cv += g - Hz
            cc += cost.stage(xs, us) - np.sum(g * z, axis=1) + 0.5 * np.sum(z * Hz, axis=1)
            gf, Hf = cost.terminal_derivatives(X[i, T])
            Hf = np.asarray(Hf, dtype=np.float64)
            Hzf = Hf @ X[i, T]
            Cf += Hf
            cf += gf - Hzf
            ccf += cost.terminal(X[i, T]) - float(gf @ X[i, T]) + 0.5 * float(X[i, T] @ Hzf)
        Cm = 0.5 * (Cm + np.swapaxes(Cm, 1, 2)) / N
        return cls(Cm, cv / N, cc / N, 0.5 * (Cf + Cf.T) / N, cf / N, ccf / N)


def sample_costs(cost: Cost, X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Cost of every step of every sample: (N, T+1), column T the terminal cost.

    Args:
        X: (N, T+1, nx) states; U: (N, T, nu) actions.
    """
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    N, T = U.shape[:2]
    out = np.empty((N, T + 1))
    for i in range(N):
        out[i, :T] = cost.stage(X[i, :T], U[i])
        out[i, T] = cost.terminal(X[i, T])
    return out


@dataclass(frozen=True)
class Marginals:
    """Gaussian state-action marginals of a linear-Gaussian controller under TVLG dynamics.

    Attributes:
        mu: (T, nx + nu) means of [x_t; u_t]; sigma: (T, nx + nu, nx + nu) covariances.
        mu_final: (nx,) mean and sigma_final: (nx, nx) covariance of x_T.
    """
    mu: np.ndarray
    sigma: np.ndarray
    mu_final: np.ndarray
    sigma_final: np.ndarray

    @property
    def state_means(self) -> np.ndarray:
        """(T+1, nx) mean states x_0 .. x_T."""
        nx = self.mu_final.shape[0]
        return np.concatenate([self.mu[:, :nx], self.mu_final[None]], axis=0)


def policy_arrays(policy: LinearGaussianPolicy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K (T, nu, nx), k (T, nu), cov (T, nu, nu)) of a controller in GPS form
    u ~ N(K x + k, cov).

    Raises:
        TrajOptError: the policy has no covariance.
    """
    if policy.cov is None:
        raise TrajOptError("a linear-Gaussian controller with a covariance is needed")
    return policy.K, policy.k_gps, policy.cov


def forward(K: np.ndarray, k: np.ndarray, cov: np.ndarray, dynamics: Linearization,
            x0_mean: np.ndarray, x0_cov: np.ndarray) -> Marginals:
    """State-action marginals of u ~ N(K x + k, cov) under the TVLG dynamics (the LQR
    forward pass of cbfinn/gps ``TrajOptLQRPython.forward``).

    Args:
        K: (T, nu, nx), k: (T, nu), cov: (T, nu, nu) controller in GPS form.
        dynamics: fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx), cov (T, nx, nx) or None.
        x0_mean: (nx,), x0_cov: (nx, nx) initial-state distribution.
    """
    T, nu, nx = K.shape
    n = nx + nu
    Fm = np.concatenate([dynamics.fx[:T], dynamics.fu[:T]], axis=2)        # (T, nx, n)
    f0 = dynamics.f0
    W = dynamics.cov
    mu = np.empty((T, n))
    sigma = np.empty((T, n, n))
    mx = np.asarray(x0_mean, dtype=np.float64)
    Sx = np.asarray(x0_cov, dtype=np.float64)
    dot = np.dot
    for t in range(T):
        Kt = K[t]
        SK = dot(Sx, Kt.T)
        s = sigma[t]
        s[:nx, :nx] = Sx
        s[:nx, nx:] = SK
        s[nx:, :nx] = SK.T
        s[nx:, nx:] = dot(Kt, SK) + cov[t]
        mu[t, :nx] = mx
        mu[t, nx:] = dot(Kt, mx) + k[t]
        F = Fm[t]
        Sx = dot(F, dot(s, F.T))
        if W is not None:
            Sx += W[t]
        Sx = 0.5 * (Sx + Sx.T)
        mx = dot(F, mu[t]) + f0[t]
    return Marginals(mu, sigma, mx, Sx)


def expected_cost(marginals: Marginals, expansion: CostExpansion) -> np.ndarray:
    """Expected cost of each step under the marginals and the quadratic cost model
    (the Laplace estimate of cbfinn/gps ``estimate_cost``): (T+1,), entry T terminal."""
    mu, S = marginals.mu, marginals.sigma
    Cm = expansion.Cm
    e = (expansion.cc + 0.5 * np.einsum("tij,tji->t", S, Cm)
         + 0.5 * np.einsum("ti,tij,tj->t", mu, Cm, mu) + np.einsum("ti,ti->t", mu, expansion.cv))
    mf, Sf = marginals.mu_final, marginals.sigma_final
    ef = (expansion.cc_final + 0.5 * float(np.sum(Sf * expansion.Cm_final))
          + 0.5 * float(mf @ expansion.Cm_final @ mf) + float(mf @ expansion.cv_final))
    return np.append(e, ef)


def _chol_logdet_inv(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-determinants (T,) and inverses (T, n, n) of SPD matrices (T, n, n)."""
    L = np.linalg.cholesky(cov)
    logdet = 2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1)
    Linv = np.linalg.inv(L)
    return logdet, np.swapaxes(Linv, 1, 2) @ Linv


def kl_divergence(K: np.ndarray, k: np.ndarray, cov: np.ndarray, ref_K: np.ndarray,
                  ref_k: np.ndarray, ref_prec: np.ndarray, ref_logdet: np.ndarray,
                  marginals: Marginals) -> np.ndarray:
    """Per-step expected KL(p(.|x_t) || p_ref(.|x_t)) under x_t ~ N(mu_t, S_t) from the
    marginals (cbfinn/gps ``traj_distr_kl_alt``)::

        KL_t = 0.5 [tr(P_r S) - nu + log|S_r| - log|S| + d' P_r d + tr(dK' P_r dK S_x)]

    with dK = K - K_r, d = dK mu_x + k - k_r, P_r = S_r^-1.

    Args:
        K (T, nu, nx), k (T, nu), cov (T, nu, nu): new controller; ref_K, ref_k: reference
            gains; ref_prec (T, nu, nu): inverse reference covariance; ref_logdet (T,):
            log-determinant of the reference covariance.

    Returns:
        (T,) KL per step [nats], clipped at 0.
    """
    nx = K.shape[2]
    nu = K.shape[1]
    mu_x = marginals.mu[:, :nx]
    S_x = marginals.sigma[:, :nx, :nx]
    dK = K - ref_K
    d = np.einsum("tij,tj->ti", dK, mu_x) + k - ref_k
    logdet_new = 2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(cov), axis1=1, axis2=2)),
                              axis=1)
    PdK = ref_prec @ dK                                                    # (T, nu, nx)
    kl = 0.5 * (np.einsum("tij,tji->t", ref_prec, cov) - nu + ref_logdet - logdet_new
                + np.einsum("ti,tij,tj->t", d, ref_prec, d)
                + np.einsum("tji,tjk,tki->t", dK, PdK, S_x))
    return np.maximum(kl, 0.0)


def sample_kl(controller: LinearGaussianPolicy, reference: LinearGaussianPolicy,
              X: np.ndarray) -> float:
    """KL(controller || reference) summed over the T steps, averaged over sampled states
    X (N, T, nx) instead of the state marginals under fitted dynamics: what the KL bound
    of a C-step became on the system (cbfinn/gps reports the same check).

    KL_t(x) = 0.5 [tr(P_r S) - nu + log|S_r| - log|S| + d' P_r d], d = (K - K_r) x + k - k_r.
    """
    K, k, cov = policy_arrays(controller)
    rK, rk, rcov = policy_arrays(reference)
    X = np.asarray(X, dtype=np.float64)
    T = X.shape[1]
    K, k, cov, rK, rk, rcov = K[:T], k[:T], cov[:T], rK[:T], rk[:T], rcov[:T]
    nu = K.shape[1]
    rprec = np.linalg.inv(rcov)
    ld_r = np.linalg.slogdet(rcov)[1]
    ld = np.linalg.slogdet(cov)[1]
    d = np.einsum("tij,ntj->nti", K - rK, X) + (k - rk)                    # (N, T, nu)
    quad = np.einsum("nti,tij,ntj->nt", d, rprec, d).mean(axis=0)
    kl = 0.5 * (np.einsum("tij,tji->t", rprec, cov) - nu + ld_r - ld + quad)
    return float(np.maximum(kl, 0.0).sum())


def lqg_backward(dynamics: Linearization, expansion: CostExpansion, ref_K: np.ndarray,
                 ref_k: np.ndarray, ref_prec: np.ndarray, eta: float,
                 eta_increment: float = 1e-4, max_eta: float = 1e16
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Riccati sweep of the eta-weighted surrogate cost l/eta - log p_ref(u|x).

    Per step, with F = [fx fu] and the value V(x) = 0.5 x'V x + v'x of step t+1::

        Q = Cm/eta + PKL + F'V F,    q = cv/eta + pkl + F'(v + V f0),
        K = -Q_uu^-1 Q_ux,  k = -Q_uu^-1 q_u,  S = Q_uu^-1,
        V <- Q_xx + Q_xu K,  v <- q_x + Q_xu k,

    where PKL = [[K_r'P_r K_r, -K_r'P_r], [-P_r K_r, P_r]] and pkl = [K_r'P_r k_r; -P_r k_r]
    are the quadratic and linear terms of -log p_ref (Levine & Abbeel 2014, eq. 4;
    cbfinn/gps ``AlgorithmMDGPS.compute_costs`` and ``TrajOptLQRPython.backward``). The
    value starts from the terminal cost / eta. If some Q_uu is not positive definite the
    sweep is repeated with eta0 + d, d = eta_increment, 2 eta_increment, ...

    Args:
        dynamics: TVLG dynamics (T steps). expansion: quadratic cost model (T steps).
        ref_K (T, nu, nx), ref_k (T, nu): reference controller in GPS form;
        ref_prec (T, nu, nu): its inverse covariance.
        eta: dual variable (> 0).

    Returns:
        K (T, nu, nx), k (T, nu), cov (T, nu, nu), prec (T, nu, nu) = Q_uu, and the eta
        actually used (>= the one given).

    Raises:
        TrajOptError: no positive-definite solution up to ``max_eta`` (or non-finite input).
    """
    T, nu, nx = ref_K.shape
    n = nx + nu
    Fm = np.concatenate([dynamics.fx[:T], dynamics.fu[:T]], axis=2)        # (T, nx, n)
    FmT = np.swapaxes(Fm, 1, 2)
    f0 = dynamics.f0
    KtP = np.swapaxes(ref_K, 1, 2) @ ref_prec                              # (T, nx, nu)
    PKL = np.empty((T, n, n))
    PKL[:, :nx, :nx] = KtP @ ref_K
    PKL[:, :nx, nx:] = -KtP
    PKL[:, nx:, :nx] = -np.swapaxes(KtP, 1, 2)
    PKL[:, nx:, nx:] = ref_prec
    pkl = np.concatenate([np.einsum("tij,tj->ti", KtP, ref_k),
                          -np.einsum("tij,tj->ti", ref_prec, ref_k)], axis=1)
    rhs = np.zeros((nu, nx + 1 + nu))
    eye_u = np.eye(nu)
    eta0 = float(eta)
    step = float(eta_increment)
    potrf, potrs, dot = lapack.dpotrf, lapack.dpotrs, np.dot
    while True:
        K = np.empty((T, nu, nx))
        k = np.empty((T, nu))
        cov = np.empty((T, nu, nu))
        prec = np.empty((T, nu, nu))
        inv_eta = 1.0 / eta
        V = expansion.Cm_final * inv_eta
        v = expansion.cv_final * inv_eta
        Cm = expansion.Cm * inv_eta + PKL
        cv = expansion.cv * inv_eta + pkl
        failed = False
        for t in range(T - 1, -1, -1):
            FtV = dot(FmT[t], V)
            Q = Cm[t] + dot(FtV, Fm[t])
            q = cv[t] + dot(FmT[t], v) + dot(FtV, f0[t])
            Q = 0.5 * (Q + Q.T)
            Quu = Q[nx:, nx:]
            c, info = potrf(Quu, lower=1)
            if info != 0:
                failed = True
                break
            rhs[:, :nx] = Q[nx:, :nx]
            rhs[:, nx] = q[nx:]
            rhs[:, nx + 1:] = eye_u
            sol = potrs(c, rhs, lower=1)[0]
            K[t] = -sol[:, :nx]
            k[t] = -sol[:, nx]
            S = sol[:, nx + 1:]
            cov[t] = 0.5 * (S + S.T)
            prec[t] = Quu
            Qxu = Q[:nx, nx:]
            V = Q[:nx, :nx] + dot(Qxu, K[t])
            V = 0.5 * (V + V.T)
            v = q[:nx] + dot(Qxu, k[t])
        if not failed:
            if not (np.all(np.isfinite(K)) and np.all(np.isfinite(k))):
                raise TrajOptError("the LQG backward pass produced non-finite gains (check "
                                   "the dynamics and the cost for NaN/inf)")
            return K, k, cov, prec, eta
        eta = eta0 + step
        step *= 2.0
        if eta >= max_eta:
            if not (np.all(np.isfinite(Fm)) and np.all(np.isfinite(f0))):
                raise TrajOptError("non-finite dynamics in the LQG backward pass")
            raise TrajOptError("no positive-definite Q_uu even for the largest eta: check "
                               "that the dynamics and the cost are well conditioned")


@dataclass(frozen=True)
class TrajOptResult:
    """Result of :func:`kl_constrained_update`.

    Attributes:
        policy: the new controller (xbar = its mean states, k = its mean actions there).
        marginals: its state-action marginals under the dynamics.
        eta: dual variable of the result.
        kl: total KL to the reference [nats]; kl_steps: (T,) per step.
        epsilon: the bound asked for.
        status: 'converged' (|KL - epsilon| within tolerance), 'inactive' (KL < epsilon
            already at the smallest eta: the constraint does not bind and the result is
            the LQR solution), 'max_eta' (KL > epsilon even at the largest eta) or
            'max_iterations'.
        iterations: backward/forward passes done.
        expected_cost: predicted expected cost under the dynamics and cost model.
        seconds: wall time.
    """
    policy: LinearGaussianPolicy
    marginals: Marginals
    eta: float
    kl: float
    kl_steps: np.ndarray
    epsilon: float
    status: str
    iterations: int
    expected_cost: float
    seconds: float


def kl_constrained_update(dynamics: Linearization, x0_mean: np.ndarray, x0_cov: np.ndarray,
                          expansion: CostExpansion, reference: LinearGaussianPolicy,
                          epsilon: float, eta: float = 1.0,
                          settings: TrajOptSettings | None = None) -> TrajOptResult:
    """New linear-Gaussian controller with expected KL to ``reference`` of about
    ``epsilon`` (or less, when the cost optimum is closer than that).

    Args:
        dynamics: TVLG dynamics for T steps (``cov`` is the process noise; None: 0).
        x0_mean: (nx,), x0_cov: (nx, nx) initial-state distribution.
        expansion: quadratic cost model for the same T.
        reference: controller the KL is measured against (must have a covariance); the
            result takes its t0, dt and action limits.
        epsilon: KL bound [nats], summed over the T steps (> 0).
        eta: initial dual variable (the previous iteration's is a good start).
        settings: :class:`TrajOptSettings`.

    Raises:
        TrajOptError: bad shapes, epsilon <= 0, or no PD solution.
    """
    t_start = time.perf_counter()
    s = settings or TrajOptSettings()
    if not epsilon > 0:
        raise TrajOptError(f"epsilon must be > 0, got {epsilon}")
    ref_K, ref_k, ref_cov = policy_arrays(reference)
    T, nu, nx = ref_K.shape
    if dynamics.horizon < T or expansion.horizon != T or expansion.nx != nx:
        raise TrajOptError(f"horizons/dimensions differ: controller T={T}, nx={nx}, nu={nu}; "
                           f"dynamics T={dynamics.horizon}; cost T={expansion.horizon}, "
                           f"nx={expansion.nx}")
    ref_logdet, ref_prec = _chol_logdet_inv(ref_cov)
    lo, hi = s.min_eta, s.max_eta
    log_kl_lo = log_kl_hi = None
    floor = s.min_eta                  # eta below which Q_uu stopped being PD
    eta = float(min(max(eta, lo), hi))
    log_eps = math.log(epsilon)
    status = "max_iterations"
    best = last = None
    it = 0
    for it in range(1, s.max_iterations + 1):
        K, k, cov, _, used = lqg_backward(dynamics, expansion, ref_K, ref_k, ref_prec,
                                          eta, s.eta_increment, s.max_eta)
        if used > eta:
            floor = max(floor, used)
        eta = used
        marg = forward(K, k, cov, dynamics, x0_mean, x0_cov)
        kl_steps = kl_divergence(K, k, cov, ref_K, ref_k, ref_prec, ref_logdet, marg)
        kl = float(np.sum(kl_steps))
        last = (K, k, cov, marg, kl_steps, kl, eta)
        con = kl - epsilon
        if kl <= epsilon * (1.0 + s.kl_tolerance) and (best is None or kl > best[5]):
            best = last
        if abs(con) <= s.kl_tolerance * epsilon:
            status = "converged"
            break
        if con < 0:                    # KL too small: eta too large
            if eta <= floor * (1.0 + 1e-9):
                status = "inactive"
                break
            hi, log_kl_hi = eta, math.log(max(kl, 1e-300))
        else:
            if eta >= s.max_eta * (1.0 - 1e-9):
                status = "max_eta"
                break
            lo, log_kl_lo = eta, math.log(kl)
        lo = max(lo, floor)
        if log_kl_lo is not None and log_kl_hi is not None and log_kl_lo > log_kl_hi:
            # Secant on log KL as a function of log eta, kept inside the inner 80% of the
            # bracket so that every step shrinks it.
            r = (log_kl_lo - log_eps) / (log_kl_lo - log_kl_hi)
            r = min(max(r, 0.1), 0.9)
            eta = math.exp(math.log(lo) + r * (math.log(hi) - math.log(lo)))
        elif con < 0:
            eta = max(math.sqrt(lo * hi), 0.1 * hi)
        else:
            eta = min(math.sqrt(lo * hi), 10.0 * lo)
    if status in ("max_iterations",) and best is not None:
        last = best                    # never hand back a step that breaks the bound
    K, k, cov, marg, kl_steps, kl, eta = last
    xbar = marg.mu[:, :nx]
    policy = LinearGaussianPolicy(K=K, k=marg.mu[:, nx:], xbar=xbar, cov=cov,
                                  t0=reference.t0, dt=reference.dt, u_min=reference.u_min,
                                  u_max=reference.u_max)
    return TrajOptResult(policy, marg, float(eta), kl, kl_steps, float(epsilon), status, it,
                         float(np.sum(expected_cost(marg, expansion))),
                         time.perf_counter() - t_start)
