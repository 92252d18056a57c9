"""The Gaussian-mixture normal-inverse-Wishart (NIW) prior of guided policy search, once.

Guided policy search fits two kinds of time-varying linear-Gaussian maps from a handful of
samples per time step: the dynamics x_{t+1} | [x_t, u_t]
(:class:`~mbrl_ros.core.models.tvlg.TVLGModel`) and the global policy's linearisation
u_t | x_t (:mod:`mbrl_ros.core.policies.linearization`). Both are the Gaussian conditional
of a joint Gaussian over the step's points, fitted with a NIW prior whose parameters come
from a Gaussian mixture fitted to the points of recent samples (all time steps): Levine &
Abbeel (2014), "Learning Neural Network Policies with Guided Policy Search under Unknown
Dynamics" (NIPS); Levine, Finn, Darrell & Abbeel (2016), "End-to-End Training of Deep
Visuomotor Policies" (JMLR), App. A.3-A.4; cbfinn/gps ``DynamicsPriorGMM``,
``PolicyPriorGMM``, ``gauss_fit_joint_prior``. This module holds the parts they share:

* :class:`GMMPrior`: the mixture, its cluster count K = clip(points /
  min_samples_per_cluster, 2, max_clusters) and warm-started EM refits, the prior strength,
  and the evaluation for T steps at once (:func:`niw_prior_steps`);
* :func:`niw_prior_steps`: mu0 and Phi are the moments of the mixture re-weighted by the
  average responsibilities of each step's N points; m = strength and
  n0 = strength (N_gmm - 2 - D) / N_gmm (about one pseudo-sample each at strength 1);
* :func:`gauss_fit_joint_prior`: the MAP joint covariance
  Sigma = (N S_hat + Phi + N m / (N + m) (mu_hat - mu0)(mu_hat - mu0)^T) / (N + n0) and its
  linear-Gaussian conditional.

What is kept (transitions of whole trajectories, or states with the current policy's
actions) stays with the two users.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.models.gmm import GaussianMixture, GMMError

__all__ = ["GMMPrior", "niw_prior_steps", "gauss_fit_joint_prior"]


def niw_prior_steps(gmm: GaussianMixture, pts: np.ndarray, strength: float
                    ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """NIW prior per step from a mixture fitted on all data (cbfinn/gps
    ``DynamicsPriorGMM.eval`` / ``PolicyPriorGMM.eval``, for T steps at once).

    Args:
        gmm: the fitted mixture over D-dimensional points.
        pts: (N, T, D) the N samples of each of T steps (T = 1: one batch).
        strength: prior strength m (in pseudo-points).

    Returns:
        mu0 (T, D), Phi (T, D, D) (scaled by m), m, n0 (scalars, shared by all steps).
    """
    N, T, D = pts.shape
    logp = gmm.log_prob_components(pts.reshape(N * T, D)).reshape(N, T, -1)
    # responsibilities per point, averaged over the N samples of each step
    logr = logp - logsumexp(logp, axis=2, keepdims=True)
    wts = np.exp(logsumexp(logr, axis=0) - math.log(N))        # (T, K)
    wts /= wts.sum(axis=1, keepdims=True)
    mu0, phi = gmm.moments(wts)
    n = max(gmm.n_points, 1)
    n0 = strength * max(float(n - 2 - D) / n, 0.0)
    return mu0, phi * strength, strength, n0


def gauss_fit_joint_prior(pts: np.ndarray, mu0: np.ndarray, Phi: np.ndarray, m: float,
                          n0: float, d_in: int, sig_reg: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-Gaussian conditional of a joint Gaussian fitted with a NIW prior, for T
    independent problems at once (Levine & Abbeel 2014; cbfinn/gps
    ``gauss_fit_joint_prior``).

    Args:
        pts: (N, T, D) samples of the joint vector [inputs (d_in), outputs (D - d_in)] at
            each of T steps, equally weighted.
        mu0: (T, D) prior means; Phi: (T, D, D) prior scale matrices (already multiplied
            by m); m, n0: prior pseudo-counts (0 and 0 with Phi = 0 = no prior).
        d_in: number of input dimensions (nx + nu for dynamics, nx for a policy).
        sig_reg: (D, D) added to each joint covariance before conditioning.

    Returns:
        Fm (T, D-d_in, d_in), fv (T, D-d_in), cov (T, D-d_in, D-d_in) such that
        outputs ~ N(Fm @ inputs + fv, cov).

    Raises:
        ModelError: a singular input covariance.
    """
    N = pts.shape[0]
    mun = pts.mean(axis=0)                                         # (T, D)
    diff = pts - mun
    empsig = diff.transpose(1, 2, 0) @ diff.transpose(1, 0, 2) / N         # (T, D, D)
    dm = mun - mu0
    sigma = (N * empsig + Phi + (N * m / (N + m)) * dm[:, :, None] * dm[:, None, :]) / (N + n0)
    sigma = 0.5 * (sigma + sigma.transpose(0, 2, 1)) + sig_reg
    s_ii = sigma[:, :d_in, :d_in]
    s_io = sigma[:, :d_in, d_in:]
    try:
        Fm = np.linalg.solve(s_ii, s_io).transpose(0, 2, 1)        # (T, Do, d_in)
    except np.linalg.LinAlgError as e:
        raise ModelError("the per-step input covariance is singular: some state or action "
                         "column does not vary across samples; set 'regularization' > 0 or "
                         "enable the prior (strength > 0)") from e
    fv = mun[:, d_in:] - np.einsum("toi,ti->to", Fm, mun[:, :d_in])
    dyn = sigma[:, d_in:, d_in:] - Fm @ s_ii @ Fm.transpose(0, 2, 1)
    dyn = 0.5 * (dyn + dyn.transpose(0, 2, 1))
    return Fm, fv, dyn


