"""Hyper-parameters of the GP: lengthscales, outputscales and noise variances maximising
the exact log marginal likelihood (times a log-normal lengthscale prior: MAP-II) of a
random subset of the training points (subset of data, Chalupka, Williams & Murray, "A
framework for evaluating approximation methods for Gaussian process regression", JMLR
2013); the posterior then uses all points.

Why a subset: a full-data gradient costs O(N^3) per output. Why L-BFGS (default): with a
strong-Wolfe line search on one fixed subset (a deterministic objective) it converges on
ARD lengthscales within ~``iterations`` evaluations where Adam needs several times more;
``optimizer='adam'`` draws a fresh subset every step instead (stochastic-subset training,
Chen et al., "Stochastic gradient descent in correlated settings: a study on Gaussian
processes", NeurIPS 2020). Values are log-parametrised so steps are relative.

The independent outputs' marginal likelihood and its gradient are one fused autograd
function (:class:`SubsetNLL`); the multitask model's is GPyTorch's, which uses the
Kronecker structure. Inputs Z (N, d) and residual targets Y (N, T) are normalised.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import gpytorch
import torch

from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.models.gp.kernels import (F64, cholesky, exp_limit, kfun_grad,
                                             noise_constraint)
from mbrl_ros.core.models.gp.modules import BatchExactGP, MultitaskExactGP


class SubsetNLL(torch.autograd.Function):
    """Negative log marginal likelihood of T independent zero-mean GPs on the same m inputs,
    (T,) = y^T K_y^-1 y / 2 + log|K_y| / 2 + m log(2 pi) / 2, K_y = s k(D) + noise I,
    D = squared distances scaled by each output's ARD lengthscales.

    Kernel, Cholesky and gradient are fused so that every (T, m, m) array is touched as few
    times as possible (element-wise passes, not flops, dominate at m ~ 400): the gradient
    uses dNLL/dK_y = (K_y^-1 - a a^T) / 2, a = K_y^-1 y (R&W eq. 5.9), from one Cholesky
    inverse, and dD/dx in closed form (faster than autograd through GPyTorch's kernel and
    torch's generic Cholesky backward).

    Inputs: Z (m, d), ls (T, 1, d) lengthscales, os (T,) outputscales, noise (T,),
    y (T, m, 1), kind (str). Gradients for ls, os and noise.
    """

    @staticmethod
    def forward(ctx, Z, ls, os_, noise, y, kind):
        xb = Z / ls                                                         # (T, m, d)
        sq = xb.pow(2).sum(-1)
        D = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), xb, xb.mT, alpha=-2.0)
        D.clamp_(0.0, 2.0 * exp_limit(D.dtype))
        if kind == "rbf":
            k, dk = D.mul_(-0.5).exp_(), None         # in place; dk/dD = -k / 2
        else:
            k, dk = kfun_grad(kind, D)
        del D
        K = k * os_[:, None, None]
        K.diagonal(dim1=-2, dim2=-1).add_(noise[:, None])
        L = cholesky(K)
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



def init_hypers(kernel: gpytorch.kernels.Kernel, d: int) -> None:
    """Common initial lengthscale sqrt(d): with standardised inputs a squared distance
    between two points is ~2d, so every output starts at moderate correlations."""
    kernel.lengthscale = math.sqrt(d)


def init_scales(Y: torch.Tensor, noise_floor: float, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial signal and noise variances (T,) from the residual variance per output:
    signal = residual variance, noise = 1 % of it (both above the noise floor)."""
    floor = noise_floor
    v = Y.to(F64).var(0).clamp_min(10 * floor)
    noise = floor + torch.clamp(0.01 * v, min=floor)
    return v.to(dtype), noise.to(dtype)


def lengthscale_penalty(ls: torch.Tensor, d: int, sd: float) -> torch.Tensor | float:
    """Negative log of the log-normal lengthscale prior (up to a constant): log l ~
    N(log sqrt(d), sd^2) per ARD lengthscale ls (T, 1, d), in standardised inputs
    (MAP-II; the sum over outputs, as the NLL it is added to). ``sd`` <= 0: no prior."""
    if sd <= 0:
        return 0.0
    return (ls.log() - 0.5 * math.log(d)).pow(2).sum() / (2.0 * sd * sd)


def fit_independent(Z: torch.Tensor, Y: torch.Tensor, s, dtype: torch.dtype,
                    gen: torch.Generator, report: Callable[[float], None] | None,
                    history: list[float]):
    """Hyper-parameters of T batched independent GPs from the exact NLL of random subsets
    (:class:`SubsetNLL`, :func:`optimise`).

    Args:
        Z: (N, d) normalised inputs, Y: (N, T) residual targets, both in ``dtype``.
        s: the GP settings. gen: source of the subsets. report: progress in [0, 0.6].
        history: the loss of every evaluation is appended to it.

    Returns:
        (model, likelihood, idx): the :class:`BatchExactGP` (trained on all of Z), its
        likelihood and the last subset's indices (None without optimiser steps).
    """
    N, d = Z.shape
    T = Y.shape[1]
    lik = gpytorch.likelihoods.GaussianLikelihood(
        batch_shape=torch.Size([T]), noise_constraint=noise_constraint(s.noise_floor))
    yT = Y.T.contiguous()
    model = BatchExactGP(Z, yT, s.kernel, T, lik).to(dtype)
    covar = model.covar_module
    init_hypers(covar.base_kernel, d)
    v, noise = init_scales(Y, s.noise_floor, dtype)
    covar.outputscale = v
    lik.noise = noise.unsqueeze(-1)
    m = min(s.hyper_subset, N)

    def loss_of(idx) -> torch.Tensor:
        ls = covar.base_kernel.lengthscale
        nll = SubsetNLL.apply(Z[idx], ls, covar.outputscale, lik.noise.reshape(T),
                              yT[:, idx].unsqueeze(-1), s.kernel)
        return (nll.sum() + lengthscale_penalty(ls, d, s.lengthscale_prior)) / (m * T)

    last = {}

    def subset():
        last["idx"] = torch.randperm(N, generator=gen)[:m] if m < N else torch.arange(N)
        return last["idx"]

    optimise(model, loss_of, subset, report, s, dtype, history)
    return model, lik, last.get("idx")


def fit_multitask(Z: torch.Tensor, Y: torch.Tensor, s, dtype: torch.dtype,
                  gen: torch.Generator, report: Callable[[float], None] | None,
                  history: list[float]):
    """Hyper-parameters of the coregionalised model from GPyTorch's exact multitask
    marginal likelihood of random subsets (it uses the Kronecker structure:
    eigen-decompositions of k_x and B, not of the (m T)^2 matrix). Arguments as
    :func:`fit_independent`.

    Returns:
        (model, likelihood): the :class:`MultitaskExactGP` (in eval mode, trained on all of
        Z) and its likelihood.
    """
    N, d = Z.shape
    T = Y.shape[1]
    lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
        num_tasks=T, has_global_noise=False, noise_constraint=noise_constraint(s.noise_floor))
    m = min(s.hyper_subset, N)
    model = MultitaskExactGP(Z[:m], Y[:m], s.kernel, T, min(s.rank, T), lik).to(dtype)
    init_hypers(model.covar_module.data_covar_module, d)
    tc = model.covar_module.task_covar_module
    v, noise = init_scales(Y, s.noise_floor, dtype)
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
                + lengthscale_penalty(ls, d, s.lengthscale_prior) / (m * T))

    def subset():
        if m < N:
            idx = torch.randperm(N, generator=gen)[:m]
            model.set_train_data(Z[idx], Y[idx], strict=False)

    optimise(model, loss_of, subset, report, s, dtype, history)
    model.set_train_data(Z, Y, strict=False)
    model.eval()
    return model, lik


