"""Gaussian-process dynamics model (registry name ``gp``), built on GPyTorch.

The model predicts the state change ``d = x_{t+1} - x_t`` from ``z = [x_t, u_t]`` (with
the sine and cosine of continuous joints' angles, :class:`InputFeatures`), both
standardised by a :class:`Normalizer` (Deisenroth & Rasmussen, "PILCO", ICML 2011, for GP
dynamics models; Rasmussen & Williams, "Gaussian Processes for Machine Learning", 2006, R&W
below). Prior: an affine mean fitted by least squares (``mean='linear'``, R&W sec. 2.7 with
the coefficients fixed at their estimate) plus a zero-mean GP with an ARD kernel (RBF,
Matérn 5/2 or 3/2, one lengthscale per input) per output, and Gaussian noise per output.

Output structure (``outputs``):

* ``independent``: one GP per state dimension, all trained at once as a batch
  (``batch_shape=[nx]``, GPyTorch's "Batch Independent Multioutput GP" example).
* ``multitask``: intrinsic coregionalisation, cov(f_i(z), f_j(z')) = k(z, z') B_ij with
  B = W W^T + diag(v), rank(W) = ``rank`` (Bonilla, Chai & Williams, "Multi-task Gaussian
  process prediction", NIPS 2007); GPyTorch ``MultitaskKernel`` +
  ``MultitaskGaussianLikelihood`` (one noise variance per output). One kernel for all
  outputs: for small problems.

Exact or sparse (``max_exact``): up to ``max_exact`` training transitions the posterior is
exact. Above, a sparse variational GP (SVGP; Hensman, Matthews & Ghahramani, "Scalable
variational Gaussian process classification", AISTATS 2015) with ``n_inducing`` inducing
points drawn from a seeded random subset of the inputs: GPyTorch ``ApproximateGP`` with a
``VariationalStrategy`` batched over the nx outputs (``independent``) or wrapped in an
``LMCVariationalStrategy`` with nx latent GPs mixed by a learned nx x nx matrix
(``multitask``, linear model of coregionalisation, initialised to the identity). q(u) is set
in closed form to the optimum of the collapsed bound for the hyper-parameters (Titsias,
"Variational learning of inducing variables in sparse Gaussian processes", AISTATS 2009);
``sparse_iterations`` minibatch ELBO steps (natural gradients for q(u), Adam for the
hyper-parameters and inducing points) can refine it, after which q(u) is reset to the
closed form for the final parameters (default 0: at N = 3600, 50 steps took 20 s for a 2 %
lower test error).

Noiseless data with a few non-smooth transitions (``outlier_threshold``,
``lengthscale_prior``). Simulated excitation data is deterministic and dense along
trajectories, so the marginal likelihood puts the noise at ``noise_floor`` (signal/noise
~1e5) and the posterior interpolates. The few transitions through an impact on a joint
stop (2 % of arm2's, 6 % of arm7's data at N = 2000; one in cartpole's 1800) do not fit a
smooth function: interpolating them gave weights |K_y^-1 y| up to ~1e4 and a mean that
oscillated between trajectories. Measured (bench/models.py data, 20-step open-loop RMSE,
3 subset seeds, N = 2000) before the two measures below: arm2 1.2-3.5 vs 1.21 for the
affine ``linear`` model, cartpole 0.64-0.88 vs 0.52, arm7 4.6-7.0 vs 2.19; on arm2 the
one-step error was 40x below linear's at the median but 3.4x above at the 99th
percentile, at validation points 0.3-1 lengthscale from any training point. Removing the
35 transitions within 0.05 rad of a stop gave arm2 0.65 on every seed (arm7: 2.1-2.4).

1. ``outlier_threshold`` (c): after the hyper-parameters, every training point's residual
   is judged by a posterior that did not see it (leave-one-out within the subset, R&W
   eq. 5.12; the subset's posterior for the others); a transition with a residual above
   c predictive sd in some output gets the noise variance r^2 / c^2 in the posterior (one
   reweighting step of a heavy-tailed likelihood, in closed form; the exact and the
   sparse posterior both take per-point noise). Its cost, O(nx m^2 N), is ~0.25 s at
   N = 2000, nx = 14.
2. ``lengthscale_prior``: a log-normal prior on each ARD lengthscale, centred at sqrt(d)
   (standardised inputs), makes the hyper-parameters a MAP estimate: 21 ARD lengthscales
   per output from 300 points overfitted (arm7, N = 500: 5.6 -> 5.0, linear 5.17).

With both (bench/models.py, linear / gp 20-step RMSE at N = 500, 2000, 10000): arm2 2.2,
6.2, 1.65; cartpole 1.13, 7.0, 20.6; arm7 1.03, 1.11, 1.22 (before: arm2 ~1.0 at 2000,
cartpole 0.82, arm7 0.46).

Rejected (same measurements): a higher ``noise_floor`` (1e-2: cartpole 0.17 but arm2 3.9),
a noise floor relative to the outputscale (helps at N = 2000, but arm2 at N = 500 went
0.58 -> 1.2: the smooth part wants interpolation), Matérn 5/2 (arm7 3.2), the sparse GP
at N = 2000 (arm7 2.7, arm2 1.6), a larger ``hyper_subset`` (arm7 fit 25 s, cartpole
worse). Cost of 1: stops are no longer modelled. On arm2 at N = 10000 (sparse GP) the 5
of 100 validation rollouts that hit a stop went from 0.50 to 2.95 RMSE while the other 95
went from 0.21 to 0.01 (0.23 -> 0.66 overall, linear 1.10); cartpole went 0.13 -> 0.03.
``outlier_threshold = 0`` restores the interpolation of every point.

How it meets its budget (N = 2000 transitions, 21 inputs, 14 outputs: fit in <= 5 s on ONE
core, a mean+variance query in <= 1 ms; a plain GPyTorch loop took 137 s to fit and 4.8 ms
per query on the development machine). Measured with one thread (CPU time, arm7
excitation data): fit 2.7 s (1.1 s hyper-parameters, 0.2 s outlier residuals, 1.3 s
posterior; the first fit in a process adds ~1.3 s of one-time lazy imports by
``torch.optim``), one query 0.9 ms, ``linearize`` of 50 steps ~35 ms.

1. Hyper-parameters maximise the *exact* log marginal likelihood (times the lengthscale
   prior) of ``hyper_subset`` random training points (subset of data for the
   hyper-parameters; Chalupka, Williams & Murray, "A framework for evaluating
   approximation methods for Gaussian process regression", JMLR 2013). A full-data
   gradient costs O(N^3) per output: ~2 s per step at N = 2000. Default optimiser: L-BFGS
   with a strong-Wolfe line search on one subset; ARD lengthscales converge within ~50
   evaluations where Adam needed ~150 steps (or Adam on a fresh subset every step,
   ``optimizer='adam'``: stochastic-subset training, Chen et al., "Stochastic gradient
   descent in correlated settings: a study on Gaussian processes", NeurIPS 2020). Values
   are log-parametrised so steps are relative. The marginal likelihood and its gradient
   dNLL/dK = (K^-1 - a a^T) / 2 (R&W eq. 5.9) are one fused autograd function
   (:class:`_SubsetNLL`), ~2.5x faster than autograd through GPyTorch.
2. The posterior uses all N points: one float64 Cholesky per output, a = K_y^-1 y (K_y
   with the per-point noise of down-weighted outliers).
3. Queries do not go through GPyTorch: measured at N = 2000, nx = 14, one query took
   4.5 ms with warm LOVE caches (``fast_pred_var``) and 3.5 s without (the variance solve
   is not cached), more than the budget in overhead alone. The posterior is turned into
   plain tensors once, at the end of the fit (so the first controller query is as fast as
   any other), and a query is one kernel row, a dot product for the mean and one
   matrix-vector product for the variance. :meth:`GPModel.predict_reference` predicts
   through GPyTorch's own posterior, to verify the fast path.

Predictive variance of the exact GP: var = s - k_*^T K_y^-1 k_* (+ noise). For N <= r =
``var_rank`` it is exact, |L^-1 k_*|^2. Otherwise applying L (N^2 per output) is too slow,
and the quadratic form is restricted to the subspace V = span(K[:, S]) of the kernel
columns of r random training points: k^T K_y^-1 k >= (V^T k)^T (V^T K_y V)^-1 (V^T k) for
any V, so the variance returned is an *upper bound* of the exact one (never
over-confident), equal to it when K_y^-1 k_* lies in V. A query then costs reading
nx * N * r float64 numbers: memory bandwidth, not flops, sets the time. Measured at
N = 2000, nx = 14 on trajectory data: r = 64 (default) 0.85 ms per query, variance / exact
variance median 1.11, 95th percentile 2.5; r = 128 1.36 ms, median 1.007, 95th percentile
1.3. float32 would halve the time, but s - |W^T k|^2 then cancels catastrophically (errors
of 10 % were measured). For the exact multitask model the top-r eigenvectors of the input
kernel matrix play the same role. (The LOVE caches of GPyTorch's ``fast_pred_var``, Pleiss
et al., ICML 2018, are a Lanczos approximation of the same quadratic form, without the
bound.)

Variances returned by :meth:`GPModel.predict` include the observation noise: they are the
variances of the next state.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gpytorch
import numpy as np
import torch
from gpytorch.constraints import GreaterThan

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (
    DynamicsModel,
    FitReport,
    Linearization,
    ModelError,
    ModelSpec,
    InputFeatures,
    Normalizer,
    check_xu,
)
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch

__all__ = ["GPModel"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_KERNELS = ("rbf", "matern52", "matern32")
_F64 = torch.float64
# Kernel-row elements per chunk of a batched query: bounds memory for large batches
# (e.g. 1000 sampled rollouts x 14 outputs x 2000 points would be 224 MB at once).
_CHUNK_ELEMENTS = 1 << 22
_FORMAT = 1


# ---------------------------------------------------------------------------------------
# kernels in plain torch (the same functions as GPyTorch's, without LinearOperator overhead)

def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., n, m) of already lengthscale-divided points
    a (..., n, d) and b (..., m, d), clamped at 0 (the expanded form can round below)."""
    D = (a @ b.mT) * -2.0 + a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2)
    return D.clamp_min(0.0)


