"""The GP dynamics model (registry name ``gp``): the pieces of the package put together.

Fit: the input pipeline (:class:`~mbrl_ros.core.models.pipeline.DeltaPipeline`: sin/cos
features, normalisation, normalised state-change targets) and the affine prior
(:class:`~mbrl_ros.core.models.pipeline.AffinePrior`) first; the GP models the residual
from the prior. Then the hyper-parameters (:mod:`.hyper`), the outlier down-weighting
(:mod:`.outliers`), and the exact (:mod:`.exact`) or sparse (:mod:`.sparse`) posterior,
which ends as a fast prediction cache (:mod:`.posterior`). Queries and Jacobians go
through the cache, never through GPyTorch (:meth:`GPModel.predict_reference` does, to
verify it). Artifacts: :mod:`.artifact`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import gpytorch
import numpy as np
import torch

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec, check_xu)
from mbrl_ros.core.models.gp import artifact, hyper
from mbrl_ros.core.models.gp.exact import exact_independent, exact_multitask
from mbrl_ros.core.models.gp.kernels import (CHUNK_ELEMENTS, DTYPES, F64, KERNELS,
                                             compute_threads)
from mbrl_ros.core.models.gp.outliers import find_outliers, point_noise
from mbrl_ros.core.models.gp.posterior import KernelPosterior, KroneckerPosterior
from mbrl_ros.core.models.gp.sparse import fit_sparse
from mbrl_ros.core.models.pipeline import AffinePrior, DeltaPipeline, InputFeatures, Normalizer
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch

__all__ = ["GPModel", "KernelDynamics"]


class KernelDynamics(NamedTuple):
    """The GP's posterior mean as plain float64 arrays (numpy, C-contiguous), for compiled
    rollouts (:func:`mbrl_ros.core.lqr.rollout.kernel_rollout_kernel`, whose docstring
    has the formula): input normalisation, affine prior, kernel centres and weights, latent
    mixing and output scaling. Q latents, n centres, n_in = nx + nu inputs."""
    in_mean: np.ndarray     # (n_in,)
    in_istd: np.ndarray     # (n_in,) 1 / std
    prior_W: np.ndarray     # (n_in, nx)
    prior_c: np.ndarray     # (nx,)
    centers: np.ndarray     # (1, n, n_in) shared by the latents, or (Q, n, n_in)
    w: np.ndarray           # (Q, n_in) 1 / lengthscale^2
    alpha: np.ndarray       # (Q, n) weights, outputscale folded in
    mix: np.ndarray         # (Q, nx) latents -> outputs (the identity without mixing)
    kernel: str             # one of KERNELS
    out_std: np.ndarray     # (nx,)
    out_mean: np.ndarray    # (nx,)

# Ridge weight of the affine prior mean (relative to the Gram matrix of the standardised
# inputs): just enough to keep it defined with constant or collinear inputs.
_PRIOR_RIDGE = 1e-6


@registry.register("model", "gp")
class GPModel(DynamicsModel):
    """Gaussian-process model of the state change (registry name ``gp``); see the package
    docstring for the method and the approximations.

    After fitting: ``pipeline`` (features and normalisers; ``features``, ``in_norm``,
    ``out_norm`` are its parts), ``prior`` (affine prior mean in normalised units),
    ``mode`` ('exact' | 'sparse'), ``gp`` / ``likelihood`` (the GPyTorch modules; their
    targets are the residuals from the prior), ``train_z`` (N, n_in) / ``train_y`` (N, nx)
    (normalised inputs and state changes), ``history`` (loss of every optimiser
    evaluation, per point and output) and ``n_outliers``. Beyond the DynamicsModel
    interface: :meth:`predict_mean`, :meth:`noise_variance` and :meth:`predict_reference`
    (GPyTorch's own posterior).
    """

    kind = "gp"
    min_transitions = 10

    @dataclass(frozen=True)
    class Settings:
        kernel: str = setting("rbf", "covariance function, always with one lengthscale per "
                              "input (ARD)", choices=KERNELS)
        mean: str = setting("linear", "prior mean of the state change: 'linear' (affine "
                            "least-squares fit in normalised units, the GP models the "
                            "residual) or 'zero'", choices=("linear", "zero"))
        outputs: str = setting("independent", "'independent': one GP per state dimension "
                               "(batched, fast); 'multitask': coregionalised outputs "
                               "(small problems)", choices=("independent", "multitask"))
        rank: int = setting(1, "multitask exact GP: rank of the task-covariance factor W in "
                            "B = W W^T + diag(v)", low=1, high=1024)
        max_exact: int = setting(3000, "above this many training transitions use a sparse "
                                 "variational GP", low=10, high=100_000)
        n_inducing: int = setting(256, "inducing points per output of the sparse GP",
                                  low=4, high=10_000)
        hyper_subset: int = setting(300, "random training points in the marginal "
                                    "likelihood of the hyper-parameters (lbfgs: one subset; "
                                    "adam: a fresh one every step); the posterior uses all "
                                    "points", low=10, high=100_000)
        iterations: int = setting(50, "optimiser steps (adam) or function evaluations "
                                  "(lbfgs) on the exact marginal likelihood of the "
                                  "hyper-parameters", low=0, high=100_000)
        optimizer: str = setting("lbfgs", "hyper-parameter optimiser: 'adam' (a fresh "
                                 "random subset every step) or 'lbfgs' (one fixed subset, "
                                 "iterations = function evaluations)",
                                 choices=("adam", "lbfgs"))
        lr: float = setting(0.1, "Adam learning rate of the hyper-parameter steps",
                            low=1e-5, high=1.0)
        sparse_iterations: int = setting(0, "sparse GP: minibatch ELBO steps after the "
                                         "closed-form initialisation", low=0, high=1_000_000)
        sparse_lr: float = setting(0.01, "sparse GP: Adam learning rate of the ELBO steps "
                                   "(hyper-parameters, inducing points)", low=1e-6, high=1.0)
        sparse_ngd_lr: float = setting(0.1, "sparse GP: natural-gradient step size of the "
                                       "ELBO steps (variational distribution)",
                                       low=1e-6, high=1.0)
        batch_size: int = setting(512, "sparse GP: minibatch size of the ELBO steps",
                                  low=8, high=1_000_000)
        var_rank: int = setting(64, "exact GP: rank of the predictive-variance cache "
                                "(exact variance if the training set is not larger; else "
                                "an upper bound)", low=1, high=100_000)
        noise_floor: float = setting(1e-4, "lower bound of the noise variance, in units of "
                                     "the variance of each normalised state change",
                                     low=1e-8, high=1.0)
        lengthscale_prior: float = setting(0.7, "standard deviation of the log-normal prior "
                                           "on every ARD lengthscale, centred at "
                                           "sqrt(inputs) in standardised units (the "
                                           "hyper-parameters are its MAP estimate); 0: no "
                                           "prior (maximum likelihood)", low=0.0, high=100.0)
        outlier_threshold: float = setting(4.0, "robust down-weighting: a transition whose "
                                           "held-out residual exceeds this many predictive std in "
                                           "some output gets a larger noise variance (impacts on "
                                           "stops); 0: off; docs/MODELS.md", low=0.0, high=1000.0)
        val_fraction: float = setting(0.1, "share of each episode (its last transitions) "
                                      "held out for validation metrics (0: none)",
                                      low=0.0, high=0.5)
        seed: int = setting(0, "seed of the hyper-parameter subsets, variance-cache "
                            "columns, inducing points and ELBO minibatches (when fit gets "
                            "no generator)", low=0)
        threads: int = setting(1, "torch intra-op threads while fitting and predicting "
                               "(0: leave torch's setting); restored afterwards",
                               low=0, high=256)
        dtype: str = setting("float32", "floating-point type of hyper-parameter and ELBO "
                             "training (the posterior and predictions are float64)",
                             choices=tuple(DTYPES))

    def __init__(self, settings=None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self.torch_dtype = DTYPES[self.settings.dtype]
        self.pipeline: DeltaPipeline | None = None
        self.prior: AffinePrior | None = None
        self.mode: str = ""
        self.gp: gpytorch.models.GP | None = None
        self.likelihood: gpytorch.likelihoods.Likelihood | None = None
        self.train_z: torch.Tensor | None = None
        self.train_y: torch.Tensor | None = None
        self.history: list[float] = []
        self._post: KernelPosterior | KroneckerPosterior | None = None
        # (nx, N) noise variances of down-weighted outlier transitions (0 elsewhere), or None
        self._outlier_noise: torch.Tensor | None = None
        self.n_outliers = 0

    @property
    def features(self) -> InputFeatures | None:
        return self.pipeline.features if self.pipeline else None

    @property
    def in_norm(self) -> Normalizer | None:
        return self.pipeline.in_norm if self.pipeline else None

    @property
    def out_norm(self) -> Normalizer | None:
        return self.pipeline.out_norm if self.pipeline else None

    # ------------------------------------------------------------------ fitting
    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Fit hyper-parameters and the posterior on ``data``.

        Args:
            data: transitions; rows with NaN must have been dropped by the caller.
            rng: source of the seed of every random choice (default: ``settings.seed``).
            progress: called with the fraction done, in [0, 1].

        Returns:
            FitReport with metrics ``val_mse`` (normalised units), ``val_rmse`` (state
            units, averaged over dimensions), ``val_nll`` (mean Gaussian negative log
            density per dimension, normalised units), ``val_z_mean`` / ``val_z_std``
            (calibration: error / predicted std, ideally 0 / 1), ``train_nll`` (last
            hyper-parameter step per point and output: negative log marginal likelihood
            plus the lengthscale prior's term), ``hyper_seconds``, ``posterior_seconds``
            and ``outliers`` (transitions down-weighted, see ``outlier_threshold``).

        Raises:
            ModelError: fewer than ``min_transitions`` transitions, non-finite values, or
                data for other joints than the model's spec.
        """
        s = self.settings
        self._check_fit_data(data)
        for name in ("states", "actions", "next_states"):
            if not np.all(np.isfinite(getattr(data, name))):
                raise ModelError(f"gp: data.{name} contains NaN or inf; drop those rows "
                                 "before fitting")
        seed = int(rng.integers(2 ** 62)) if rng is not None else s.seed
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        report = (lambda f: progress(float(min(max(f, 0.0), 1.0)))) if progress else None
        with compute_threads(s.threads):
            tr, val = self._split(data)
            x, u, xn = data.states[tr], data.actions[tr], data.next_states[tr]
            self.pipeline = DeltaPipeline.fit(self.spec, x, u, xn)
            Z = torch.as_tensor(self.pipeline.inputs(x, u), dtype=self.torch_dtype)
            Y = torch.as_tensor(self.pipeline.targets(x, xn), dtype=self.torch_dtype)
            self.train_z, self.train_y = Z, Y
            self.prior = self._fit_prior(Z, Y)
            Y = (Y.to(F64) - self.prior(Z.to(F64))).to(self.torch_dtype)
            sparse = len(tr) > s.max_exact
            self.mode = "sparse" if sparse else "exact"
            self.history = []
            self._outlier_noise, self.n_outliers = None, 0
            t1 = time.perf_counter()
            if s.outputs == "independent" or sparse:
                gp, lik, idx = hyper.fit_independent(Z, Y, s, self.torch_dtype, gen, report,
                                                     self.history)
                covar = gp.covar_module
                self.gp, self.likelihood = gp, lik
                self._outlier_noise, self.n_outliers = find_outliers(
                    s.kernel, s.outlier_threshold, Z, Y, idx, covar, lik)
            else:
                gp, lik = hyper.fit_multitask(Z, Y, s, self.torch_dtype, gen, report,
                                              self.history)
                covar = gp.covar_module
                self.gp, self.likelihood = gp, lik
            t2 = time.perf_counter()
            if sparse:
                self.gp, self.likelihood, self._post = fit_sparse(
                    Z, Y, covar, lik, s, gen, report, self.history, self._outlier_noise)
            elif s.outputs == "independent":
                self._post = exact_independent(s.kernel, s.var_rank, Z, Y, covar, lik,
                                               self._outlier_noise, gen)
            else:
                self._post = exact_multitask(s.kernel, s.var_rank, Z, Y, covar, lik)
            t3 = time.perf_counter()
            metrics = {"train_nll": self.history[-1] if self.history else math.nan,
                       "hyper_seconds": t2 - t1, "posterior_seconds": t3 - t2,
                       "outliers": float(self.n_outliers)}
            if len(val):
                metrics.update(self._val_metrics(data.subset(val)))
        if report:
            report(1.0)
        notes = [f"{self.mode} GP, {s.outputs} outputs, {s.kernel} kernel, N={len(tr)}"]
        if sparse:
            notes.append(f"N > max_exact={s.max_exact}: sparse variational GP with "
                         f"{self._post.centers.shape[1]} inducing points per output")
        elif s.outputs == "independent" and len(tr) > s.var_rank:
            notes.append(f"predictive variance: rank-{s.var_rank} upper bound (N > var_rank)")
        if self.n_outliers:
            notes.append(f"{self.n_outliers} outlier transitions down-weighted (held-out "
                         f"residual > {s.outlier_threshold:g} sd)")
        return FitReport(len(tr), len(val), time.perf_counter() - t0, metrics, notes)

    def _fit_prior(self, Z: torch.Tensor, Y: torch.Tensor) -> AffinePrior:
        """Affine prior mean of the normalised state change (``mean='linear'``; zero for
        ``mean='zero'``), Z (N, d), Y (N, T).

        Explicit basis functions as in Rasmussen & Williams 2006 sec. 2.7, with the
        coefficients fixed at their ridge estimate instead of marginalised. Why: dynamics
        are close to affine locally (x_{t+1} ~ x_t + dt v_t), so the GP is left with the
        nonlinear residual -- moderate lengthscales (a zero-mean RBF GP fits a linear trend
        with lengthscales and outputscale in the hundreds, badly conditioned in float32)
        and predictions that fall back to the affine model, not to zero change, far from
        the data."""
        d, T = Z.shape[1], Y.shape[1]
        if self.settings.mean == "zero":
            return AffinePrior.zero(d, T)
        return AffinePrior.fit(Z.to(F64).numpy(), Y.to(F64).numpy(), _PRIOR_RIDGE)

    def _point_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """(T, N) noise variances of the posterior's training points (see
        :func:`~mbrl_ros.core.models.gp.outliers.point_noise`)."""
        return point_noise(noise, self._outlier_noise)

    def _val_metrics(self, val: TransitionBatch) -> dict[str, float]:
        mean, var = self._predict_norm(val.states, val.actions)
        y = self.pipeline.targets(val.states, val.next_states)
        err = y - mean
        z = err / np.sqrt(var)
        nll = 0.5 * (np.log(2 * np.pi * var) + z ** 2)
        return {"val_mse": float(np.mean(err ** 2)),
                "val_rmse": float(np.mean(np.sqrt(np.mean((err * self.out_norm.std) ** 2,
                                                          axis=0)))),
                "val_nll": float(np.mean(nll)), "val_z_mean": float(np.mean(z)),
                "val_z_std": float(np.std(z))}

    # ------------------------------------------------------------------ prediction
    def _require_fitted(self) -> None:
        if self._post is None:
            raise ModelError("gp model is not fitted (call fit or load an artifact)")

    def _normalise(self, x: np.ndarray, u: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.pipeline.inputs(x, u))

    def _predict_norm(self, x: np.ndarray, u: np.ndarray, with_var: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised state-change mean and variance (B, nx) for (B, nx) x and (B, nu) u
        (variance None without ``with_var``)."""
        z = self._normalise(x, u)
        if not len(z):
            return np.zeros((0, self.spec.nx)), np.zeros((0, self.spec.nx))
        step = max(1, CHUNK_ELEMENTS // self._post.width)
        means, variances = [], []
        with torch.no_grad(), compute_threads(self.settings.threads):
            for i in range(0, z.shape[0], step):
                zc = z[i:i + step]
                m, v = self._post.mean_var(zc, with_var)
                means.append(m + self.prior(zc))
                variances.append(v)
        mean = means[0] if len(means) == 1 else torch.cat(means)
        if not with_var:
            return mean.numpy(), None
        var = variances[0] if len(variances) == 1 else torch.cat(variances)
        return mean.numpy(), var.numpy()

    def predict(self, x: np.ndarray, u: np.ndarray, t: int | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Next-state mean and variance (noise included), (B, nx) float64 each.

        Args:
            x: (B, nx) or (nx,) states [positions, velocities] (rad, rad/s or m, m/s).
            u: (B, nu) or (nu,) efforts (N·m or N).
            t: ignored (the model is time-invariant).
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        mean, var = self._predict_norm(x, u)
        return self.pipeline.next_state(x, mean), self.pipeline.variance(var)

    def kernel_dynamics(self) -> KernelDynamics | None:
        """The posterior mean as arrays (:class:`KernelDynamics`) for compiled rollouts, or
        None where they do not apply: sin/cos input features, the multitask (Kronecker)
        posterior."""
        self._require_fitted()
        post = self._post
        if self.pipeline.features.periodic.size or not isinstance(post, KernelPosterior):
            return None
        cached = getattr(self, "_kernel_dynamics", None)
        if cached is not None and cached[0] is post:
            return cached[1]

        def a(v) -> np.ndarray:
            v = v.detach().numpy() if isinstance(v, torch.Tensor) else v
            return np.ascontiguousarray(v, dtype=np.float64)
        nx = self.spec.nx
        centers = post.centers[None] if post.shared else post.centers
        w = post.w if post.shared else post.inv_ls[:, 0, :].pow(2)
        mix = post.mix if post.mix is not None else torch.eye(nx, dtype=F64)
        pipe = self.pipeline
        kd = KernelDynamics(
            in_mean=a(pipe.in_norm.mean), in_istd=a(1.0 / np.asarray(pipe.in_norm.std)),
            prior_W=a(self.prior.W), prior_c=a(self.prior.c), centers=a(centers), w=a(w),
            alpha=a(post.outputscale[:, None] * post.alpha[..., 0]), mix=a(mix),
            kernel=post.kind, out_std=a(pipe.out_norm.std), out_mean=a(pipe.out_norm.mean))
        self._kernel_dynamics = (post, kd)
        return kd

    def predict_mean(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Next-state mean only, (B, nx) float64: ``predict(x, u)[0]`` without computing the
        variance (the variance costs more than the mean; sampling planners' rollouts need
        only the mean)."""
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        mean, _ = self._predict_norm(x, u, with_var=False)
        return self.pipeline.next_state(x, mean)

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """Jacobians of the predictive mean along a trajectory, analytic (the posterior's
        :meth:`~.posterior.KernelPosterior.mean_jacobian`: kernel derivatives times the
        cached weights, batched over the T knots, no autograd; tested against
        :meth:`linearize_reference`).

        Args:
            xs: (T, nx) states, us: (T, nu) actions.

        Returns:
            fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx) with mean(x, u) = fx x + fu u + f0 at
            the linearisation points, and cov (T, nx, nx) = diag(predictive variance).
        """
        return self._linearize(xs, us, with_cov=True)

    def linearize_mean(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """:meth:`linearize` without the covariance (``cov`` None): the predictive variance
        (the most costly part of a query) is not computed. For planners that use only fx
        and fu (iLQR)."""
        return self._linearize(xs, us, with_cov=False)

    def _empty_linearization(self) -> Linearization:
        nx, nu = self.spec.nx, self.spec.nu
        return Linearization(np.zeros((0, nx, nx)), np.zeros((0, nx, nu)),
                             np.zeros((0, nx)), np.zeros((0, nx, nx)))

    def _linearize(self, xs, us, with_cov: bool) -> Linearization:
        self._require_fitted()
        xs, us = check_xu(self.spec, xs, us)
        if not len(xs):
            return self._empty_linearization()
        z = self._normalise(xs, us)
        post = self._post
        step = max(1, CHUNK_ELEMENTS // post.width)
        means, jacs = [], []
        with torch.no_grad(), compute_threads(self.settings.threads):
            for i in range(0, z.shape[0], step):
                m, J = post.mean_jacobian(z[i:i + step])
                means.append(m)
                jacs.append(J)
        J = torch.cat(jacs).numpy() + self.prior.W.T                      # (T, nx, d)
        # chain rule through both normalisers and the sin/cos features, plus I (delta)
        fx, fu = self.pipeline.jacobian(J, xs)
        var = None
        if with_cov:
            mean_next, var = self.predict(xs, us)
        else:
            mean_next = self.pipeline.next_state(
                xs, torch.cat(means).numpy() + self.prior(z.numpy()))
        return Linearization.about(fx, fu, xs, us, mean_next, var)

    def linearize_reference(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """:meth:`linearize` by autograd through the posterior's latent means (the
        reference the analytic Jacobian is tested against).

        Summing trick: rows are independent, so the gradient of the sum over rows gives
        every row's gradient in one backward pass; to separate the outputs too, each
        latent GP gets its own copy of the inputs (Q, T, d), so one backward pass yields
        all (T, nx, nx+nu) Jacobians.
        """
        self._require_fitted()
        xs, us = check_xu(self.spec, xs, us)
        if not len(xs):
            return self._empty_linearization()
        z = self._normalise(xs, us)
        post = self._post
        with compute_threads(self.settings.threads), torch.enable_grad():
            zq = z.unsqueeze(0).repeat(post.n_latent, 1, 1).requires_grad_(True)
            (g,) = torch.autograd.grad(post.latent_mean(zq).sum(), zq)
        J = post.mix_jacobian(g).numpy() + self.prior.W.T                   # (T, nx, d)
        fx, fu = self.pipeline.jacobian(J, xs)
        mean_next, var = self.predict(xs, us)
        return Linearization.about(fx, fu, xs, us, mean_next, var)

    def noise_variance(self) -> np.ndarray:
        """(nx,) observation-noise variance of the next state (state units squared): the
        part of :meth:`predict`'s variance that does not shrink with more data."""
        self._require_fitted()
        return self.pipeline.variance(self._post.noise.numpy())

    def predict_reference(self, x: np.ndarray, u: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`predict` but through GPyTorch's own posterior: exact variances for
        the exact GP whatever ``var_rank`` (computed in float64 on a copy of the model,
        Cholesky forced; down-weighted outliers through a fixed-noise likelihood); the
        sparse GP in its training dtype. Slow; for verification."""
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        z = self._normalise(x, u)
        gp, lik = self.gp, self.likelihood
        if self.mode == "exact":
            gp, lik = copy.deepcopy(gp).double(), copy.deepcopy(lik).double()
            gp.likelihood = lik
            if self._outlier_noise is not None:
                T, N = self._outlier_noise.shape
                gp.likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
                    noise=self._point_noise(lik.noise.detach().reshape(T)).expand(T, N),
                    batch_shape=torch.Size([T])).double()
            gp.set_train_data(gp.train_inputs[0].double(), gp.train_targets.double(),
                              strict=False)
        gp.eval()
        lik.eval()
        with torch.no_grad(), compute_threads(self.settings.threads), \
                gpytorch.settings.max_cholesky_size(10 ** 9), \
                gpytorch.settings.fast_pred_var(False):
            out = lik(gp(z))
            mean, var = out.mean, out.variance
        if isinstance(lik, gpytorch.likelihoods.GaussianLikelihood):     # batch (nx, B)
            mean, var = mean.T, var.T
        z = z.to(F64)
        mean = (mean.to(F64) + self.prior(z)).numpy()
        var = var.to(F64).numpy()
        return self.pipeline.next_state(x, mean), self.pipeline.variance(var)

    # ------------------------------------------------------------------ artifacts
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Normalisers, normalised training data, the affine prior, every GPyTorch
        parameter and buffer and the prediction caches (:func:`.artifact.state_arrays`)."""
        self._require_fitted()
        return artifact.state_arrays(self)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the GPyTorch modules and the prediction caches from ``state_arrays``
        (:func:`.artifact.load_state_arrays`)."""
        artifact.load_state_arrays(self, arrays)

    def _split(self, data: TransitionBatch) -> tuple[np.ndarray, np.ndarray]:
        """Train/validation indices: the last ``val_fraction`` of every episode is held out
        (contiguous, so validation points are not near-copies of their training
        neighbours). No validation if that would leave fewer than min_transitions."""
        n = len(data)
        if self.settings.val_fraction <= 0:
            return np.arange(n), np.zeros(0, dtype=np.int64)
        val = []
        for e in np.unique(data.episode):
            idx = np.flatnonzero(data.episode == e)
            k = math.floor(self.settings.val_fraction * len(idx))
            if k:
                val.append(idx[-k:])
        val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
        tr = np.setdiff1d(np.arange(n), val)
        if len(tr) < self.min_transitions:
            return np.arange(n), np.zeros(0, dtype=np.int64)
        return tr, val
