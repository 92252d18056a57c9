"""The GPyTorch models of the GP package: hyper-parameter containers, the models the
multitask and sparse GPs are trained through, and the reference posterior
(:meth:`~mbrl_ros.core.models.gp.GPModel.predict_reference`).

* :class:`BatchExactGP`: one exact GP per output, as a batch (GPyTorch's "Batch
  Independent Multioutput GP" example).
* :class:`MultitaskExactGP`: intrinsic coregionalisation (Bonilla, Chai & Williams,
  "Multi-task Gaussian process prediction", NIPS 2007).
* :class:`SVGP`: sparse variational GPs (Hensman, Matthews & Ghahramani, "Scalable
  variational Gaussian process classification", AISTATS 2015), optionally mixed by a
  linear model of coregionalisation (LMC).
"""
from __future__ import annotations

import gpytorch
import torch

from mbrl_ros.core.models.gp.kernels import base_kernel, positive, scaled

class BatchExactGP(gpytorch.models.ExactGP):
    """nx independent exact GPs as one batch (GPyTorch's batch-independent example)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kind: str, nx: int,
                 likelihood: gpytorch.likelihoods.GaussianLikelihood):
        super().__init__(x, y, likelihood)
        b = torch.Size([nx])
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=b)
        self.covar_module = scaled(base_kernel(kind, x.shape[-1], b), b)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                         self.covar_module(x))


class MultitaskExactGP(gpytorch.models.ExactGP):
    """Intrinsic coregionalisation model: K = k_x(z, z') (x) B (task covariance B)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kind: str, nx: int, rank: int,
                 likelihood: gpytorch.likelihoods.MultitaskGaussianLikelihood):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.MultitaskMean(gpytorch.means.ZeroMean(),
                                                        num_tasks=nx)
        self.covar_module = gpytorch.kernels.MultitaskKernel(
            base_kernel(kind, x.shape[-1], torch.Size()), num_tasks=nx, rank=rank,
            var_constraint=positive())

    def forward(self, x):
        return gpytorch.distributions.MultitaskMultivariateNormal(self.mean_module(x),
                                                                  self.covar_module(x))


class SVGP(gpytorch.models.ApproximateGP):
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
        self.covar_module = scaled(base_kernel(kind, d, b), b)

    @property
    def base_strategy(self) -> gpytorch.variational.VariationalStrategy:
        vs = self.variational_strategy
        return vs.base_variational_strategy if hasattr(vs, "base_variational_strategy") else vs

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                         self.covar_module(x))

