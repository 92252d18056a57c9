"""Exact GP posteriors on all N training points, float64, turned into the fast caches of
:mod:`~mbrl_ros.core.models.gp.posterior`.

Independent outputs: per output the Cholesky factor of K_y (with the per-point noise of
down-weighted outliers), a = K_y^-1 y, and a variance factor W with
var = s - |W^T k_*|^2 (+ noise). For N <= r = ``var_rank`` W = L^-T and the variance is
exact. Otherwise applying L (N^2 per output) is too slow for a query, so the quadratic
form is restricted to the subspace V = span(K[:, S]) of the kernel columns of r random
training points: k^T K_y^-1 k >= (V^T k)^T (V^T K_y V)^-1 (V^T k) for any V, so the
variance returned is an *upper bound* of the exact one (never over-confident), equal to it
when K_y^-1 k_* lies in V. (GPyTorch's LOVE caches, ``fast_pred_var``, Pleiss et al., ICML
2018, are a Lanczos approximation of the same quadratic form, without the bound.)

Multitask outputs: the Kronecker structure K = K_x (x) B + I (x) S through the
eigen-decompositions of K_x and of the whitened task covariance (see
:class:`~mbrl_ros.core.models.gp.posterior.KroneckerPosterior`); the top-r eigenvectors of
K_x play the role of V.

Why float64 whatever ``dtype``: the marginal-likelihood optimum of smooth data often has
long lengthscales and a large outputscale s, so cond(K_y) ~ N s / noise reaches 1e8-1e9,
where a float32 factorisation loses the mean and the variance s - k^T K_y^-1 k cancels
to noise.
"""
from __future__ import annotations

import torch

from mbrl_ros.core.models.gp.kernels import F64, cholesky, kfun, sqdist
from mbrl_ros.core.models.gp.outliers import point_noise
from mbrl_ros.core.models.gp.posterior import KernelPosterior, KroneckerPosterior


def exact_independent(kind: str, var_rank: int, Z: torch.Tensor, Y: torch.Tensor, covar,
                      lik, outlier_noise: torch.Tensor | None, gen: torch.Generator
                      ) -> KernelPosterior:
    """Posterior of T independent GPs.

    Args:
        kind: the kernel. var_rank: r of the variance factor.
        Z (N, d), Y (N, T): normalised inputs and residual targets.
        covar, lik: trained ScaleKernel and GaussianLikelihood (batch T).
        outlier_noise: (T, N) extra noise of down-weighted points, or None.
        gen: draws the r variance columns.
    """
    N = Z.shape[0]
    T = Y.shape[1]
    r = min(var_rank, N)
    with torch.no_grad():
        ls = covar.base_kernel.lengthscale.detach().to(F64)             # (T, 1, d)
        os_ = covar.outputscale.detach().to(F64)
        noise = lik.noise.detach().reshape(T).to(F64)
        pnoise = point_noise(noise, outlier_noise).expand(T, N)
        Z64, Y64 = Z.to(F64), Y.to(F64)
        alpha = torch.empty(T, N, dtype=F64)
        W = torch.empty(T, N, r, dtype=F64)
        cols = torch.randperm(N, generator=gen)[:r] if r < N else None
        for o in range(T):
            xs = Z64 / ls[o]
            K = kfun(kind, sqdist(xs, xs), inplace=True).mul_(os_[o])
            Ky = K.clone()
            Ky.diagonal().add_(pnoise[o])
            L = cholesky(Ky)
            alpha[o] = torch.cholesky_solve(Y64[:, o:o + 1], L).squeeze(-1)
            if cols is None:
                eye = torch.eye(N, dtype=F64)
                Wo = torch.linalg.solve_triangular(L, eye, upper=False).T
            else:
                Wo = variance_factor(K, Ky, cols)
            W[o] = Wo
    return KernelPosterior(kind, Z64, 1.0 / ls, os_, alpha, noise, W=W)


def variance_factor(K: torch.Tensor, Ky: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W (N, r) with |W^T k|^2 = (V^T k)^T (V^T K_y V)^-1 (V^T k) <= k^T K_y^-1 k,
    V = K[:, cols], the kernel columns of r random training points."""
    Q = torch.linalg.qr(K[:, cols]).Q                                   # (N, r)
    B = Q.T @ (Ky @ Q)
    B = 0.5 * (B + B.T)
    C = cholesky(B)
    return torch.linalg.solve_triangular(C, Q.T, upper=False).T           # Q C^-T


def exact_multitask(kind: str, var_rank: int, Z: torch.Tensor, Y: torch.Tensor, covar,
                    lik) -> KroneckerPosterior:
    """Posterior of the coregionalised GP (covar: GPyTorch MultitaskKernel, lik:
    MultitaskGaussianLikelihood), Z (N, d), Y (N, T) normalised."""
    N, d = Z.shape
    r = min(var_rank, N)
    with torch.no_grad():
        ls = covar.data_covar_module.lengthscale.detach().to(F64)        # (1, d)
        B = covar.task_covar_module.covar_matrix.to_dense().detach().to(F64)
        sn = lik.task_noises.detach().to(F64)                           # (T,)
        xs = Z.to(F64) / ls
        Kx = kfun(kind, sqdist(xs, xs), inplace=True)
        lx, U = torch.linalg.eigh(Kx)
        lx = lx.clamp_min(0.0)
        isn = sn.rsqrt()
        lb, V = torch.linalg.eigh(isn[:, None] * B * isn[None, :])
        lb = lb.clamp_min(0.0)
        Yt = Y.to(F64) * isn
        core = (U.T @ Yt @ V) / (lx[:, None] * lb[None, :] + 1.0)
        A = (U @ core @ V.T) * isn
        G = B @ (isn[:, None] * V)
        keep = torch.argsort(lx, descending=True)[:r]
    return KroneckerPosterior(kind, Z, (1.0 / ls).reshape(1, 1, d), A @ B, U[:, keep],
                              lx[keep], lb, G.pow(2), torch.diagonal(B).clone(), sn)
