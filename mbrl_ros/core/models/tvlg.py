"""Time-varying linear-Gaussian (TVLG) dynamics with a Gaussian-mixture prior.

    x_{t+1} ~ N(fx[t] x_t + fu[t] u_t + f0[t], cov[t]),   t = 0 .. T-1

fitted per time step from N sample trajectories around one nominal trajectory: the local
model that guided policy search and iLQG-style trajectory optimisation work with.

With N < nx + nu + 1 samples per step, the per-step regression is under-determined. Levine
& Abbeel (2014), "Learning Neural Network Policies with Guided Policy Search under Unknown
Dynamics" (NIPS), make it well posed with a normal-inverse-Wishart (NIW) prior on
the joint Gaussian over [x_t, u_t, x_{t+1}], whose parameters come from a Gaussian mixture
model (GMM) fitted to every transition seen so far (all time steps, recent iterations):
each mixture component is a local linear-Gaussian model, and the components that explain
the samples of step t supply the prior for step t. Details follow Levine, Finn, Darrell &
Abbeel (2016), "End-to-End Training of Deep Visuomotor Policies" (JMLR), App. A.3, and the
authors' reference implementation (cbfinn/gps: ``DynamicsPriorGMM``, ``DynamicsLRPrior``,
``gauss_fit_joint_prior``):

* the MAP joint covariance at step t from N samples with mean mu_hat and (1/N) covariance
  S_hat is  Sigma = (N S_hat + Phi + N m / (N + m) (mu_hat - mu0)(mu_hat - mu0)^T) / (N + n0);
  the joint mean is the sample mean (the centroid of N samples is well determined even
  when N is small; only the covariance needs the prior);
* the dynamics are the Gaussian conditional of x_{t+1} given [x_t, u_t];
* mu0, Phi are the moments of the mixture re-weighted by the average responsibilities of
  the step-t samples; m = strength and n0 = strength (N_gmm - 2 - D) / N_gmm, i.e. about
  one pseudo-sample each at strength 1, as in the reference implementation.

Typical GPS use::

    model.update_prior(X, U)          # accumulate this iteration's samples (EM refit)
    model.fit_trajectories(X, U)      # per-step fit, regularised by the prior
    lin = model.linearize(xs, us)     # fx, fu, f0, cov for t = 0 .. T'-1

``fit(batch)`` does both from a :class:`TransitionBatch` (resetting the prior first, so its
result depends only on the batch).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec, check_trajectory, check_xu)
from mbrl_ros.core.models.gmm import GaussianMixture
from mbrl_ros.core.models.gmm_prior import GMMPrior, gauss_fit_joint_prior
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch

__all__ = ["TVLGModel", "TVLGSettings", "DynamicsPriorGMM", "gauss_fit_joint_prior",
           "initial_state_estimate"]


@dataclass(frozen=True)
class TVLGSettings:
    """Hyper-parameters of :class:`TVLGModel` (defaults from cbfinn/gps)."""
    horizon: int = setting(
        0, "time steps T to fit; 0 = the shortest episode's length. Longer episodes are "
        "truncated to T, shorter ones are an error", unit="steps", low=0)
    strength: float = setting(
        1.0, "scale of the GMM prior's pseudo-counts m and n0 (1 ~ one extra sample); "
        "0 disables the prior (plain per-step regression, needs N > nx + nu)", low=0.0,
        high=1e6)
    max_samples: int = setting(
        20, "most recent trajectories the prior keeps and fits its GMM on", low=1)
    min_samples_per_cluster: int = setting(
        20, "GMM clusters K = clip(points / this, 2, max_clusters)", low=1)
    max_clusters: int = setting(50, "upper bound on the prior's GMM clusters", low=2)
    gmm_max_iters: int = setting(100, "EM iteration cap of the prior's GMM", low=1)
    gmm_restarts: int = setting(
        1, "k-means initialisations of a cold GMM fit (best likelihood kept); warm-started "
        "refits use the previous clusters instead", low=1)
    gmm_tol: float = setting(
        1e-5, "EM stops when the mean log-likelihood per point changes by less than "
        "tol * (1 + |ll|)", low=0.0)
    gmm_reg: float = setting(
        1e-6, "added to every GMM cluster covariance diagonal (data units squared)", low=0.0)
    regularization: float = setting(
        1e-6, "added to the [x, u] block diagonal of each step's joint covariance before "
        "conditioning (data units squared)", low=0.0)
    initial_state_var: float = setting(
        1e-6, "floor on the initial-state variance estimate (state units squared)", low=0.0)
    seed: int = setting(0, "seed of the GMM's k-means initialisation when fit() or "
                           "update_prior() is given no generator", low=0)


# ---------------------------------------------------------------------- prior
class DynamicsPriorGMM(GMMPrior):
    """NIW prior for per-step dynamics from a GMM over [x_t, u_t, x_{t+1}] points
    (Levine et al. 2016, App. A.3; the mixture, K and the evaluation:
    :class:`~mbrl_ros.core.models.gmm_prior.GMMPrior`).

    The prior keeps the transitions of the ``max_samples`` most recent trajectories and
    refits its mixture (warm-started) on every :meth:`update`.

    Args:
        max_samples: trajectories kept; min_samples_per_cluster, max_clusters: choose
            K = clip(floor(points / min_samples_per_cluster), 2, max_clusters);
        strength: multiplies the pseudo-counts; max_iters, tol, reg_covar, n_init: EM
            settings (see :class:`GaussianMixture`).
    """

    what = "dynamics prior"

    def __init__(self, max_samples: int = 20, min_samples_per_cluster: int = 20,
                 max_clusters: int = 50, strength: float = 1.0, max_iters: int = 100,
                 tol: float = 1e-5, reg_covar: float = 1e-6, n_init: int = 1):
        super().__init__(max_samples, min_samples_per_cluster, max_clusters, strength,
                         max_iters, tol, reg_covar, n_init)
        self.nx = 0
        self.nu = 0
        self.points = np.zeros((0, 0))                  # (P, 2 nx + nu) kept transitions
        self.traj_lengths = np.zeros(0, dtype=np.int64)  # transitions per kept trajectory
        self.x0 = np.zeros((0, 0))                      # (n_traj, nx) initial states

    @property
    def n_trajectories(self) -> int:
        return int(self.traj_lengths.size)

    def reset(self) -> None:
        """Forget all data and the mixture."""
        self.points = np.zeros((0, 0))
        self.traj_lengths = np.zeros(0, dtype=np.int64)
        self.x0 = np.zeros((0, 0))
        self.gmm.load_arrays(GaussianMixture().to_arrays())
        self.nx = self.nu = 0

    def update(self, X: Sequence[np.ndarray] | np.ndarray,
               U: Sequence[np.ndarray] | np.ndarray,
               rng: np.random.Generator | None = None) -> None:
        """Add trajectories and refit the mixture.

        Args:
            X: (N, T+1, nx) states or a list of (T_i+1, nx) arrays (lengths may differ).
            U: (N, T, nu) actions or a list of (T_i, nu) arrays.
            rng: generator for the mixture's initialisation.

        Raises:
            ModelError: inconsistent shapes or non-finite values.
        """
        Xs, Us = _as_trajectory_lists(X, U)
        nx, nu = Xs[0].shape[1], Us[0].shape[1]
        if self.n_trajectories and (nx, nu) != (self.nx, self.nu):
            raise ModelError(f"prior holds data with nx={self.nx}, nu={self.nu}; got "
                             f"nx={nx}, nu={nu}")
        self.nx, self.nu = nx, nu
        new_pts = [np.concatenate([x[:-1], u, x[1:]], axis=1) for x, u in zip(Xs, Us)]
        lengths = np.array([len(p) for p in new_pts], dtype=np.int64)
        pts = np.concatenate([self.points, *new_pts], axis=0) if self.points.size else \
            np.concatenate(new_pts, axis=0)
        lens = np.concatenate([self.traj_lengths, lengths])
        x0 = np.concatenate([self.x0.reshape(-1, nx), np.stack([x[0] for x in Xs])])
        drop = max(0, lens.size - self.max_samples)
        if drop:
            pts = pts[int(lens[:drop].sum()):]
            lens, x0 = lens[drop:], x0[drop:]
        self.points, self.traj_lengths, self.x0 = pts, lens, x0
        self.fit_points(pts, rng=rng)

    def eval(self, Dx: int, Du: int, pts: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """NIW parameters for one batch of [x_t, u_t, x_{t+1}] points.

        Args:
            Dx, Du: state and action dimensions; pts: (N, Dx + Du + Dx).

        Returns:
            mu0 (D,), Phi (D, D) (scaled by m), m, n0.
        """
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 * Dx + Du:
            raise ModelError(f"prior points must be (N, {2 * Dx + Du}), got {pts.shape}")
        mu0, Phi, m, n0 = self.eval_steps(pts[:, None, :])
        return mu0[0], Phi[0], m, n0

    def initial_state(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """NIW prior (mu0 (nx,), Phi (nx, nx) scaled by m, m, n0) for the initial state,
        from the kept trajectories' initial states (diagonal, pseudo-counts nx·strength)."""
        if not self.n_trajectories:
            raise ModelError("the dynamics prior has no data yet (call update first)")
        mu0 = self.x0.mean(axis=0)
        phi = np.diag(self.x0.var(axis=0))
        m = n0 = self.nx * self.strength
        return mu0, phi * m, m, n0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Kept data and mixture as plain arrays (prefix ``prior_`` / ``prior_gmm_``)."""
        return {"prior_points": self.points.copy(),
                "prior_traj_lengths": self.traj_lengths.copy(), "prior_x0": self.x0.copy(),
                "prior_dims": np.array([self.nx, self.nu], dtype=np.int64),
                **self.gmm.to_arrays("prior_gmm")}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`to_arrays`."""
        self.nx, self.nu = (int(v) for v in arrays["prior_dims"])
        self.points = np.asarray(arrays["prior_points"], dtype=np.float64)
        self.traj_lengths = np.asarray(arrays["prior_traj_lengths"], dtype=np.int64)
        self.x0 = np.asarray(arrays["prior_x0"], dtype=np.float64)
        if int(self.traj_lengths.sum()) != len(self.points):
            raise ModelError(f"prior arrays inconsistent: {len(self.points)} points but "
                             f"trajectory lengths sum to {int(self.traj_lengths.sum())}")
        self.load_gmm_arrays(arrays, "prior_gmm")


