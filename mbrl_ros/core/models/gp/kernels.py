"""The GP's numerics in plain torch: stationary kernels as functions of the squared scaled
distance, a Cholesky with jitter on demand, GPyTorch constraints in log parametrisation and
the thread / subnormal-float context every fit and query runs in.

The kernels are the same functions as GPyTorch's RBF and Matérn kernels (Rasmussen &
Williams, "Gaussian Processes for Machine Learning", 2006, ch. 4), without the
LinearOperator machinery, which costs more than the arithmetic at these sizes. Inputs are
normalised model inputs already divided by the ARD lengthscales; kernel values are
unit-variance (multiply by the outputscale).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gpytorch
import torch
from gpytorch.constraints import GreaterThan

from mbrl_ros.core.models.base import ModelError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
KERNELS = ("rbf", "matern52", "matern32")
F64 = torch.float64
# Kernel-row elements per chunk of a batched query: bounds memory for large batches
# (e.g. 1000 sampled rollouts x 14 outputs x 2000 points would be 224 MB at once).
CHUNK_ELEMENTS = 1 << 22


def sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., n, m) of already lengthscale-divided points
    a (..., n, d) and b (..., m, d), clamped at 0 (the expanded form can round below)."""
    D = (a @ b.mT) * -2.0 + a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2)
    return D.clamp_min(0.0)


def exp_limit(dtype: torch.dtype) -> float:
    """Largest x with exp(-x) still a normal float: kernel values are clamped there.
    Subnormal results (far-apart points, short lengthscales) make every later arithmetic
    operation on them far slower on x86 (BENCHMARKS.md, "Issue 3", GP design
    measurements)."""
    return 80.0 if dtype == torch.float32 else 700.0


def kfun(kind: str, D: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Unit-variance stationary kernel as a function of the squared scaled distance D.

    Matérn kernels use sqrt(D), whose derivative is infinite at D = 0 (a query on a
    training point); below 1e-12 their first-order expansion in D is used instead, which
    keeps gradients and Jacobians finite and exact to O(D^1.5). ``inplace`` (no autograd)
    overwrites D and skips that branch, which only matters for derivatives.
    """
    limit = exp_limit(D.dtype)
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


def bounded_exp(raw: torch.Tensor) -> torch.Tensor:
    # exp(+-12) spans every useful value in normalised units and never overflows float32,
    # so a wild line-search trial cannot produce inf/NaN hyper-parameters.
    return torch.exp(raw.clamp(-12.0, 12.0))


def positive() -> gpytorch.constraints.Positive:
    """Log parametrisation: a step changes a value by a *relative* amount, so lengthscales
    10x the initial guess are reachable in a few steps (GPyTorch's default softplus moves
    large values by ~lr in absolute terms: Adam had not converged after 50 steps)."""
    return gpytorch.constraints.Positive(transform=bounded_exp, inv_transform=torch.log)


def noise_constraint(floor: float) -> GreaterThan:
    return GreaterThan(floor, transform=bounded_exp, inv_transform=torch.log)


def base_kernel(kind: str, d: int, batch_shape: torch.Size) -> gpytorch.kernels.Kernel:
    if kind == "rbf":
        return gpytorch.kernels.RBFKernel(ard_num_dims=d, batch_shape=batch_shape,
                                          lengthscale_constraint=positive())
    nu = 2.5 if kind == "matern52" else 1.5
    return gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=d, batch_shape=batch_shape,
                                         lengthscale_constraint=positive())


def scaled(kernel: gpytorch.kernels.Kernel, batch_shape: torch.Size
            ) -> gpytorch.kernels.ScaleKernel:
    return gpytorch.kernels.ScaleKernel(kernel, batch_shape=batch_shape,
                                        outputscale_constraint=positive())


def cholesky(K: torch.Tensor) -> torch.Tensor:
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


def kfun_grad(kind: str, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel k(D) and its derivative dk/dD (finite at D = 0 for every kernel here)."""
    if kind == "rbf":
        k = torch.exp(-0.5 * D.clamp_max(2.0 * exp_limit(D.dtype)))
        return k, -0.5 * k
    c = 5.0 if kind == "matern52" else 3.0
    r = torch.sqrt(c * D).clamp_max(exp_limit(D.dtype))
    e = torch.exp(-r)
    if kind == "matern52":
        return (1.0 + r + r * r / 3.0) * e, (-5.0 / 6.0) * (1.0 + r) * e
    return (1.0 + r) * e, -1.5 * e


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0: unchanged, restored afterwards) and with
    subnormal floats flushed to zero (torch's default, off, is restored afterwards).

    Products of small kernel values (distant points, short lengthscales) underflow to
    subnormal numbers, on which x86 arithmetic is far slower: the posterior and every
    query slow down with it (BENCHMARKS.md, "Issue 3", GP design measurements).
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