def _exp_limit(dtype: torch.dtype) -> float:
    """Largest x with exp(-x) still a normal float: kernel values are clamped there.
    Subnormal results (far-apart points, short lengthscales) make every later arithmetic
    operation on them ~100x slower on x86 (measured: a 15 ms instead of 1 ms query)."""
    return 80.0 if dtype == torch.float32 else 700.0


def _kfun(kind: str, D: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Unit-variance stationary kernel as a function of the squared scaled distance D.

    Matérn kernels use sqrt(D), whose derivative is infinite at D = 0 (a query on a
    training point); below 1e-12 their first-order expansion in D is used instead, which
    keeps gradients and Jacobians finite and exact to O(D^1.5). ``inplace`` (no autograd)
    overwrites D and skips that branch, which only matters for derivatives.
    """
    limit = _exp_limit(D.dtype)
    if kind == "rbf":
        if inplace:
            return D.clamp_max_(2.0 * limit).mul_(-0.5).exp_()
        return torch.exp(-0.5 * D.clamp_max(2.0 * limit))
    c, slope = (5.0, 5.0 / 6.0) if kind == "matern52" else (3.0, 1.5)
    if inplace:
        r = D.mul_(c).sqrt_().clamp_max_(limit)
        e = torch.exp(-r)
        if kind == "matern52":
            return r.mul(r).div_(3.0).add_(r).add_(1.0).mul_(e)
        return r.add_(1.0).mul_(e)
    small = D < 1e-12
    r = torch.sqrt(c * torch.where(small, torch.ones_like(D), D)).clamp_max(limit)
    if kind == "matern52":
        k = (1.0 + r + r * r / 3.0) * torch.exp(-r)
    else:
        k = (1.0 + r) * torch.exp(-r)
    return torch.where(small, 1.0 - slope * D, k)


def _bounded_exp(raw: torch.Tensor) -> torch.Tensor:
    # exp(+-12) spans every useful value in normalised units and never overflows float32,
    # so a wild line-search trial cannot produce inf/NaN hyper-parameters.
    return torch.exp(raw.clamp(-12.0, 12.0))


def _positive() -> gpytorch.constraints.Positive:
    """Log parametrisation: a step changes a value by a *relative* amount, so lengthscales
    10x the initial guess are reachable in a few steps (GPyTorch's default softplus moves
    large values by ~lr in absolute terms: Adam had not converged after 50 steps)."""
    return gpytorch.constraints.Positive(transform=_bounded_exp, inv_transform=torch.log)


def _noise_constraint(floor: float) -> GreaterThan:
    return GreaterThan(floor, transform=_bounded_exp, inv_transform=torch.log)


def _base_kernel(kind: str, d: int, batch_shape: torch.Size) -> gpytorch.kernels.Kernel:
    if kind == "rbf":
        return gpytorch.kernels.RBFKernel(ard_num_dims=d, batch_shape=batch_shape,
                                          lengthscale_constraint=_positive())
    nu = 2.5 if kind == "matern52" else 1.5
    return gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=d, batch_shape=batch_shape,
                                         lengthscale_constraint=_positive())


def _scaled(kernel: gpytorch.kernels.Kernel, batch_shape: torch.Size
            ) -> gpytorch.kernels.ScaleKernel:
    return gpytorch.kernels.ScaleKernel(kernel, batch_shape=batch_shape,
                                        outputscale_constraint=_positive())


def _cholesky(K: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a batch of SPD matrices, adding diagonal jitter only if needed."""
    L, info = torch.linalg.cholesky_ex(K)
    if not bool((info > 0).any()):
        return L
    scale = K.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-12)
    eye = torch.eye(K.shape[-1], dtype=K.dtype)
    for rel in (1e-6, 1e-5, 1e-4, 1e-3):
        L, info = torch.linalg.cholesky_ex(K + (rel * scale)[..., None, None] * eye)
        if not bool((info > 0).any()):
            return L
    raise ModelError("GP kernel matrix is not positive definite even with 1e-3 relative "
                     "jitter (duplicate inputs with a tiny noise_floor?)")