class GMMPrior:
    """A Gaussian mixture over D-dimensional points that supplies a NIW prior per step.

    Subclasses decide which points are kept (and so D); :meth:`fit_points` refits the
    mixture on them and :meth:`eval_steps` evaluates the prior.

    Args:
        max_samples: trajectories kept (by the subclass);
        min_samples_per_cluster, max_clusters: K = clip(floor(points /
            min_samples_per_cluster), 2, max_clusters), at most the number of points;
        strength: multiplies the pseudo-counts (1 ~ one extra sample);
        max_iters, tol, reg_covar, n_init: EM settings (see :class:`GaussianMixture`);
            refits are warm-started from the previous clusters.
    """

    what = "GMM prior"      # names the prior in error messages

    def __init__(self, max_samples: int = 20, min_samples_per_cluster: int = 20,
                 max_clusters: int = 50, strength: float = 1.0, max_iters: int = 100,
                 tol: float = 1e-5, reg_covar: float = 1e-6, n_init: int = 1):
        self.max_samples = int(max_samples)
        self.min_samples_per_cluster = int(min_samples_per_cluster)
        self.max_clusters = int(max_clusters)
        self.strength = float(strength)
        self.gmm = GaussianMixture(reg_covar=reg_covar, max_iters=max_iters, tol=tol,
                                   warm_start=True, n_init=n_init)

    @property
    def fitted(self) -> bool:
        """True once the mixture has been fitted (the prior is usable)."""
        return self.gmm.fitted

    def n_clusters(self, n_points: int) -> int:
        """Clusters K for ``n_points`` points."""
        K = int(max(2, min(self.max_clusters, n_points // self.min_samples_per_cluster)))
        return min(K, n_points)

    def fit_points(self, pts: np.ndarray, rng: np.random.Generator | None = None) -> None:
        """(Re)fit the mixture on all kept points (P, D).

        Raises:
            ModelError: bad shapes or non-finite points (named after the prior).
        """
        try:
            self.gmm.fit(pts, self.n_clusters(len(pts)), rng=rng)
        except GMMError as e:
            raise ModelError(f"{self.what}: {e}") from e

    def load_gmm_arrays(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        """Restore the mixture from :meth:`GaussianMixture.to_arrays` output.

        Raises:
            ModelError: missing or inconsistent arrays (named after the prior).
        """
        try:
            self.gmm.load_arrays(arrays, prefix)
        except (GMMError, KeyError) as e:
            raise ModelError(f"{self.what}: {e!r}") from e

    def eval_steps(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """NIW parameters for T batches of points.

        Args:
            pts: (N, T, D) the N samples of each of T steps.

        Returns:
            mu0 (T, D), Phi (T, D, D) (scaled by m), m, n0 (scalars, shared by all steps).

        Raises:
            ModelError: the prior has no data yet, or D differs from the fitted points'.
        """
        if not self.fitted:
            raise ModelError(f"the {self.what} has no data yet (call update first)")
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim != 3 or pts.shape[2] != self.gmm.dim:
            raise ModelError(f"{self.what} was fitted on {self.gmm.dim}-D points, got "
                             f"points of shape {pts.shape}")
        return niw_prior_steps(self.gmm, pts, self.strength)
