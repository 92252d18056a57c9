"""Gaussian mixture model with full covariances, fitted by expectation-maximisation.

Used as the data-driven prior of the time-varying linear-Gaussian dynamics
(:mod:`mbrl_ros.core.models.tvlg`): a mixture over [x_t, u_t, x_{t+1}] whose clusters are
local linear-Gaussian models (Levine & Abbeel 2014, "Learning Neural Network Policies with
Guided Policy Search under Unknown Dynamics", NIPS; Levine, Finn, Darrell &
Abbeel 2016, "End-to-End Training of Deep Visuomotor Policies", JMLR, App. A.3). It is kept
general (any data, any K); the prior built on it, shared by the dynamics and the policy
linearisation, is :mod:`mbrl_ros.core.models.gmm_prior`.

EM follows Bishop, "Pattern Recognition and Machine Learning" (2006), Sec. 9.2.2, with the
E-step in the log domain (log-sum-exp) so points far from every cluster do not underflow,
covariances regularised by ``reg_covar * I`` so clusters with fewer points than dimensions
stay positive definite, and initialisation by k-means (greedy k-means++ seeding, Arthur &
Vassilvitskii 2007, then Lloyd iterations) from a seeded generator so fits are
reproducible; ``n_init`` restarts keep the most likely fit.

Pure numpy/scipy.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

__all__ = ["GaussianMixture", "GMMError"]

_LOG_2PI = math.log(2.0 * math.pi)


class GMMError(ValueError):
    """Invalid input to, or use of, a :class:`GaussianMixture`."""


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, adding diagonal jitter if round-off broke definiteness."""
    d = cov.shape[0]
    jitter = 0.0
    scale = max(float(np.trace(cov)) / d, 1e-300)
    for _ in range(8):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(d))
        except np.linalg.LinAlgError:
            jitter = scale * 1e-12 if jitter == 0.0 else jitter * 100.0
    raise GMMError("covariance is not positive definite even with jitter "
                   f"{jitter:g}; is the data finite?")