def _as_trajectory_lists(X, U) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate trajectories given as (N, T+1, nx)/(N, T, nu) arrays or lists of them."""
    Xs = [np.asarray(x, dtype=np.float64) for x in X]
    Us = [np.asarray(u, dtype=np.float64) for u in U]
    if not Xs or len(Xs) != len(Us):
        raise ModelError(f"need the same positive number of state and action trajectories, "
                         f"got {len(Xs)} and {len(Us)}")
    nx, nu = Xs[0].shape[-1], Us[0].shape[-1]
    for i, (x, u) in enumerate(zip(Xs, Us)):
        if x.ndim != 2 or u.ndim != 2 or x.shape[1] != nx or u.shape[1] != nu or \
                len(x) != len(u) + 1 or len(u) < 1:
            raise ModelError(f"trajectory {i}: expected states (T+1, {nx}) and actions "
                             f"(T, {nu}) with T >= 1, got {x.shape} and {u.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(u))):
            raise ModelError(f"trajectory {i} contains NaN or inf")
    return Xs, Us


def initial_state_estimate(x0: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean (nx,) and diagonal covariance (nx, nx) of sampled start states x0 (N, nx): the
    sample moments, each variance at least ``floor`` (state units squared;
    :attr:`TVLGSettings.initial_state_var`)."""
    return x0.mean(axis=0), np.diag(np.maximum(x0.var(axis=0), floor))