def _kfun_grad(kind: str, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel k(D) and its derivative dk/dD (finite at D = 0 for every kernel here)."""
    if kind == "rbf":
        k = torch.exp(-0.5 * D.clamp_max(2.0 * _exp_limit(D.dtype)))
        return k, -0.5 * k
    c = 5.0 if kind == "matern52" else 3.0
    r = torch.sqrt(c * D).clamp_max(_exp_limit(D.dtype))
    e = torch.exp(-r)
    if kind == "matern52":
        return (1.0 + r + r * r / 3.0) * e, (-5.0 / 6.0) * (1.0 + r) * e
    return (1.0 + r) * e, -1.5 * e


class _SubsetNLL(torch.autograd.Function):
    """Negative log marginal likelihood of T independent zero-mean GPs on the same m inputs,
    (T,) = y^T K_y^-1 y / 2 + log|K_y| / 2 + m log(2 pi) / 2, K_y = s k(D) + noise I,
    D = squared distances scaled by each output's ARD lengthscales.

    Kernel, Cholesky and gradient are fused so that every (T, m, m) array is touched as few
    times as possible (element-wise passes, not flops, dominate at m ~ 400): the gradient
    uses dNLL/dK_y = (K_y^-1 - a a^T) / 2, a = K_y^-1 y (R&W eq. 5.9), from one Cholesky
    inverse, and dD/dx in closed form (about 2.5x faster than autograd through GPyTorch's
    kernel and torch's generic Cholesky backward).

    Inputs: Z (m, d), ls (T, 1, d) lengthscales, os (T,) outputscales, noise (T,),
    y (T, m, 1), kind (str). Gradients for ls, os and noise.
    """

    @staticmethod
    def forward(ctx, Z, ls, os_, noise, y, kind):
        xb = Z / ls                                                         # (T, m, d)
        sq = xb.pow(2).sum(-1)
        D = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), xb, xb.mT, alpha=-2.0)
        D.clamp_(0.0, 2.0 * _exp_limit(D.dtype))
        if kind == "rbf":
            k, dk = D.mul_(-0.5).exp_(), None         # in place; dk/dD = -k / 2
        else:
            k, dk = _kfun_grad(kind, D)
        del D
        K = k * os_[:, None, None]
        K.diagonal(dim1=-2, dim2=-1).add_(noise[:, None])
        L = _cholesky(K)
        del K
        a = torch.cholesky_solve(y, L)
        ctx.kind = kind
        ctx.save_for_backward(L, a, k, dk, xb, ls, os_)
        m = y.shape[-2]
        return (0.5 * (y * a).sum((-2, -1)) + L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                + 0.5 * m * math.log(2 * math.pi))

    @staticmethod
    def backward(ctx, g):
        L, a, k, dk, xb, ls, os_ = ctx.saved_tensors
        T = k.shape[0]
        A = torch.cholesky_inverse(L)
        A.baddbmm_(a, a.mT, alpha=-1.0)                   # K_y^-1 - a a^T = 2 dNLL/dK_y
        half = 0.5 * g
        d_noise = half * A.diagonal(dim1=-2, dim2=-1).sum(-1)
        if ctx.kind == "rbf":
            A.mul_(k)                                      # A o k
            rows = A.sum(-1, keepdim=True)
            d_os = half * rows.sum((-2, -1))
            scale = -0.5 * half * os_                      # dNLL/dD = scale (A o k)
        else:
            flat = A.reshape(T, 1, -1)
            d_os = half * (flat @ k.reshape(T, -1, 1)).reshape(T)
            A.mul_(dk)
            rows = A.sum(-1, keepdim=True)
            scale = half * os_
        # D_ij = |x_i - x_j|^2 and dNLL/dD symmetric: dNLL/dx_i = 4 sum_j M_ij (x_i - x_j)
        dxb = (4.0 * scale)[:, None, None] * (rows * xb - A @ xb)
        d_ls = -(dxb * xb).sum(-2, keepdim=True) / ls                      # x = Z / ls
        return None, d_ls, d_os, d_noise, None, None


def _heldout_residuals(kind: str, Z: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor,
                       ls: torch.Tensor, os_: torch.Tensor, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals (T, N) of every training point under a posterior that did not see it, and
    their predictive variances (noise included), float64: leave-one-out within the subset
    ``idx`` (R&W eq. 5.12), the posterior of the subset for the other points.

    Z (N, d), Y (N, T), ls (T, 1, d), os_ (T,), noise (T,). Costs O(T m^2 N), like the
    closed-form sparse posterior with m inducing points.
    """
    N, T = Y.shape
    Xs = Z[idx].unsqueeze(0) / ls                                             # (T, m, d)
    K = os_[:, None, None] * _kfun(kind, _sqdist(Xs, Xs))
    K.diagonal(dim1=-2, dim2=-1).add_(noise[:, None])
    L = _cholesky(K)
    Ki = torch.cholesky_inverse(L)
    a = Ki @ Y[idx].T.unsqueeze(-1)                                           # (T, m, 1)
    dg = Ki.diagonal(dim1=-2, dim2=-1)                                        # (T, m)
    r = torch.empty(T, N, dtype=_F64)
    var = torch.empty(T, N, dtype=_F64)
    r[:, idx] = a.squeeze(-1) / dg
    var[:, idx] = 1.0 / dg
    seen = torch.zeros(N, dtype=torch.bool)
    seen[idx] = True
    rest = torch.nonzero(~seen).squeeze(-1)
    step = max(1, _CHUNK_ELEMENTS // (T * Xs.shape[1]))
    for i in range(0, len(rest), step):
        j = rest[i:i + step]
        Ks = os_[:, None, None] * _kfun(kind, _sqdist(Z[j].unsqueeze(0) / ls, Xs))
        r[:, j] = Y[j].T - (Ks @ a).squeeze(-1)
        V = torch.linalg.solve_triangular(L, Ks.mT, upper=False)              # (T, m, b)
        var[:, j] = (os_[:, None] - V.pow(2).sum(-2)).clamp_min(0.0) + noise[:, None]
    return r, var


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0: unchanged, restored afterwards) and with
    subnormal floats flushed to zero (torch's default, off, is restored afterwards).

    Products of small kernel values (distant points, short lengthscales) underflow to
    subnormal numbers, on which x86 arithmetic is ~100x slower: measured 7.4 s instead of
    1.9 s for the posterior of N = 2000, and 15 ms instead of 1 ms per query.
    """
    global _COMPUTE_DEPTH
    prev = torch.get_num_threads()
    change = n > 0 and n != prev
    if change:
        torch.set_num_threads(n)
    if _COMPUTE_DEPTH == 0:
        torch.set_flush_denormal(True)
    _COMPUTE_DEPTH += 1
    try:
        yield
    finally:
        _COMPUTE_DEPTH -= 1
        if _COMPUTE_DEPTH == 0:        # only the outermost block restores (nested calls)
            torch.set_flush_denormal(False)
        if change:
            torch.set_num_threads(prev)


_COMPUTE_DEPTH = 0


# ---------------------------------------------------------------------------------------
# GPyTorch models (hyper-parameter containers, training of the sparse and multitask
# models, and the reference posterior)

class _BatchExactGP(gpytorch.models.ExactGP):
    """nx independent exact GPs as one batch (GPyTorch's batch-independent example)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kind: str, nx: int,
                 likelihood: gpytorch.likelihoods.GaussianLikelihood):
        super().__init__(x, y, likelihood)
        b = torch.Size([nx])
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=b)
        self.covar_module = _scaled(_base_kernel(kind, x.shape[-1], b), b)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                         self.covar_module(x))


class _MultitaskExactGP(gpytorch.models.ExactGP):
    """Intrinsic coregionalisation model: K = k_x(z, z') (x) B (task covariance B)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kind: str, nx: int, rank: int,
                 likelihood: gpytorch.likelihoods.MultitaskGaussianLikelihood):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.MultitaskMean(gpytorch.means.ZeroMean(),
                                                        num_tasks=nx)
        self.covar_module = gpytorch.kernels.MultitaskKernel(
            _base_kernel(kind, x.shape[-1], torch.Size()), num_tasks=nx, rank=rank,
            var_constraint=_positive())

    def forward(self, x):
        return gpytorch.distributions.MultitaskMultivariateNormal(self.mean_module(x),
                                                                  self.covar_module(x))


class _SVGP(gpytorch.models.ApproximateGP):
    """Sparse variational GPs, a batch of ``Q`` latent functions with their own inducing
    points; ``lmc_tasks`` > 0 mixes them into that many outputs (LMC).

    ``jitter`` is the diagonal the strategies add to K_zz and to every predictive variance.
    GPyTorch's default is absolute (1e-4 in float32), as large as the whole signal variance
    of a residual that the affine mean already explains well; the caller passes one
    relative to the outputscales instead."""

    def __init__(self, inducing: torch.Tensor, kind: str, jitter: float, lmc_tasks: int = 0):
        Q, M, d = inducing.shape
        b = torch.Size([Q])
        # Natural parameters: q(u) is optimised by natural-gradient steps, which Adam on a
        # Cholesky factor is not suited to (5 Adam steps of 0.01 multiplied the test error
        # of a closed-form-initialised model by 10).
        dist = gpytorch.variational.NaturalVariationalDistribution(M, batch_shape=b)
        strategy = gpytorch.variational.VariationalStrategy(
            self, inducing, dist, learn_inducing_locations=True, jitter_val=jitter)
        if lmc_tasks:
            strategy = gpytorch.variational.LMCVariationalStrategy(
                strategy, num_tasks=lmc_tasks, num_latents=Q, latent_dim=-1,
                jitter_val=jitter)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=b)
        self.covar_module = _scaled(_base_kernel(kind, d, b), b)

    @property
    def base_strategy(self) -> gpytorch.variational.VariationalStrategy:
        vs = self.variational_strategy
        return vs.base_variational_strategy if hasattr(vs, "base_variational_strategy") else vs

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                         self.covar_module(x))


# ---------------------------------------------------------------------------------------
# fast posteriors: plain tensors, built once after fitting

class _KernelPosterior:
    """Posterior of Q latent GPs: mean_q(z) = k_q(z, C) a_q and
    var_q(z) = s_q - |k_q(z, C) W_q|^2 (exact GP, C = the N training inputs, shared) or
    var_q(z) = s_q + k_q(z, C_q) P_q k_q(z, C_q)^T (SVGP, C_q = inducing points of latent q),
    mixed into T outputs by ``mix`` (Q, T) (identity when None), plus per-output noise.

    A query's cost is dominated by memory traffic (the tensors do not fit in a core's L2
    cache), so the shared training inputs are kept once and the per-output lengthscales
    enter through weights w = 1/l^2: D_q = z^2 w_q + x^2 w_q - 2 (z w_q) x^T, one small
    matrix product against X instead of one against a scaled copy of X per output.
    Everything is float64: the variance s - |W^T k|^2 cancels catastrophically in float32
    when s is large relative to the variance (long lengthscales, large outputscale), and
    the mean must be smooth to rounding for finite differences of predict.
    """

    def __init__(self, kind: str, centers, inv_ls, outputscale, alpha, noise, W=None, P=None,
                 mix=None, jitter=None):
        self.kind = kind
        # GPyTorch's VariationalStrategy adds its Cholesky jitter to every predictive
        # variance, and the ELBO was optimised with it: kept so both paths agree.
        self.jitter = (jitter if jitter is not None else torch.zeros(())).to(_F64)
        self.inv_ls = inv_ls.to(_F64)                                      # (Q, 1, d)
        self.shared = centers.dim() == 2
        self.centers = centers.to(_F64).contiguous()                      # (n, d) | (Q, n, d)
        if self.shared:
            self.w = self.inv_ls[:, 0, :].pow(2)                           # (Q, d)
            self.xt = self.centers.T.contiguous()                          # (d, n)
            self.csq = (self.centers.pow(2) @ self.w.T).T.contiguous()    # (Q, n)
        else:
            scaled = self.centers * self.inv_ls
            self.xt = scaled.mT.contiguous()                               # (Q, d, n)
            self.csq = scaled.pow(2).sum(-1)                               # (Q, n)
        self.outputscale = outputscale.to(_F64)
        self.alpha = alpha.to(_F64).unsqueeze(-1).contiguous()            # (Q, n, 1)
        self.noise = noise.to(_F64)
        self.W = W.to(_F64).contiguous() if W is not None else None
        self.P = P.to(_F64).contiguous() if P is not None else None
        self.mix = mix.to(_F64) if mix is not None else None
        self.n_latent = self.inv_ls.shape[0]

    def _krow(self, zq: torch.Tensor) -> torch.Tensor:
        """(Q, B, d) inputs, latent q at zq[q] -> (Q, B, n) kernel rows."""
        if self.shared:
            zw = zq * self.w[:, None, :]
            zsq = (zw * zq).sum(-1, keepdim=True)
        else:
            zw = zq * self.inv_ls
            zsq = zw.pow(2).sum(-1, keepdim=True)
        if torch.is_grad_enabled() and zq.requires_grad:
            D = (zw @ self.xt) * -2.0 + zsq + self.csq[:, None, :]
            return self.outputscale[:, None, None] * _kfun(self.kind, D.clamp_min(0.0))
        # No autograd: the same arithmetic in place, fewer passes over (Q, B, n).
        D = (zw @ self.xt).mul_(-2.0).add_(zsq).add_(self.csq[:, None, :]).clamp_min_(0.0)
        return _kfun(self.kind, D, inplace=True).mul_(self.outputscale[:, None, None])

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(0).expand(self.n_latent, *z.shape)

    def latent_mean(self, zq: torch.Tensor) -> torch.Tensor:
        """(Q, B, d) -> (Q, B): latent q's mean at zq[q] (for per-output Jacobians)."""
        return (self._krow(zq) @ self.alpha).squeeze(-1)

    def mix_jacobian(self, J: torch.Tensor) -> torch.Tensor:
        """Latent Jacobians (Q, B, d) -> output Jacobians (B, T, d)."""
        if self.mix is None:
            return J.transpose(0, 1)
        return torch.einsum("qbd,qt->btd", J, self.mix)

    def mean_var(self, z: torch.Tensor, with_var: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, d) normalised inputs -> mean (B, T), variance with noise (B, T); without
        ``with_var`` the variance is None (the kernel rows' product with the variance
        factor costs more than the mean itself: sampling planners need only the mean)."""
        k = self._krow(self._expand(z))
        mean = (k @ self.alpha).squeeze(-1)                               # (Q, B)
        if not with_var:
            return (mean.T if self.mix is None else mean.T @ self.mix), None
        if self.W is not None:
            red = (k @ self.W).pow(2).sum(-1)
            var = self.outputscale[:, None] - red
        else:
            var = self.outputscale[:, None] + ((k @ self.P) * k).sum(-1)
        var = var.clamp_min(0.0) + self.jitter
        if self.mix is None:
            return mean.T, var.T + self.noise
        return mean.T @ self.mix, var.T @ self.mix.pow(2) + self.noise

    @property
    def width(self) -> int:
        """Kernel-row elements per query (for chunking large batches)."""
        return self.n_latent * self.csq.shape[-1]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"centers": self.centers.numpy(), "inv_ls": self.inv_ls.numpy(),
               "outputscale": self.outputscale.numpy(),
               "alpha": self.alpha.squeeze(-1).numpy(), "noise": self.noise.numpy(),
               "jitter": self.jitter.numpy()}
        for name in ("W", "P", "mix"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).numpy()
        return out

    @classmethod
    def from_arrays(cls, kind: str, a: dict[str, np.ndarray]) -> _KernelPosterior:
        t = {k: torch.from_numpy(np.array(v)) for k, v in a.items()}
        return cls(kind, t["centers"], t["inv_ls"], t["outputscale"], t["alpha"],
                   t["noise"], W=t.get("W"), P=t.get("P"), mix=t.get("mix"), jitter=t["jitter"])


class _KroneckerPosterior:
    """Exact posterior of the multitask model K = K_x (x) B + I (x) S (S = diag of the task
    noises), by the eigen-decompositions K_x = U diag(lx) U^T and
    S^-1/2 B S^-1/2 = V diag(lb) V^T (Bonilla et al. 2007; Rakitsch et al., "It is all in the
    noise", NIPS 2013, for the whitening by S):

    mean = k_x(z)^T (A B),  A = S^-1/2 U [(U^T Y S^-1/2 V) / (lx lb^T + 1)] V^T,
    var_t = B_tt - sum_j G_tj^2 sum_i (U^T k_x)_i^2 / (lx_i lb_j + 1) + S_t,  G = B S^-1/2 V.

    Keeping only the top-r eigenvectors of K_x drops non-negative terms: an upper bound of
    the variance, exact for r = N.
    """

    def __init__(self, kind: str, centers, inv_ls, amean, U, lx, lb, G2, bdiag, noise):
        self.kind = kind
        self.centers = centers.to(_F64).contiguous()                      # (N, d)
        self.inv_ls = inv_ls.to(_F64)                                      # (1, 1, d)
        self.w = self.inv_ls[0, 0].pow(2)                                  # (d,)
        self.xt = self.centers.T.contiguous()
        self.csq = self.centers.pow(2) @ self.w                            # (N,)
        self.amean = amean.to(_F64).contiguous()                           # (N, T)
        self.U = U.to(_F64).contiguous()                                   # (N, r)
        self.lx, self.lb = lx.to(_F64), lb.to(_F64)                        # (r,), (T,)
        self.G2 = G2.to(_F64)                                              # (T, T) = G**2
        self.bdiag, self.noise = bdiag.to(_F64), noise.to(_F64)            # (T,), (T,)
        self._inv = 1.0 / (self.lx[:, None] * self.lb[None, :] + 1.0)      # (r, T)
        self.n_latent = self.amean.shape[1]

    def _krow(self, z: torch.Tensor) -> torch.Tensor:
        """(..., B, d) -> (..., B, N) unit-variance kernel rows."""
        zw = z * self.w
        D = (zw @ self.xt) * -2.0 + (zw * z).sum(-1, keepdim=True) + self.csq
        return _kfun(self.kind, D.clamp_min(0.0))

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(0).expand(self.n_latent, *z.shape)

    def latent_mean(self, zq: torch.Tensor) -> torch.Tensor:
        """(T, B, d) -> (T, B): output t's mean at zq[t]."""
        return (self._krow(zq) * self.amean.T[:, None, :]).sum(-1)

    def mix_jacobian(self, J: torch.Tensor) -> torch.Tensor:
        return J.transpose(0, 1)

    def mean_var(self, z: torch.Tensor, with_var: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self._krow(z)
        if not with_var:
            return k @ self.amean, None
        a2 = (k @ self.U).pow(2)                                           # (B, r)
        h = a2 @ self._inv                                                 # (B, T)
        var = (self.bdiag - h @ self.G2.T).clamp_min(0.0) + self.noise
        return k @ self.amean, var

    @property
    def width(self) -> int:
        return self.centers.shape[0] + self.U.shape[1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centers": self.centers.numpy(), "inv_ls": self.inv_ls.numpy(),
                "amean": self.amean.numpy(), "U": self.U.numpy(), "lx": self.lx.numpy(),
                "lb": self.lb.numpy(), "G2": self.G2.numpy(),
                "bdiag": self.bdiag.numpy(), "noise": self.noise.numpy()}

    @classmethod
    def from_arrays(cls, kind: str, a: dict[str, np.ndarray]) -> _KroneckerPosterior:
        t = {k: torch.from_numpy(np.array(v)) for k, v in a.items()}
        return cls(kind, t["centers"], t["inv_ls"], t["amean"], t["U"], t["lx"],
                   t["lb"], t["G2"], t["bdiag"], t["noise"])

# ---------------------------------------------------------------------------------------

@registry.register("model", "gp")
class GPModel(DynamicsModel):
    """Gaussian-process model of the state change (registry name ``gp``); see the module
    docstring for the method and the approximations.

    After fitting: ``in_norm`` / ``out_norm`` (normalisers of [x, u] and of the state
    change), ``mode`` ('exact' | 'sparse'), ``gp`` / ``likelihood`` (the GPyTorch modules;
    their targets are the residuals from the affine mean), ``train_z`` (N, nx+nu) /
    ``train_y`` (N, nx) (normalised inputs and state changes) and ``history`` (loss of every
    optimiser evaluation, per point and output). Beyond the DynamicsModel interface:
    :meth:`noise_variance` and :meth:`predict_reference` (GPyTorch's own posterior).
    """

    kind = "gp"
    min_transitions = 10

    @dataclass(frozen=True)
    class Settings:
        kernel: str = setting("rbf", "covariance function, always with one lengthscale per "
                              "input (ARD)", choices=_KERNELS)
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
        outlier_threshold: float = setting(4.0, "a training transition whose held-out "
                                           "residual exceeds this many predictive standard "
                                           "deviations in some output gets the noise "
                                           "variance that puts that residual at this many "
                                           "noise standard deviations (robust "
                                           "down-weighting, e.g. of impacts on joint stops); "
                                           "0: off", low=0.0, high=1000.0)
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
                             choices=tuple(_DTYPES))

    def __init__(self, settings=None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self.torch_dtype = _DTYPES[self.settings.dtype]
        self.features: InputFeatures | None = None
        self.in_norm: Normalizer | None = None
        self.out_norm: Normalizer | None = None
        self.mode: str = ""
        self.gp: gpytorch.models.GP | None = None
        self.likelihood: gpytorch.likelihoods.Likelihood | None = None
        self.train_z: torch.Tensor | None = None
        self.train_y: torch.Tensor | None = None
        self.history: list[float] = []
        self._post: _KernelPosterior | _KroneckerPosterior | None = None
        self._beta: torch.Tensor | None = None      # (d + 1, nx) affine prior mean
        # (nx, N) noise variances of down-weighted outlier transitions (0 elsewhere), or None
        self._outlier_noise: torch.Tensor | None = None
        self.n_outliers = 0

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
        with _threads(s.threads):
            tr, val = self._split(data)
            self.features = InputFeatures(self.spec)
            z = self.features(data.states, data.actions)
            dy = data.next_states - data.states
            self.in_norm = Normalizer.fit(z[tr])
            self.out_norm = Normalizer.fit(dy[tr])
            Z = torch.as_tensor(self.in_norm(z[tr]), dtype=self.torch_dtype)
            Y = torch.as_tensor(self.out_norm(dy[tr]), dtype=self.torch_dtype)
            self.train_z, self.train_y = Z, Y
            self._beta = self._fit_mean(Z, Y)
            Y = (Y.to(_F64) - self._prior_mean(Z.to(_F64))).to(self.torch_dtype)
            sparse = len(tr) > s.max_exact
            self.mode = "sparse" if sparse else "exact"
            self.history = []
            self._outlier_noise, self.n_outliers = None, 0
            t1 = time.perf_counter()
            if s.outputs == "independent" or sparse:
                covar, lik = self._fit_independent_hypers(Z, Y, gen, report)
            else:
                covar, lik = self._fit_multitask_hypers(Z, Y, gen, report)
            t2 = time.perf_counter()
            if sparse:
                self._fit_sparse(Z, Y, covar, lik, gen, report)
            elif s.outputs == "independent":
                self._exact_independent(Z, Y, covar, lik, gen)
            else:
                self._exact_multitask(Z, Y, covar, lik)
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

    def _fit_mean(self, Z: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Affine prior mean [z, 1] beta by ridge-regularised least squares (float64).

        Explicit basis functions as in R&W 2006 sec. 2.7, with beta fixed at its
        least-squares estimate instead of marginalised. Dynamics are close to affine
        locally (x_{t+1} ~ x_t + dt v_t), so the GP is left with the nonlinear residual:
        moderate lengthscales (a zero-mean RBF GP fits a linear trend with lengthscales
        and outputscale in the hundreds, badly conditioned in float32) and predictions that
        fall back to the affine model, not to zero change, far from the data."""
        d, T = Z.shape[1], Y.shape[1]
        if self.settings.mean == "zero":
            return torch.zeros(d + 1, T, dtype=_F64)
        H = torch.cat([Z.to(_F64), torch.ones(Z.shape[0], 1, dtype=_F64)], dim=1)
        A = H.T @ H + 1e-6 * Z.shape[0] * torch.eye(d + 1, dtype=_F64)
        return torch.linalg.solve(A, H.T @ Y.to(_F64))

    def _prior_mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self._beta[:-1] + self._beta[-1]

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

    def _init_hypers(self, kernel: gpytorch.kernels.Kernel, d: int) -> None:
        # Standardised inputs: a squared distance between two points is ~2d, so a common
        # lengthscale of sqrt(d) starts every output at moderate correlations.
        kernel.lengthscale = math.sqrt(d)

    def _init_scales(self, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial signal and noise variances (T,) from the residual variance per output:
        signal = residual variance, noise = 1 % of it (both above the noise floor)."""
        floor = self.settings.noise_floor
        v = Y.to(_F64).var(0).clamp_min(10 * floor)
        noise = floor + torch.clamp(0.01 * v, min=floor)
        return v.to(self.torch_dtype), noise.to(self.torch_dtype)

    def _fit_independent_hypers(self, Z, Y, gen, report):
        """Hyper-parameters of the nx batched GPs from the exact NLL of random subsets
        (:class:`_SubsetNLL`, :meth:`_optimise`)."""
        s = self.settings
        N, d = Z.shape
        T = Y.shape[1]
        lik = gpytorch.likelihoods.GaussianLikelihood(
            batch_shape=torch.Size([T]), noise_constraint=_noise_constraint(s.noise_floor))
        yT = Y.T.contiguous()
        model = _BatchExactGP(Z, yT, s.kernel, T, lik).to(self.torch_dtype)
        covar = model.covar_module
        self._init_hypers(covar.base_kernel, d)
        v, noise = self._init_scales(Y)
        covar.outputscale = v
        lik.noise = noise.unsqueeze(-1)
        m = min(s.hyper_subset, N)

        def loss_of(idx) -> torch.Tensor:
            ls = covar.base_kernel.lengthscale
            nll = _SubsetNLL.apply(Z[idx], ls, covar.outputscale, lik.noise.reshape(T),
                                   yT[:, idx].unsqueeze(-1), s.kernel)
            return (nll.sum() + self._lengthscale_penalty(ls, d)) / (m * T)

        last = {}

        def subset():
            last["idx"] = torch.randperm(N, generator=gen)[:m] if m < N else torch.arange(N)
            return last["idx"]

        self._optimise(model, loss_of, subset, report)
        self.gp, self.likelihood = model, lik
        self._find_outliers(Z, Y, last.get("idx"), covar, lik)
        return covar, lik

    def _lengthscale_penalty(self, ls: torch.Tensor, d: int) -> torch.Tensor | float:
        """Negative log of the log-normal lengthscale prior (up to a constant): log l ~
        N(log sqrt(d), lengthscale_prior^2) per ARD lengthscale, in standardised inputs
        (MAP-II; the sum over outputs, as the NLL it is added to)."""
        sd = self.settings.lengthscale_prior
        if sd <= 0:
            return 0.0
        return (ls.log() - 0.5 * math.log(d)).pow(2).sum() / (2.0 * sd * sd)

    def _find_outliers(self, Z, Y, idx, covar, lik) -> None:
        """Robust down-weighting of the transitions the smooth GP cannot explain.

        Each training point's residual is judged by a posterior that did not see it:
        leave-one-out within the hyper-parameter subset (R&W eq. 5.12: r_i = [K^-1 y]_i /
        [K^-1]_ii, variance 1 / [K^-1]_ii), the posterior of the subset for the other
        points. A transition with |r| > c sd in some output (c = ``outlier_threshold``)
        gets the noise variance max(noise, r^2 / c^2) in each output of the posterior, so
        that its residual is at most c noise standard deviations: one reweighting step of a
        heavy-tailed likelihood (cf. Jylanki, Vanhatalo & Vehtari, "Robust Gaussian process
        regression with a Student-t likelihood", JMLR 2011), in closed form. Impacts on
        joint stops are such points: near-noiseless interpolation through them made the
        posterior mean oscillate between trajectories (see the module docstring).
        """
        s = self.settings
        self._outlier_noise, self.n_outliers = None, 0
        c = s.outlier_threshold
        if c <= 0 or idx is None:
            return
        with torch.no_grad():
            ls = covar.base_kernel.lengthscale.detach().to(_F64)             # (T, 1, d)
            os_ = covar.outputscale.detach().to(_F64)
            noise = lik.noise.detach().reshape(-1).to(_F64)
            r, var = _heldout_residuals(s.kernel, Z.to(_F64), Y.to(_F64), idx, ls, os_, noise)
            flag = (r.pow(2) > (c * c) * var).any(0)                            # (N,)
            n = int(flag.sum())
            if n:
                extra = torch.where(flag, r.pow(2) / (c * c), torch.zeros_like(r))
                self._outlier_noise = extra                                    # (T, N)
                self.n_outliers = n

    def _point_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """(T, N) noise variances of the posterior's training points: the per-output noise,
        raised for down-weighted outliers."""
        noise = noise.to(_F64)[:, None]
        if self._outlier_noise is None:
            return noise
        return torch.maximum(noise, self._outlier_noise)

    def _fit_multitask_hypers(self, Z, Y, gen, report):
        """Hyper-parameters from GPyTorch's exact multitask marginal likelihood of random
        subsets (it uses the Kronecker structure: eigen-decompositions of k_x and B, not of
        the (m nx)^2 matrix)."""
        s = self.settings
        N, d = Z.shape
        T = Y.shape[1]
        lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
            num_tasks=T, has_global_noise=False, noise_constraint=_noise_constraint(s.noise_floor))
        m = min(s.hyper_subset, N)
        model = _MultitaskExactGP(Z[:m], Y[:m], s.kernel, T, min(s.rank, T),
                                  lik).to(self.torch_dtype)
        self._init_hypers(model.covar_module.data_covar_module, d)
        tc = model.covar_module.task_covar_module
        v, noise = self._init_scales(Y)
        with torch.no_grad():
            # Start near independent outputs: B = W W^T + diag(v) ~ diag(residual var).
            # (GPyTorch draws covar_factor from the global RNG: redraw it from ours.)
            tc.covar_factor.copy_(torch.randn(tc.covar_factor.shape, generator=gen)
                                  * (0.1 * float(v.sqrt().mean())))
            tc.var = v
        lik.task_noises = noise
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        model.train()

        def loss_of(_idx) -> torch.Tensor:
            # GPyTorch's MLL is per point and task: the units of the independent loss.
            ls = model.covar_module.data_covar_module.lengthscale
            return (-mll(model(*model.train_inputs), model.train_targets)
                    + self._lengthscale_penalty(ls, d) / (m * T))

        def subset():
            if m < N:
                idx = torch.randperm(N, generator=gen)[:m]
                model.set_train_data(Z[idx], Y[idx], strict=False)

        self._optimise(model, loss_of, subset, report)
        model.set_train_data(Z, Y, strict=False)
        model.eval()
        self.gp, self.likelihood = model, lik
        return model.covar_module, lik

    def _optimise(self, model: torch.nn.Module, loss_of: Callable, subset: Callable,
                  report: Callable[[float], None] | None) -> None:
        """Minimise ``loss_of(subset())`` over the model's hyper-parameters.

        'lbfgs': torch's L-BFGS with a strong-Wolfe line search on ONE subset (a
        deterministic objective), at most ``iterations`` evaluations; it converges on ARD
        lengthscales far sooner than Adam (measured, N = 2000, 21 inputs: loss -1.32 after
        50 evaluations vs -0.59 for Adam, test MSE 4x lower). A trial point whose kernel
        matrix cannot be factorised gets a huge loss, so the line search backs off.
        'adam': a fresh subset every step (stochastic-subset training).
        """
        s = self.settings
        params = [p for p in model.parameters() if p.requires_grad]

        def evaluate(idx) -> torch.Tensor:
            try:
                loss = loss_of(idx)
                if not torch.isfinite(loss):
                    raise ModelError("non-finite marginal likelihood")
                loss.backward()
            except (ModelError, RuntimeError, ValueError) as e:
                if not self.history:
                    raise ModelError(f"gp: marginal likelihood fails at the initial "
                                     f"hyper-parameters: {e}") from e
                for p in params:
                    p.grad = torch.zeros_like(p)
                return torch.tensor(1e10, dtype=self.torch_dtype)
            self.history.append(float(loss.detach()))
            if report:
                report(0.6 * len(self.history) / max(s.iterations, 1))
            return loss.detach()

        if not s.iterations:
            return
        if s.optimizer == "lbfgs":
            idx = subset()
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=s.iterations,
                                    max_eval=s.iterations, history_size=20,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad(set_to_none=True)
                return evaluate(idx)
            opt.step(closure)
        else:
            opt = torch.optim.Adam(params, lr=s.lr)
            for _ in range(s.iterations):
                opt.zero_grad(set_to_none=True)
                if float(evaluate(subset())) < 1e10:
                    opt.step()

    # ------------------------------------------------------------------ posteriors
    def _exact_independent(self, Z, Y, covar, lik, gen) -> None:
        """Per output: Cholesky of K_y on all N points, a = K_y^-1 y and the variance
        factor W (exact L^-T if N <= var_rank, else the subspace bound), all in float64.

        float64 whatever ``dtype``: the marginal-likelihood optimum of smooth data often has
        long lengthscales and a large outputscale s, so cond(K_y) ~ N s / noise reaches
        1e8-1e9, where a float32 factorisation (even with iterative refinement) loses the
        mean and the variance, s - k^T K_y^-1 k, cancels to noise (measured: posterior
        mean off by a third of the noise level, variances off by 20 %).
        """
        s = self.settings
        N = Z.shape[0]
        T = Y.shape[1]
        r = min(s.var_rank, N)
        with torch.no_grad():
            ls = covar.base_kernel.lengthscale.detach().to(_F64)             # (T, 1, d)
            os_ = covar.outputscale.detach().to(_F64)
            noise = lik.noise.detach().reshape(T).to(_F64)
            point_noise = self._point_noise(noise).expand(T, N)
            Z64, Y64 = Z.to(_F64), Y.to(_F64)
            alpha = torch.empty(T, N, dtype=_F64)
            W = torch.empty(T, N, r, dtype=_F64)
            cols = torch.randperm(N, generator=gen)[:r] if r < N else None
            for o in range(T):
                xs = Z64 / ls[o]
                K = _kfun(s.kernel, _sqdist(xs, xs), inplace=True).mul_(os_[o])
                Ky = K.clone()
                Ky.diagonal().add_(point_noise[o])
                L = _cholesky(Ky)
                alpha[o] = torch.cholesky_solve(Y64[:, o:o + 1], L).squeeze(-1)
                if cols is None:
                    eye = torch.eye(N, dtype=_F64)
                    Wo = torch.linalg.solve_triangular(L, eye, upper=False).T
                else:
                    Wo = self._variance_factor(K, Ky, cols)
                W[o] = Wo
        self._post = _KernelPosterior(s.kernel, Z64, 1.0 / ls, os_, alpha, noise, W=W)

    @staticmethod
    def _variance_factor(K: torch.Tensor, Ky: torch.Tensor, cols: torch.Tensor
                         ) -> torch.Tensor:
        """W (N, r) with |W^T k|^2 = (V^T k)^T (V^T K_y V)^-1 (V^T k) <= k^T K_y^-1 k,
        V = K[:, cols], the kernel columns of r random training points. (Pivoted-Cholesky
        columns and a power iteration were measured too: bounds within a few % of these.)"""
        Q = torch.linalg.qr(K[:, cols]).Q                                   # (N, r)
        B = Q.T @ (Ky @ Q)
        B = 0.5 * (B + B.T)
        C = _cholesky(B)
        return torch.linalg.solve_triangular(C, Q.T, upper=False).T           # Q C^-T

    def _exact_multitask(self, Z, Y, covar, lik) -> None:
        """Exact multitask posterior on all N points through the eigen-decompositions of
        K_x (N x N) and of the whitened task covariance (see :class:`_KroneckerPosterior`),
        float64."""
        s = self.settings
        N, d = Z.shape
        r = min(s.var_rank, N)
        with torch.no_grad():
            ls = covar.data_covar_module.lengthscale.detach().to(_F64)        # (1, d)
            B = covar.task_covar_module.covar_matrix.to_dense().detach().to(_F64)
            sn = lik.task_noises.detach().to(_F64)                           # (T,)
            xs = Z.to(_F64) / ls
            Kx = _kfun(s.kernel, _sqdist(xs, xs), inplace=True)
            lx, U = torch.linalg.eigh(Kx)
            lx = lx.clamp_min(0.0)
            isn = sn.rsqrt()
            lb, V = torch.linalg.eigh(isn[:, None] * B * isn[None, :])
            lb = lb.clamp_min(0.0)
            Yt = Y.to(_F64) * isn
            core = (U.T @ Yt @ V) / (lx[:, None] * lb[None, :] + 1.0)
            A = (U @ core @ V.T) * isn
            G = B @ (isn[:, None] * V)
            keep = torch.argsort(lx, descending=True)[:r]
        self._post = _KroneckerPosterior(s.kernel, Z, (1.0 / ls).reshape(1, 1, d),
                                         A @ B, U[:, keep], lx[keep], lb, G.pow(2),
                                         torch.diagonal(B).clone(), sn)

    def _fit_sparse(self, Z, Y, covar, lik, gen, report) -> None:
        """SVGP from the subset hyper-parameters: random inducing points, Titsias' optimal
        q(u) in closed form, then (``sparse_iterations``) minibatch ELBO steps: natural
        gradients for q(u), Adam for hyper-parameters and inducing points.

        Always float64: with the small jitter the SVGP needs here (relative to the smallest
        outputscale, see :class:`_SVGP`), float32 Cholesky factors of K_zz failed and
        GPyTorch's automatic extra jitter wrecked the calibration (z-score std 0.25)."""
        s = self.settings
        Z, Y = Z.to(_F64), Y.to(_F64)
        N = Z.shape[0]
        T = Y.shape[1]
        lmc = s.outputs == "multitask"
        # Repeated states (a robot at rest) would make K_zz singular: draw distinct rows.
        Zu = torch.unique(Z, dim=0)
        M = min(s.n_inducing, len(Zu))
        Zi = torch.stack([Zu[torch.randperm(len(Zu), generator=gen)[:M]] for _ in range(T)])
        jitter = 1e-6 * float(covar.outputscale.detach().min())
        model = _SVGP(Zi, s.kernel, jitter, lmc_tasks=T if lmc else 0).to(_F64)
        with torch.no_grad():
            model.covar_module.base_kernel.lengthscale = covar.base_kernel.lengthscale.to(_F64)
            model.covar_module.outputscale = covar.outputscale.to(_F64)
        noise = lik.noise.detach().reshape(T).to(_F64)
        if lmc:
            likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(
                num_tasks=T, has_global_noise=False,
                noise_constraint=_noise_constraint(s.noise_floor)).to(_F64)
            likelihood.task_noises = noise
            with torch.no_grad():
                model.variational_strategy.lmc_coefficients.copy_(torch.eye(T, dtype=_F64))
        else:
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                batch_shape=torch.Size([T]),
                noise_constraint=_noise_constraint(s.noise_floor)).to(_F64)
            likelihood.noise = noise.unsqueeze(-1)
        self._titsias_init(model, Z, Y, noise)
        if report:
            report(0.65)
        if s.sparse_iterations:
            # GPyTorch's natural-gradient recipe: NGD on q(u), Adam on the rest.
            mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=N)
            ngd = gpytorch.optim.NGD(model.variational_parameters(), num_data=N,
                                     lr=s.sparse_ngd_lr)
            adam = torch.optim.Adam(list(model.hyperparameters())
                                    + list(likelihood.parameters()), lr=s.sparse_lr)
            model.train()
            likelihood.train()
            b = min(s.batch_size, N)
            for it in range(s.sparse_iterations):
                idx = torch.randperm(N, generator=gen)[:b]
                target = Y[idx] if lmc else Y[idx].T
                loss = -mll(model(Z[idx]), target).sum()
                ngd.zero_grad(set_to_none=True)
                adam.zero_grad(set_to_none=True)
                loss.backward()
                ngd.step()
                adam.step()
                self.history.append(float(loss.detach()) / T)
                if report:
                    report(0.65 + 0.3 * (it + 1) / s.sparse_iterations)
            if not lmc:
                # q(u) lags behind the moving hyper-parameters and inducing points; end at
                # its closed-form optimum for the final ones (not available for LMC).
                self._titsias_init(model, Z, Y, likelihood.noise.detach().reshape(T))
        model.eval()
        likelihood.eval()
        self.gp, self.likelihood = model, likelihood
        self._post = self._sparse_posterior(model, likelihood)

    def _titsias_init(self, model: _SVGP, Z, Y, noise) -> None:
        """Set the whitened q(v) (u = L v, K_zz = L L^T) to the optimum of the collapsed
        bound for the current hyper-parameters (Titsias 2009):
        with P = L^-1 K_zx (s^2 = noise):  S = (I + P P^T / s^2)^-1,  m = S P y / s^2;
        with per-point noise (down-weighted outliers) P / s becomes P diag(1 / s_i)."""
        strat = model.base_strategy
        with torch.no_grad():
            ls = model.covar_module.base_kernel.lengthscale.to(_F64)         # (Q, 1, d)
            os_ = model.covar_module.outputscale.to(_F64)
            Zi = strat.inducing_points.to(_F64) / ls
            Kzz = os_[:, None, None] * _kfun(self.settings.kernel, _sqdist(Zi, Zi))
            Kzz = Kzz + strat.jitter_val * torch.eye(Zi.shape[1], dtype=_F64)
            L = _cholesky(Kzz)
            X = Z.to(_F64).unsqueeze(0) / ls
            Kzx = os_[:, None, None] * _kfun(self.settings.kernel, _sqdist(Zi, X))
            P = torch.linalg.solve_triangular(L, Kzx, upper=False)          # (Q, M, N)
            del Kzx
            w = self._point_noise(noise).expand(P.shape[0], P.shape[2]).rsqrt()  # 1 / s_i
            P.mul_(w[:, None, :])                                 # in place: P is large
            A = P @ P.mT + torch.eye(P.shape[1], dtype=_F64)
            # natural parameters of q(v): S^-1 m = P y / s^2 and -S^-1 / 2 = -A / 2
            vd = strat._variational_distribution
            vd.natural_vec.copy_((P @ (Y.T.to(_F64) * w).unsqueeze(-1)).squeeze(-1))
            vd.natural_mat.copy_(-0.5 * A)
            strat.variational_params_initialized.fill_(1)

    def _sparse_posterior(self, model: _SVGP, likelihood) -> _KernelPosterior:
        """mean = k L^-T m,  var = s + k L^-T (S - I) L^-1 k^T  (whitened SVGP), float64."""
        strat = model.base_strategy
        with torch.no_grad():
            ls = model.covar_module.base_kernel.lengthscale.detach().to(_F64)
            os_ = model.covar_module.outputscale.detach().to(_F64)
            Zi = strat.inducing_points.detach().to(_F64) / ls
            Kzz = os_[:, None, None] * _kfun(self.settings.kernel, _sqdist(Zi, Zi))
            Kzz = Kzz + strat.jitter_val * torch.eye(Zi.shape[1], dtype=_F64)
            L = _cholesky(Kzz)
            vd = strat._variational_distribution
            prec = -2.0 * vd.natural_mat.detach().to(_F64)                    # S^-1
            S = torch.cholesky_inverse(_cholesky(0.5 * (prec + prec.mT)))
            m = S @ vd.natural_vec.detach().to(_F64).unsqueeze(-1)
            eye = torch.eye(Zi.shape[1], dtype=_F64)
            Linv = torch.linalg.solve_triangular(L, eye, upper=False)          # L^-1
            alpha = (Linv.mT @ m).squeeze(-1)
            P = Linv.mT @ (S - eye) @ Linv
            P = 0.5 * (P + P.mT)
            if isinstance(likelihood, gpytorch.likelihoods.MultitaskGaussianLikelihood):
                # LMCVariationalStrategy adds its jitter once more to the mixed covariance.
                lmc = model.variational_strategy
                noise = likelihood.task_noises.detach().to(_F64) + float(lmc.jitter_val)
                mix = lmc.lmc_coefficients.detach()
            else:
                noise = likelihood.noise.detach().reshape(-1)
                mix = None
        return _KernelPosterior(self.settings.kernel, strat.inducing_points.detach(),
                                1.0 / ls, os_, alpha, noise, P=P, mix=mix,
                                jitter=torch.tensor(float(strat.jitter_val)))

    def _val_metrics(self, val: TransitionBatch) -> dict[str, float]:
        mean, var = self._predict_norm(val.states, val.actions)
        y = self.out_norm(val.next_states - val.states)
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
        return torch.from_numpy(self.in_norm(self.features(x, u)))

    def _predict_norm(self, x: np.ndarray, u: np.ndarray, with_var: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised state-change mean and variance (B, nx) for (B, nx) x and (B, nu) u
        (variance None without ``with_var``)."""
        z = self._normalise(x, u)
        if not len(z):
            return np.zeros((0, self.spec.nx)), np.zeros((0, self.spec.nx))
        step = max(1, _CHUNK_ELEMENTS // self._post.width)
        means, variances = [], []
        with torch.no_grad(), _threads(self.settings.threads):
            for i in range(0, z.shape[0], step):
                zc = z[i:i + step]
                m, v = self._post.mean_var(zc, with_var)
                means.append(m + self._prior_mean(zc))
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
        std = self.out_norm.std
        return x + mean * std + self.out_norm.mean, var * std ** 2

    def predict_mean(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Next-state mean only, (B, nx) float64: ``predict(x, u)[0]`` without computing the
        variance (about half the cost of a batch of 256 at N = 800; sampling planners'
        rollouts use it)."""
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        mean, _ = self._predict_norm(x, u, with_var=False)
        return x + mean * self.out_norm.std + self.out_norm.mean

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """Jacobians of the predictive mean by autograd, along a trajectory.

        Summing trick: rows are independent, so the gradient of the sum over rows gives
        every row's gradient in one backward pass; to separate the outputs too, each
        latent GP gets its own copy of the inputs (Q, T, d), so one backward pass yields
        all (T, nx, nx+nu) Jacobians (a vmap over the nx outputs would hold nx copies of
        every intermediate: 10x slower at N = 2000).

        Args:
            xs: (T, nx) states, us: (T, nu) actions.

        Returns:
            fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx) with mean(x, u) = fx x + fu u + f0 at
            the linearisation points, and cov (T, nx, nx) = diag(predictive variance).
        """
        self._require_fitted()
        xs, us = check_xu(self.spec, xs, us)
        nx, nu = self.spec.nx, self.spec.nu
        if not len(xs):
            return Linearization(np.zeros((0, nx, nx)), np.zeros((0, nx, nu)),
                                 np.zeros((0, nx)), np.zeros((0, nx, nx)))
        z = self._normalise(xs, us)
        post = self._post
        with _threads(self.settings.threads), torch.enable_grad():
            zq = z.unsqueeze(0).repeat(post.n_latent, 1, 1).requires_grad_(True)
            (g,) = torch.autograd.grad(post.latent_mean(zq).sum(), zq)
        J = (post.mix_jacobian(g) + self._beta[:-1].T).numpy()               # (T, nx, d)
        # Chain rule through both normalisers (d x_{t+1}/dz = diag(s_out) J / s_in) and the
        # input features z(x, u) (sin/cos of periodic angles): I_x + dz/d[x, u].
        J = J * self.out_norm.std[None, :, None] / self.in_norm.std[None, None, :]
        Jx, fu = self.features.chain(J, xs)
        fx = Jx + np.eye(nx)[None]
        mean_next, var = self.predict(xs, us)
        f0 = mean_next - np.einsum("tij,tj->ti", fx, xs) - np.einsum("tij,tj->ti", fu, us)
        cov = np.zeros((len(xs), nx, nx))
        idx = np.arange(nx)
        cov[:, idx, idx] = var
        return Linearization(fx, fu, f0, cov)

    def noise_variance(self) -> np.ndarray:
        """(nx,) observation-noise variance of the next state (state units squared): the
        part of :meth:`predict`'s variance that does not shrink with more data."""
        self._require_fitted()
        return self._post.noise.numpy() * self.out_norm.std ** 2

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
        with torch.no_grad(), _threads(self.settings.threads), \
                gpytorch.settings.max_cholesky_size(10 ** 9), \
                gpytorch.settings.fast_pred_var(False):
            out = lik(gp(z))
            mean, var = out.mean, out.variance
        if isinstance(lik, gpytorch.likelihoods.GaussianLikelihood):     # batch (nx, B)
            mean, var = mean.T, var.T
        z = z.to(_F64)
        mean = (mean.to(_F64) + self._prior_mean(z)).numpy()
        var = var.to(_F64).numpy()
        std = self.out_norm.std
        return x + mean * std + self.out_norm.mean, var * std ** 2

    # ------------------------------------------------------------------ artifacts
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Normalisers, normalised training data, every GPyTorch parameter and buffer by
        name (``gp.*``, ``lik.*``) and the prediction caches (``post.*``)."""
        self._require_fitted()
        out = {"format": np.array(_FORMAT), "mode": np.array(self.mode),
               "train_z": self.train_z.numpy(), "train_y": self.train_y.numpy(),
               "mean_beta": self._beta.numpy()}
        out.update(self.in_norm.arrays("in"))
        out.update(self.out_norm.arrays("out"))
        if self.mode == "sparse":
            out["sparse_jitter"] = np.array(float(self.gp.base_strategy.jitter_val))
        if self._outlier_noise is not None:
            out["outlier_noise"] = self._outlier_noise.numpy()
        for prefix, module in (("gp.", self.gp), ("lik.", self.likelihood)):
            for name, tensor in module.state_dict().items():
                out[prefix + name] = tensor.detach().numpy().copy()
        for name, value in self._post.arrays().items():
            out["post." + name] = value
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the GPyTorch modules and the prediction caches from ``state_arrays``."""
        s = self.settings
        try:
            if int(arrays["format"]) != _FORMAT:
                raise ModelError(f"gp: array format {int(arrays['format'])} is not {_FORMAT}")
            mode = str(arrays["mode"])
            self.in_norm = Normalizer.from_arrays(arrays, "in")
            self.out_norm = Normalizer.from_arrays(arrays, "out")
            Z = torch.from_numpy(np.array(arrays["train_z"])).to(self.torch_dtype)
            Y = torch.from_numpy(np.array(arrays["train_y"])).to(self.torch_dtype)
            self._beta = torch.from_numpy(np.array(arrays["mean_beta"])).to(_F64)
            extra = arrays.get("outlier_noise")
            self._outlier_noise = (torch.from_numpy(np.array(extra)).to(_F64)
                                   if extra is not None else None)
            self.n_outliers = (int((self._outlier_noise > 0).any(0).sum())
                               if extra is not None else 0)
            # the GPyTorch models hold the residual targets, as after fit
            R = (Y.to(_F64) - self._prior_mean(Z.to(_F64))).to(self.torch_dtype)
            T = Y.shape[1]
            self.features = InputFeatures(self.spec)
            if T != self.spec.nx or Z.shape[1] != self.features.n_in:
                raise ModelError(f"gp: arrays are for {T} outputs / {Z.shape[1]} inputs, "
                                 f"spec has nx={self.spec.nx}, nu={self.spec.nu} and "
                                 f"{len(self.spec.periodic)} periodic states "
                                 f"({self.features.n_in} inputs)")
            gp_state = {k[3:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                        if k.startswith("gp.")}
            lik_state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                         if k.startswith("lik.")}
            if mode == "sparse":
                lmc = s.outputs == "multitask"
                key = ("variational_strategy.base_variational_strategy.inducing_points"
                       if lmc else "variational_strategy.inducing_points")
                gp = _SVGP(gp_state[key].clone(), s.kernel, float(arrays["sparse_jitter"]),
                           lmc_tasks=T if lmc else 0)
                if lmc:
                    lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
                        num_tasks=T, has_global_noise=False,
                        noise_constraint=_noise_constraint(s.noise_floor))
                else:
                    lik = gpytorch.likelihoods.GaussianLikelihood(
                        batch_shape=torch.Size([T]),
                        noise_constraint=_noise_constraint(s.noise_floor))
            elif mode == "exact" and s.outputs == "independent":
                lik = gpytorch.likelihoods.GaussianLikelihood(
                    batch_shape=torch.Size([T]), noise_constraint=_noise_constraint(s.noise_floor))
                gp = _BatchExactGP(Z, R.T.contiguous(), s.kernel, T, lik)
            elif mode == "exact":
                lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
                    num_tasks=T, has_global_noise=False,
                    noise_constraint=_noise_constraint(s.noise_floor))
                gp = _MultitaskExactGP(Z, R, s.kernel, T, min(s.rank, T), lik)
            else:
                raise ModelError(f"gp: unknown mode {mode!r} in arrays")
            dtype = _F64 if mode == "sparse" else self.torch_dtype
            gp, lik = gp.to(dtype), lik.to(dtype)
            gp.load_state_dict(gp_state, strict=True)
            lik.load_state_dict(lik_state, strict=True)
            post = {k[5:]: v for k, v in arrays.items() if k.startswith("post.")}
            if mode == "exact" and s.outputs == "multitask":
                self._post = _KroneckerPosterior.from_arrays(s.kernel, post)
            else:
                self._post = _KernelPosterior.from_arrays(s.kernel, post)
        except KeyError as e:
            raise ModelError(f"gp: artifact is missing array {e.args[0]!r} (settings "
                             f"kernel={s.kernel}, outputs={s.outputs})") from e
        except RuntimeError as e:      # state_dict shape/name mismatch
            raise ModelError(f"gp: arrays do not match the settings: {e}") from e
        gp.eval()
        lik.eval()
        self.gp, self.likelihood, self.mode = gp, lik, mode
        self.train_z, self.train_y = Z, Y
