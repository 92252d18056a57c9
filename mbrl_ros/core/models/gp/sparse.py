"""Sparse variational GP posterior (SVGP; Hensman, Matthews & Ghahramani, "Scalable
variational Gaussian process classification", AISTATS 2015) for training sets above
``max_exact``, from the subset hyper-parameters.

``n_inducing`` inducing points per output are drawn from a seeded random subset of the
distinct inputs: GPyTorch ``ApproximateGP`` with a ``VariationalStrategy`` batched over
the T outputs (``independent``) or wrapped in an ``LMCVariationalStrategy`` with T latent
GPs mixed by a learned T x T matrix (``multitask``: linear model of coregionalisation,
initialised to the identity). q(u) is set in closed form to the optimum of the collapsed
bound for the hyper-parameters (Titsias, "Variational learning of inducing variables in
sparse Gaussian processes", AISTATS 2009); ``sparse_iterations`` minibatch ELBO steps
(natural gradients for q(u), Adam for the hyper-parameters and inducing points) can refine
it, after which q(u) is reset to the closed form for the final parameters (independent
outputs). The result becomes a :class:`~mbrl_ros.core.models.gp.posterior.KernelPosterior`.

Why always float64: with the small jitter the SVGP needs here (relative to the smallest
outputscale, see :class:`~mbrl_ros.core.models.gp.modules.SVGP`), float32 Cholesky factors
of K_zz fail and GPyTorch's automatic extra jitter wrecks the calibration.
"""
from __future__ import annotations

from collections.abc import Callable

import gpytorch
import torch

from mbrl_ros.core.models.gp.kernels import F64, cholesky, kfun, noise_constraint, sqdist
from mbrl_ros.core.models.gp.modules import SVGP
from mbrl_ros.core.models.gp.outliers import point_noise
from mbrl_ros.core.models.gp.posterior import KernelPosterior


def fit_sparse(Z: torch.Tensor, Y: torch.Tensor, covar, lik, s, gen: torch.Generator,
               report: Callable[[float], None] | None, history: list[float],
               outlier_noise: torch.Tensor | None):
    """SVGP from the subset hyper-parameters (see the module docstring).

    Args:
        Z (N, d), Y (N, T): normalised inputs and residual targets.
        covar, lik: the trained ScaleKernel and GaussianLikelihood of the T batched GPs.
        s: the GP settings. gen: draws the inducing points and ELBO minibatches.
        report: progress in [0.65, 0.95]. history: ELBO losses (per output) are appended.
        outlier_noise: (T, N) extra noise of down-weighted points, or None.

    Returns:
        (model, likelihood, posterior): the SVGP and its likelihood (eval mode, float64)
        and the fast posterior.
    """
    Z, Y = Z.to(F64), Y.to(F64)
    N = Z.shape[0]
    T = Y.shape[1]
    lmc = s.outputs == "multitask"
    # Repeated states (a robot at rest) would make K_zz singular: draw distinct rows.
    Zu = torch.unique(Z, dim=0)
    M = min(s.n_inducing, len(Zu))
    Zi = torch.stack([Zu[torch.randperm(len(Zu), generator=gen)[:M]] for _ in range(T)])
    jitter = 1e-6 * float(covar.outputscale.detach().min())
    model = SVGP(Zi, s.kernel, jitter, lmc_tasks=T if lmc else 0).to(F64)
    with torch.no_grad():
        model.covar_module.base_kernel.lengthscale = covar.base_kernel.lengthscale.to(F64)
        model.covar_module.outputscale = covar.outputscale.to(F64)
    noise = lik.noise.detach().reshape(T).to(F64)
    if lmc:
        likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(
            num_tasks=T, has_global_noise=False,
            noise_constraint=noise_constraint(s.noise_floor)).to(F64)
        likelihood.task_noises = noise
        with torch.no_grad():
            model.variational_strategy.lmc_coefficients.copy_(torch.eye(T, dtype=F64))
    else:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            batch_shape=torch.Size([T]),
            noise_constraint=noise_constraint(s.noise_floor)).to(F64)
        likelihood.noise = noise.unsqueeze(-1)
    titsias_init(model, s.kernel, Z, Y, noise, outlier_noise)
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
            history.append(float(loss.detach()) / T)
            if report:
                report(0.65 + 0.3 * (it + 1) / s.sparse_iterations)
        if not lmc:
            # q(u) lags behind the moving hyper-parameters and inducing points; end at
            # its closed-form optimum for the final ones (not available for LMC).
            titsias_init(model, s.kernel, Z, Y, likelihood.noise.detach().reshape(T),
                         outlier_noise)
    model.eval()
    likelihood.eval()
    return model, likelihood, sparse_posterior(model, likelihood, s.kernel)