def _sq_dist(Z: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances between rows of Z and rows of C."""
    d = np.sum(Z ** 2, axis=1)[:, None] - 2.0 * Z @ C.T + np.sum(C ** 2, axis=1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans(X: np.ndarray, K: int, rng: np.random.Generator, max_iters: int = 30
            ) -> np.ndarray:
    """Cluster labels (N,) from greedy k-means++ seeding and Lloyd iterations.

    Runs in standardised coordinates so a column in large units (efforts in N·m) does not
    decide every distance alone. Greedy seeding (2 + log K candidates per centre, keep the
    one that lowers the k-means cost most) avoids the two-seeds-in-one-cluster failures of
    plain k-means++ that EM cannot undo (greedy k-means++, Arthur & Vassilvitskii 2007).
    """
    N = X.shape[0]
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    Z = (X - X.mean(axis=0)) / scale
    n_trials = 2 + int(math.log(K))
    centres = [int(rng.integers(N))]
    d2 = _sq_dist(Z, Z[centres])[:, 0]
    for _ in range(1, K):
        total = d2.sum()
        if total <= 0:      # every point sits on a centre: any choice is as good
            centres.append(int(rng.integers(N)))
            continue
        cand = rng.choice(N, size=n_trials, p=d2 / total)
        d_cand = np.minimum(d2[:, None], _sq_dist(Z, Z[cand]))     # (N, n_trials)
        best = int(np.argmin(d_cand.sum(axis=0)))
        centres.append(int(cand[best]))
        d2 = d_cand[:, best]
    C = Z[centres].copy()
    labels = np.argmin(_sq_dist(Z, C), axis=1)
    for _ in range(max_iters):
        counts = np.bincount(labels, minlength=K)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # empty centres restart at the points farthest from their own centres
            far = np.argsort(-np.sum((Z - C[labels]) ** 2, axis=1))[:empty.size]
            C[empty[:far.size]] = Z[far]
        for k in np.flatnonzero(counts):
            C[k] = Z[labels == k].mean(axis=0)
        new = np.argmin(_sq_dist(Z, C), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


class GaussianMixture:
    """K-component Gaussian mixture in D dimensions with full covariances.

    Attributes (after :meth:`fit` or :meth:`load_arrays`):
        means: (K, D) component means.
        covariances: (K, D, D) component covariances (regularised, symmetric PD).
        log_weights: (K,) log mixing weights (log-sum-exp to 0).
        n_points: number of points the mixture was fitted on (the prior's pseudo-count
            normalisation of :func:`mbrl_ros.core.models.gmm_prior.niw_prior_steps` uses
            it).
        n_iter: EM iterations of the last fit; converged: whether it met ``tol``.
        log_likelihood: mean log-likelihood per point of the fitted data (nats).

    Args:
        reg_covar: added to every covariance diagonal (data units squared).
        max_iters: EM iteration cap.
        tol: stop when the mean log-likelihood per point changes by less than
            ``tol * (1 + |ll|)``.
        warm_start: start EM from the current components when K and D are unchanged (the
            prior is refitted every GPS iteration on slowly changing data, so the previous
            clusters are a good start and save most iterations).
        n_init: cold starts (k-means initialisations) to run; the fit with the highest
            likelihood is kept. EM only finds a local optimum, and one bad start can merge
            two separate clusters for good.
    """

    def __init__(self, reg_covar: float = 1e-6, max_iters: int = 100, tol: float = 1e-5,
                 warm_start: bool = False, n_init: int = 1):
        if reg_covar < 0 or max_iters < 1 or tol < 0 or n_init < 1:
            raise GMMError(f"need reg_covar >= 0, max_iters >= 1, tol >= 0, n_init >= 1; got "
                           f"{reg_covar}, {max_iters}, {tol}, {n_init}")
        self.n_init = int(n_init)
        self.reg_covar = float(reg_covar)
        self.max_iters = int(max_iters)
        self.tol = float(tol)
        self.warm_start = bool(warm_start)
        self.means: np.ndarray | None = None
        self.covariances: np.ndarray | None = None
        self.log_weights: np.ndarray | None = None
        self.n_points = 0
        self.n_iter = 0
        self.converged = False
        self.log_likelihood = -math.inf
        self._inv_chol: np.ndarray | None = None    # (K, D, D) L^{-1}, cached for E-steps
        self._log_norm: np.ndarray | None = None    # (K,) -D/2 log 2pi - log|L|

    # ------------------------------------------------------------------ properties
    @property
    def fitted(self) -> bool:
        return self.means is not None

    @property
    def n_components(self) -> int:
        self._require_fitted()
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        self._require_fitted()
        return int(self.means.shape[1])

    @property
    def weights(self) -> np.ndarray:
        """(K,) mixing weights."""
        self._require_fitted()
        return np.exp(self.log_weights)

    def _require_fitted(self) -> None:
        if self.means is None:
            raise GMMError("the mixture has not been fitted")

    # ------------------------------------------------------------------ fitting
    def fit(self, X: np.ndarray, K: int, rng: np.random.Generator | None = None
            ) -> "GaussianMixture":
        """Fit K components to the rows of X by EM.

        Args:
            X: (N, D) data, N >= 1.
            K: number of components, 1 <= K.
            rng: generator for the k-means initialisation (default: seed 0); unused by
                a warm start.

        Returns:
            self.

        Raises:
            GMMError: bad shapes, non-finite data or K < 1.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise GMMError(f"X must be (N, D) with N >= 1, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise GMMError("X contains NaN or inf")
        K = int(K)
        if K < 1:
            raise GMMError(f"K must be >= 1, got {K}")
        N, D = X.shape
        rng = rng if rng is not None else np.random.default_rng(0)
        self.n_points = N

        global_cov = np.atleast_2d(np.cov(X, rowvar=False, bias=True)) if N > 1 else \
            np.zeros((D, D))
        if self.warm_start and self.means is not None and self.means.shape == (K, D):
            self._em(X, global_cov)
            return self
        best = None
        for _ in range(self.n_init):
            self._init_kmeans(X, K, rng, global_cov)
            self._em(X, global_cov)
            if best is None or self.log_likelihood > best[0]:
                best = (self.log_likelihood, self.means, self.covariances, self.log_weights,
                        self.n_iter, self.converged)
        (self.log_likelihood, self.means, self.covariances, self.log_weights, self.n_iter,
         self.converged) = best
        self._refresh_cache()
        return self

    def _em(self, X: np.ndarray, global_cov: np.ndarray) -> None:
        self._refresh_cache()
        prev = -math.inf
        self.converged = False
        self.n_iter = 0
        for it in range(self.max_iters):
            # E-step
            logp = self.log_prob_components(X)                 # (N, K)
            ll_n = logsumexp(logp, axis=1)                     # (N,)
            ll = float(ll_n.mean())
            self.n_iter = it + 1
            self.log_likelihood = ll
            if abs(ll - prev) <= self.tol * (1.0 + abs(ll)):
                self.converged = True
                return
            prev = ll
            resp = np.exp(logp - ll_n[:, None])                # (N, K), rows sum to 1
            # M-step
            self._m_step(X, resp, ll_n, global_cov)
            self._refresh_cache()
        # the last M-step changed the parameters: report their likelihood
        self.log_likelihood = float(self.log_likelihood_points(X).mean())

    def _init_kmeans(self, X: np.ndarray, K: int, rng: np.random.Generator,
                     global_cov: np.ndarray) -> None:
        N, D = X.shape
        labels = _kmeans(X, K, rng)
        means = np.empty((K, D))
        covs = np.empty((K, D, D))
        counts = np.bincount(labels, minlength=K).astype(np.float64)
        for k in range(K):
            members = X[labels == k]
            if len(members) == 0:
                members = X[rng.integers(N)][None]
            means[k] = members.mean(axis=0)
            if len(members) > D:
                diff = members - means[k]
                covs[k] = diff.T @ diff / len(members)
            else:
                # too few points for a full covariance: borrow the data's spread
                covs[k] = global_cov
            covs[k] += self.reg_covar * np.eye(D)
        counts = np.maximum(counts, 1.0)
        self.means, self.covariances = means, covs
        self.log_weights = np.log(counts / counts.sum())

    def _m_step(self, X: np.ndarray, resp: np.ndarray, ll_n: np.ndarray,
                global_cov: np.ndarray) -> None:
        N, D = X.shape
        K = resp.shape[1]
        nk = resp.sum(axis=0)                                  # (K,) effective counts
        dead = nk < 1e-4 * N / K
        if np.any(dead):
            # Re-seed collapsed components at the worst-explained points instead of
            # letting them keep a meaningless mean (EM cannot revive them itself).
            worst = np.argsort(ll_n)[:int(dead.sum())]
            resp = resp.copy()
            for k, i in zip(np.flatnonzero(dead), worst):
                resp[:, k] = 0.0
                resp[i, k] = 1.0
            nk = resp.sum(axis=0)
        means = (resp.T @ X) / nk[:, None]
        covs = np.empty((K, D, D))
        eye = np.eye(D)
        for k in range(K):
            diff = X - means[k]
            cov = (diff * resp[:, k:k + 1]).T @ diff / nk[k]
            if nk[k] < 2.0:
                # a component owning about one point has no spread of its own
                cov = cov + global_cov
            covs[k] = 0.5 * (cov + cov.T) + self.reg_covar * eye
        self.means, self.covariances = means, covs
        self.log_weights = np.log(nk) - math.log(nk.sum())

    def _refresh_cache(self) -> None:
        K, D = self.means.shape
        eye = np.eye(D)
        try:
            # one batched LAPACK call; the per-component path below only on failure
            L = np.linalg.cholesky(self.covariances)
        except np.linalg.LinAlgError:
            L = np.stack([_cholesky(c) for c in self.covariances])
        inv = np.stack([scipy.linalg.solve_triangular(L[k], eye, lower=True,
                                                      check_finite=False) for k in range(K)])
        log_norm = -0.5 * D * _LOG_2PI - np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)),
                                                axis=1)
        self._inv_chol, self._log_norm = inv, log_norm

    # ------------------------------------------------------------------ evaluation
    def _check_points(self, X: np.ndarray) -> np.ndarray:
        self._require_fitted()
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise GMMError(f"points must be (N, {self.dim}), got shape {X.shape}")
        if self._inv_chol is None:
            self._refresh_cache()
        return X

    def log_prob_components(self, X: np.ndarray) -> np.ndarray:
        """log(pi_k N(x_n | mu_k, Sigma_k)) for every point and component.

        Args:
            X: (N, D) points.

        Returns:
            (N, K) joint log-densities.
        """
        X = self._check_points(X)
        K = self.means.shape[0]
        out = np.empty((X.shape[0], K))
        for k in range(K):
            # Mahalanobis distance via the cached inverse Cholesky factor
            z = (X - self.means[k]) @ self._inv_chol[k].T
            out[:, k] = self._log_norm[k] - 0.5 * np.einsum("nd,nd->n", z, z)
        return out + self.log_weights

    def log_likelihood_points(self, X: np.ndarray) -> np.ndarray:
        """(N,) log p(x_n) under the mixture."""
        return logsumexp(self.log_prob_components(X), axis=1)

    def responsibilities(self, X: np.ndarray) -> np.ndarray:
        """(N, K) posterior component probabilities p(k | x_n); each row sums to 1."""
        logp = self.log_prob_components(X)
        return np.exp(logp - logsumexp(logp, axis=1, keepdims=True))

    def cluster_weights(self, X: np.ndarray) -> np.ndarray:
        """(K,) responsibilities averaged over the points of X: how much each component
        explains the batch as a whole (Levine et al. 2016, App. A.3)."""
        logp = self.log_prob_components(X)
        logr = logp - logsumexp(logp, axis=1, keepdims=True)
        return np.exp(logsumexp(logr, axis=0) - math.log(logp.shape[0]))

    def moments(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the mixture re-weighted by ``weights``.

        Sigma = sum_k w_k (Sigma_k + (mu_k - mu)(mu_k - mu)^T), the exact second moment of
        the re-weighted mixture.

        Args:
            weights: (K,) or (M, K) non-negative weights, each row summing to 1.

        Returns:
            mu (D,) and Sigma (D, D), or (M, D) and (M, D, D) for 2-D weights.
        """
        self._require_fitted()
        w = np.asarray(weights, dtype=np.float64)
        single = w.ndim == 1
        w = np.atleast_2d(w)
        K, D = self.means.shape
        if w.shape[1] != K:
            raise GMMError(f"weights must have {K} columns, got shape {w.shape}")
        mu = w @ self.means                                    # (M, D)
        second = self.covariances + self.means[:, :, None] * self.means[:, None, :]
        sigma = (w @ second.reshape(K, D * D)).reshape(-1, D, D) - \
            mu[:, :, None] * mu[:, None, :]
        sigma = 0.5 * (sigma + sigma.transpose(0, 2, 1))
        return (mu[0], sigma[0]) if single else (mu, sigma)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self, prefix: str = "gmm") -> dict[str, np.ndarray]:
        """Parameters as plain arrays (empty arrays if never fitted)."""
        if self.means is None:
            return {f"{prefix}_means": np.zeros((0, 0)), f"{prefix}_covariances":
                    np.zeros((0, 0, 0)), f"{prefix}_log_weights": np.zeros(0),
                    f"{prefix}_n_points": np.array(0, dtype=np.int64)}
        return {f"{prefix}_means": self.means.copy(),
                f"{prefix}_covariances": self.covariances.copy(),
                f"{prefix}_log_weights": self.log_weights.copy(),
                f"{prefix}_n_points": np.array(self.n_points, dtype=np.int64)}

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str = "gmm") -> None:
        """Inverse of :meth:`to_arrays`."""
        means = np.asarray(arrays[f"{prefix}_means"], dtype=np.float64)
        if means.size == 0:
            self.means = self.covariances = self.log_weights = None
            self._inv_chol = self._log_norm = None
            self.n_points = 0
            return
        covs = np.asarray(arrays[f"{prefix}_covariances"], dtype=np.float64)
        logw = np.asarray(arrays[f"{prefix}_log_weights"], dtype=np.float64)
        K, D = means.shape
        if covs.shape != (K, D, D) or logw.shape != (K,):
            raise GMMError(f"inconsistent mixture arrays: means {means.shape}, covariances "
                           f"{covs.shape}, log_weights {logw.shape}")
        self.means, self.covariances, self.log_weights = means, covs, logw
        self.n_points = int(arrays[f"{prefix}_n_points"])
        self._refresh_cache()