def optimise(model: torch.nn.Module, loss_of: Callable, subset: Callable,
             report: Callable[[float], None] | None, s, dtype: torch.dtype,
             history: list[float]) -> None:
    """Minimise ``loss_of(subset())`` over the model's hyper-parameters.

    'lbfgs': torch's L-BFGS with a strong-Wolfe line search on ONE subset, at most
    ``iterations`` evaluations. A trial point whose kernel matrix cannot be factorised gets
    a huge loss, so the line search backs off. 'adam': a fresh subset every step.
    Every evaluation's loss is appended to ``history``.

    Raises:
        ModelError: the marginal likelihood fails at the initial hyper-parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def evaluate(idx) -> torch.Tensor:
        try:
            loss = loss_of(idx)
            if not torch.isfinite(loss):
                raise ModelError("non-finite marginal likelihood")
            loss.backward()
        except (ModelError, RuntimeError, ValueError) as e:
            if not history:
                raise ModelError(f"gp: marginal likelihood fails at the initial "
                                 f"hyper-parameters: {e}") from e
            for p in params:
                p.grad = torch.zeros_like(p)
            return torch.tensor(1e10, dtype=dtype)
        history.append(float(loss.detach()))
        if report:
            report(0.6 * len(history) / max(s.iterations, 1))
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
