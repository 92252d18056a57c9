"""Time-varying linear-Gaussian fit of a global policy around sample trajectories.

MDGPS constrains each linear-Gaussian controller to stay close to the *global* policy
near that controller's samples, so it needs the global policy as a linear-Gaussian
controller ``pi(u_t | x_t) ~ N(pol_K[t] x_t + pol_k[t], pol_S[t])``. Following Levine et al.
2016 ("End-to-End Training of Deep Visuomotor Policies", JMLR, App. A.4) and cbfinn/gps
(``PolicyPriorGMM``, ``AlgorithmMDGPS._update_policy_fit``), it is fitted per time step by
linear regression of the policy's mean action on the sampled states, regularised by a
normal-inverse-Wishart prior from a Gaussian mixture over [x, pi(x)] points of recent
samples; pol_S is the regression residual plus the policy's own (state-independent)
covariance. The regression, the mixture and the prior's evaluation are the ones the TVLG
dynamics use (:mod:`mbrl_ros.core.models.gmm_prior`); only what the prior keeps differs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mbrl_ros.core.models.gmm_prior import GMMPrior, gauss_fit_joint_prior

__all__ = ["PolicyPriorGMM", "fit_policy_linearization"]


class PolicyPriorGMM(GMMPrior):
    """NIW prior for the per-step policy regression from a GMM over [x, pi(x)] (the
    mixture, K and the evaluation: :class:`~mbrl_ros.core.models.gmm_prior.GMMPrior`).

    The prior keeps the states of the ``max_samples`` most recent trajectories, evaluates
    the *current* policy on all of them at every :meth:`update` and refits its mixture
    (warm-started), so it describes the policy being linearised.

    Args:
        max_samples: trajectories kept; min_samples_per_cluster, max_clusters: the number of
            clusters is clip(points / min_samples_per_cluster, 2, max_clusters);
        strength: multiplies the pseudo-counts (1 ~ one extra sample); max_iters,
            reg_covar: EM settings.
    """

    what = "policy prior"

    def __init__(self, max_samples: int = 20, min_samples_per_cluster: int = 20,
                 max_clusters: int = 50, strength: float = 1.0, max_iters: int = 100,
                 reg_covar: float = 1e-6):
        super().__init__(max_samples, min_samples_per_cluster, max_clusters, strength,
                         max_iters=max_iters, reg_covar=reg_covar)
        self.X: np.ndarray | None = None          # (N_kept, T, nx)
        self.C: np.ndarray | None = None          # (N_kept, nc) context or None

    def update(self, X: np.ndarray, policy_mean: Callable[[np.ndarray], np.ndarray],
               rng: np.random.Generator | None = None, context: np.ndarray | None = None
               ) -> None:
        """Add sample states and refit the mixture on [x, policy_mean(x)].

        Args:
            X: (N, T, nx) states of new trajectories (same T as the kept ones).
            policy_mean: (B, nx) -> (B, nu) mean action of the current policy (with
                ``context``: (B, nx + nc) -> (B, nu) on [x, context] rows).
            context: (N, nc) per-trajectory inputs of a task-conditioned policy (e.g. the
                target of the trajectory's condition), kept with the states; the mixture
                is still over [x, u].
        """
        X = np.asarray(X, dtype=np.float64)
        C = None if context is None else np.asarray(context, dtype=np.float64).reshape(
            len(X), -1)
        if self.X is None or self.X.shape[1:] != X.shape[1:] or \
                (C is None) != (self.C is None) or \
                (C is not None and C.shape[1:] != self.C.shape[1:]):
            self.X, self.C = X, C
        else:
            self.X = np.concatenate([self.X, X], axis=0)[-self.max_samples:]
            if C is not None:
                self.C = np.concatenate([self.C, C], axis=0)[-self.max_samples:]
        N, T, nx = self.X.shape
        flat = self.X.reshape(N * T, nx)
        inputs = flat if self.C is None else np.concatenate(
            [flat, np.repeat(self.C, T, axis=0)], axis=1)
        pts = np.concatenate([flat, policy_mean(inputs)], axis=1)
        self.fit_points(pts, rng=rng)


def fit_policy_linearization(X: np.ndarray, pol_mu: np.ndarray, pol_var: np.ndarray,
                             prior: PolicyPriorGMM | None = None, reg: float = 1e-6
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step linear-Gaussian fit pi(u_t | x_t) ~ N(K[t] x_t + k[t], S[t]).

    Args:
        X: (N, T, nx) sampled states (N >= 2).
        pol_mu: (N, T, nu) the policy's mean actions at those states.
        pol_var: (nu,) diagonal of the policy's covariance (state-independent).
        prior: fitted :class:`PolicyPriorGMM`, or None for the weak constant prior of
            cbfinn/gps ``PolicyPrior`` (zero gains, strength 1e-4).
        reg: added to the state block of each step's joint covariance (states that do not
            vary across samples, e.g. a fixed initial state, keep the fit solvable).

    Returns:
        K (T, nu, nx), k (T, nu), S (T, nu, nu).
    """
    X = np.asarray(X, dtype=np.float64)
    pol_mu = np.asarray(pol_mu, dtype=np.float64)
    N, T, nx = X.shape
    nu = pol_mu.shape[2]
    if N < 2:
        raise ValueError(f"the policy linearisation needs at least 2 samples, got {N}")
    pts = np.concatenate([X, pol_mu], axis=2)
    D = nx + nu
    if prior is not None and prior.fitted:
        mu0, Phi, m, n0 = prior.eval_steps(pts)
    else:
        strength = 1e-4
        Phi1 = np.zeros((D, D))
        Phi1[:nx, :nx] = np.eye(nx)
        Phi1[nx:, nx:] = 1e-5 * np.eye(nu)
        mu0, Phi, m, n0 = np.zeros((T, D)), np.broadcast_to(strength * Phi1, (T, D, D)), \
            0.0, strength
    sig_reg = np.zeros((D, D))
    sig_reg[np.arange(nx), np.arange(nx)] = reg
    Fm, fv, S = gauss_fit_joint_prior(pts, mu0, Phi, m, n0, nx, sig_reg)
    S = S + np.diag(np.asarray(pol_var, dtype=np.float64))
    return Fm, fv, S