def titsias_init(model: SVGP, kind: str, Z: torch.Tensor, Y: torch.Tensor,
                 noise: torch.Tensor, outlier_noise: torch.Tensor | None) -> None:
    """Set the whitened q(v) (u = L v, K_zz = L L^T) to the optimum of the collapsed
    bound for the current hyper-parameters (Titsias 2009):
    with P = L^-1 K_zx (s^2 = noise):  S = (I + P P^T / s^2)^-1,  m = S P y / s^2;
    with per-point noise (down-weighted outliers) P / s becomes P diag(1 / s_i).

    Z (N, d), Y (N, T) float64; noise (T,); outlier_noise (T, N) or None."""
    strat = model.base_strategy
    with torch.no_grad():
        ls = model.covar_module.base_kernel.lengthscale.to(F64)         # (Q, 1, d)
        os_ = model.covar_module.outputscale.to(F64)
        Zi = strat.inducing_points.to(F64) / ls
        Kzz = os_[:, None, None] * kfun(kind, sqdist(Zi, Zi))
        Kzz = Kzz + strat.jitter_val * torch.eye(Zi.shape[1], dtype=F64)
        L = cholesky(Kzz)
        X = Z.to(F64).unsqueeze(0) / ls
        Kzx = os_[:, None, None] * kfun(kind, sqdist(Zi, X))
        P = torch.linalg.solve_triangular(L, Kzx, upper=False)          # (Q, M, N)
        del Kzx
        w = point_noise(noise, outlier_noise).expand(P.shape[0], P.shape[2]).rsqrt()
        P.mul_(w[:, None, :])                                 # in place: P is large
        A = P @ P.mT + torch.eye(P.shape[1], dtype=F64)
        # natural parameters of q(v): S^-1 m = P y / s^2 and -S^-1 / 2 = -A / 2
        vd = strat._variational_distribution
        vd.natural_vec.copy_((P @ (Y.T.to(F64) * w).unsqueeze(-1)).squeeze(-1))
        vd.natural_mat.copy_(-0.5 * A)
        strat.variational_params_initialized.fill_(1)


def sparse_posterior(model: SVGP, likelihood, kind: str) -> KernelPosterior:
    """mean = k L^-T m,  var = s + k L^-T (S - I) L^-1 k^T  (whitened SVGP), float64."""
    strat = model.base_strategy
    with torch.no_grad():
        ls = model.covar_module.base_kernel.lengthscale.detach().to(F64)
        os_ = model.covar_module.outputscale.detach().to(F64)
        Zi = strat.inducing_points.detach().to(F64) / ls
        Kzz = os_[:, None, None] * kfun(kind, sqdist(Zi, Zi))
        Kzz = Kzz + strat.jitter_val * torch.eye(Zi.shape[1], dtype=F64)
        L = cholesky(Kzz)
        vd = strat._variational_distribution
        prec = -2.0 * vd.natural_mat.detach().to(F64)                    # S^-1
        S = torch.cholesky_inverse(cholesky(0.5 * (prec + prec.mT)))
        m = S @ vd.natural_vec.detach().to(F64).unsqueeze(-1)
        eye = torch.eye(Zi.shape[1], dtype=F64)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)          # L^-1
        alpha = (Linv.mT @ m).squeeze(-1)
        P = Linv.mT @ (S - eye) @ Linv
        P = 0.5 * (P + P.mT)
        if isinstance(likelihood, gpytorch.likelihoods.MultitaskGaussianLikelihood):
            # LMCVariationalStrategy adds its jitter once more to the mixed covariance.
            lmc = model.variational_strategy
            noise = likelihood.task_noises.detach().to(F64) + float(lmc.jitter_val)
            mix = lmc.lmc_coefficients.detach()
        else:
            noise = likelihood.noise.detach().reshape(-1)
            mix = None
    return KernelPosterior(kind, strat.inducing_points.detach(),
                           1.0 / ls, os_, alpha, noise, P=P, mix=mix,
                           jitter=torch.tensor(float(strat.jitter_val)))