# ---------------------------------------------------------------------- model
@registry.register("model", "tvlg")
class TVLGModel(DynamicsModel):
    """Per-time-step linear-Gaussian dynamics with a GMM/NIW prior (registry ``tvlg``).

    After fitting: ``fx`` (T, nx, nx), ``fu`` (T, nx, nu), ``f0`` (T, nx), ``cov``
    (T, nx, nx) (state units squared), and the initial-state estimate ``x0_mean`` (nx,),
    ``x0_cov`` (nx, nx). ``t`` in :meth:`predict` counts control periods from the start of
    the episode.
    """

    kind = "tvlg"
    Settings = TVLGSettings
    time_varying = True
    min_transitions = 2

    def __init__(self, settings: TVLGSettings | None = None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        s = self.settings
        self.prior = DynamicsPriorGMM(s.max_samples, s.min_samples_per_cluster,
                                      s.max_clusters, s.strength, s.gmm_max_iters, s.gmm_tol,
                                      s.gmm_reg, s.gmm_restarts)
        self.fx: np.ndarray | None = None
        self.fu: np.ndarray | None = None
        self.f0: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.x0_mean: np.ndarray | None = None
        self.x0_cov: np.ndarray | None = None
        self.last_prior_seconds = 0.0

    @property
    def horizon(self) -> int:
        """Fitted number of steps T (0 before fitting)."""
        return 0 if self.fx is None else int(self.fx.shape[0])

    # ------------------------------------------------------------------ learning
    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Fit from the episodes of ``data`` (each one sample trajectory).

        Resets the prior, fits it on all transitions of the (at most ``max_samples`` most
        recent) episodes (skipped at strength 0), then fits every step t < T on the
        episodes truncated to T = ``horizon`` (or the shortest episode's length).

        Raises:
            ModelError: fewer than 2 episodes, an episode shorter than the horizon,
                incompatible state/action names or non-finite data.
        """
        t_start = time.perf_counter()
        self._check_fit_data(data)
        episodes = data.episodes()
        if len(episodes) < 2:
            raise ModelError(f"tvlg needs at least 2 episodes (sample trajectories) to fit "
                             f"per-step dynamics; got {len(episodes)}")
        Xs, Us, gaps = [], [], 0.0
        for ep in episodes:
            order = np.argsort(ep.time, kind="stable")
            s, a, ns = ep.states[order], ep.actions[order], ep.next_states[order]
            Xs.append(np.concatenate([s, ns[-1:]], axis=0))
            Us.append(a)
            if len(s) > 1:
                gaps = max(gaps, float(np.max(np.abs(ns[:-1] - s[1:]))))
        lengths = [len(u) for u in Us]
        T = self.settings.horizon or min(lengths)
        short = [(int(ep.episode[0]), n) for ep, n in zip(episodes, lengths) if n < T]
        if short:
            raise ModelError(
                f"tvlg horizon is {T} steps but {len(short)} episode(s) are shorter: "
                + ", ".join(f"episode {e} has {n}" for e, n in short[:10])
                + ("" if len(short) <= 10 else ", ...")
                + f" (episode lengths: min {min(lengths)}, max {max(lengths)}); set horizon "
                  f"<= {min(lengths)} or drop short episodes")
        if rng is None:
            rng = np.random.default_rng(self.settings.seed)
        self.prior.reset()
        if progress is not None:
            progress(0.0)
        if self.settings.strength > 0:
            self.update_prior(Xs, Us, rng=rng)
        if progress is not None:
            progress(0.5)
        X = np.stack([x[:T + 1] for x in Xs])
        U = np.stack([u[:T] for u in Us])
        report = self.fit_trajectories(X, U)
        if gaps > 1e-9:
            report.notes.append(
                f"episodes are not contiguous (max |next_state[t] - state[t+1]| = {gaps:.3g});"
                " states[t] were used as inputs and next_states only for the last step")
        report.fit_seconds = time.perf_counter() - t_start
        if progress is not None:
            progress(1.0)
        return report

    def update_prior(self, X: np.ndarray | Sequence[np.ndarray],
                     U: np.ndarray | Sequence[np.ndarray],
                     rng: np.random.Generator | None = None) -> None:
        """Add sample trajectories to the prior and refit its GMM (EM, warm-started).

        Args:
            X: (N, T+1, nx) states, or a list of (T_i+1, nx); U: (N, T, nu) or (T_i, nu).
            rng: generator for the GMM initialisation (default: ``settings.seed``).
        """
        t0 = time.perf_counter()
        if rng is None:
            rng = np.random.default_rng(self.settings.seed)
        self.prior.update(X, U, rng=rng)
        self.last_prior_seconds = time.perf_counter() - t0

    def fit_trajectories(self, X: np.ndarray, U: np.ndarray) -> FitReport:
        """Fit the per-step dynamics on N trajectories of T steps (the prior is used as it
        is; call :meth:`update_prior` first to include these samples in it).

        Args:
            X: (N, T+1, nx) states, U: (N, T, nu) actions, N >= 2.

        Returns:
            FitReport with metrics ``train_rmse`` (one-step, over all samples and steps),
            ``cov_min_eig``, ``horizon``, ``n_trajectories``, ``prior_clusters``,
            ``prior_seconds`` (last prior update) and ``step_fit_seconds``.

        Raises:
            ModelError: bad shapes, N < 2, non-finite values or dimensions that differ from
                the model's spec or the prior's data.
        """
        t0 = time.perf_counter()
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        if X.ndim != 3 or U.ndim != 3 or X.shape[0] != U.shape[0] or \
                X.shape[1] != U.shape[1] + 1 or U.shape[1] < 1:
            raise ModelError(f"expected X (N, T+1, nx) and U (N, T, nu) with T >= 1, got "
                             f"{X.shape} and {U.shape}")
        N, T, nu = U.shape
        nx = X.shape[2]
        if N < 2:
            raise ModelError(f"tvlg needs at least 2 sample trajectories per fit, got {N}")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(U))):
            raise ModelError("trajectories contain NaN or inf")
        if self.spec is None:
            self.spec = ModelSpec(nx, nu, tuple(f"x{i}" for i in range(nx)),
                                  tuple(f"u{i}" for i in range(nu)), 0.0)
        elif (self.spec.nx, self.spec.nu) != (nx, nu):
            raise ModelError(f"model is for nx={self.spec.nx}, nu={self.spec.nu}; got "
                             f"trajectories with nx={nx}, nu={nu}")
        d_in, D = nx + nu, 2 * nx + nu
        pts = np.concatenate([X[:, :T], U, X[:, 1:]], axis=2)       # (N, T, D)
        use_prior = self.settings.strength > 0 and self.prior.fitted
        notes = []
        if use_prior:
            if (self.prior.nx, self.prior.nu) != (nx, nu):
                raise ModelError(f"prior holds data with nx={self.prior.nx}, "
                                 f"nu={self.prior.nu}; got nx={nx}, nu={nu}")
            mu0, Phi, m, n0 = self.prior.eval_steps(pts)
        else:
            mu0, Phi, m, n0 = np.zeros((T, D)), np.zeros((T, D, D)), 0.0, 0.0
            if N <= d_in + 1:
                # N <= nx + nu: the affine map is under-determined; N = nx + nu + 1: it is
                # exactly determined and the residual (noise) covariance is zero
                notes.append(f"no prior and N={N} <= nx + nu + 1 = {d_in + 1}: each step's "
                             "regression is under-determined or has no residual degrees of "
                             "freedom; only 'regularization' keeps it solvable")
        sig_reg = np.zeros((D, D))
        sig_reg[np.arange(d_in), np.arange(d_in)] = self.settings.regularization
        Fm, fv, dyn = gauss_fit_joint_prior(pts, mu0, Phi, m, n0, d_in, sig_reg)
        self.fx = np.ascontiguousarray(Fm[:, :, :nx])
        self.fu = np.ascontiguousarray(Fm[:, :, nx:])
        self.f0 = fv
        self.cov = dyn

        # Initial state: sample moments, variance floored, with the prior's NIW term.
        self.x0_mean, self.x0_cov = initial_state_estimate(X[:, 0],
                                                           self.settings.initial_state_var)
        if use_prior:
            pm, pphi, pmm, _ = self.prior.initial_state()
            d = self.x0_mean - pm
            self.x0_cov = self.x0_cov + pphi + (N * pmm) / (N + pmm) * np.outer(d, d)

        pred = np.einsum("toi,nti->nto", Fm, pts[:, :, :d_in]) + fv
        resid = X[:, 1:] - pred
        min_eig = float(np.min(np.linalg.eigvalsh(dyn)))
        step_seconds = time.perf_counter() - t0
        return FitReport(
            n_train=N * T, n_val=0, fit_seconds=step_seconds,
            metrics={"train_rmse": float(np.sqrt(np.mean(resid ** 2))),
                     "cov_min_eig": min_eig, "horizon": float(T), "n_trajectories": float(N),
                     "prior_clusters": float(self.prior.gmm.n_components if use_prior else 0),
                     "prior_seconds": float(self.last_prior_seconds),
                     "step_fit_seconds": step_seconds},
            notes=notes)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Estimated initial-state mean (nx,) and covariance (nx, nx)."""
        self._require_fitted()
        return self.x0_mean, self.x0_cov

    # ------------------------------------------------------------------ prediction
    def _require_fitted(self) -> None:
        if self.fx is None or self.spec is None:
            raise ModelError("tvlg model is not fitted (call fit or load an artifact)")

    def _steps(self, t, B: int) -> np.ndarray:
        if t is None:
            raise ModelError("tvlg is time-varying: predict needs the time index t "
                             f"(step since the episode start, 0 <= t < {self.horizon})")
        t_arr = np.asarray(t)
        if t_arr.dtype.kind not in "iu":
            if t_arr.dtype.kind == "f" and np.all(t_arr == np.round(t_arr)):
                t_arr = t_arr.astype(np.int64)
            else:
                raise ModelError(f"time index t must be integer, got {t!r}")
        if t_arr.ndim == 0:
            t_arr = np.full(B, int(t_arr))
        elif t_arr.shape != (B,):
            raise ModelError(f"t must be an int or have shape ({B},), got shape {t_arr.shape}")
        if t_arr.size and (t_arr.min() < 0 or t_arr.max() >= self.horizon):
            raise ModelError(f"time index out of range: model covers t = 0 .. "
                             f"{self.horizon - 1}, got {t_arr.min()} .. {t_arr.max()}")
        return t_arr

    def predict(self, x: np.ndarray, u: np.ndarray, t: int | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Mean fx[t] x + fu[t] u + f0[t] (B, nx) and variance diag(cov[t]) (B, nx).

        Args:
            x: (B, nx) or (nx,); u: (B, nu) or (nu,); t: int (all rows) or (B,) ints.

        Raises:
            ModelError: t missing, non-integer or outside 0 .. T-1.
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        t = self._steps(t, x.shape[0])
        mean = np.einsum("bij,bj->bi", self.fx[t], x) + \
            np.einsum("bij,bj->bi", self.fu[t], u) + self.f0[t]
        var = np.diagonal(self.cov, axis1=1, axis2=2)[t].copy()
        return mean, var

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """The fitted matrices for t = 0 .. T'-1, T' = len(xs) <= T.

        The per-step fit does not depend on where it is evaluated (that is what a TVLG
        model is: one affine map per time step, fitted on the samples around the
        trajectory), so xs and us only set T' and are checked for shape.
        """
        self._require_fitted()
        xs, us = check_trajectory(self.spec, xs, us)
        T = xs.shape[0]
        if T > self.horizon:
            raise ModelError(f"linearize asked for {T} steps but the model was fitted for "
                             f"T = {self.horizon}")
        return Linearization(self.fx[:T].copy(), self.fu[:T].copy(), self.f0[:T].copy(),
                             self.cov[:T].copy())

    # ------------------------------------------------------------------ artifacts
    def state_arrays(self) -> dict[str, np.ndarray]:
        """fx, fu, f0, cov, x0_mean, x0_cov and the prior (kept data and GMM), so a
        reloaded model both predicts identically and can keep accumulating prior data."""
        self._require_fitted()
        return {"fx": self.fx, "fu": self.fu, "f0": self.f0, "cov": self.cov,
                "x0_mean": self.x0_mean, "x0_cov": self.x0_cov, **self.prior.to_arrays()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        fx, fu, f0, cov = (np.asarray(arrays[k], dtype=np.float64)
                           for k in ("fx", "fu", "f0", "cov"))
        T, nx = f0.shape
        nu = fu.shape[2]
        if self.spec is not None and (self.spec.nx, self.spec.nu) != (nx, nu):
            raise ModelError(f"tvlg arrays are for nx={nx}, nu={nu}; spec says "
                             f"nx={self.spec.nx}, nu={self.spec.nu}")
        try:
            Linearization(fx, fu, f0, cov)
        except ValueError as e:
            raise ModelError(f"tvlg arrays: {e}") from e
        self.fx, self.fu, self.f0, self.cov = fx, fu, f0, cov
        self.x0_mean = np.asarray(arrays["x0_mean"], dtype=np.float64)
        self.x0_cov = np.asarray(arrays["x0_cov"], dtype=np.float64)
        self.prior.load_arrays(arrays)
