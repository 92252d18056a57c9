"""Robust down-weighting of the training transitions a smooth GP cannot explain.

Why: simulated excitation data is deterministic and dense along trajectories, so the
marginal likelihood puts the noise near ``noise_floor`` and the posterior interpolates.
The few transitions through an impact on a joint stop do not fit a smooth function;
interpolating them makes the posterior mean oscillate between trajectories (the figures
are in BENCHMARKS.md, "Issue 3", GP design measurements).

What: after the hyper-parameters, every training point's residual is judged by a
posterior that did not see it -- leave-one-out within the hyper-parameter subset
(Rasmussen & Williams 2006, eq. 5.12), the subset's posterior for the other points. A
transition with |r| > c predictive sd in some output (c = ``outlier_threshold``) gets the
noise variance max(noise, r^2 / c^2) in each output of the posterior, so that its residual
is at most c noise standard deviations: one reweighting step of a heavy-tailed likelihood
(cf. Jylanki, Vanhatalo & Vehtari, "Robust Gaussian process regression with a Student-t
likelihood", JMLR 2011), in closed form. The exact and the sparse posterior both take the
per-point noise. Cost O(T m^2 N), like the closed-form sparse posterior with m inducing
points.
"""
from __future__ import annotations

import torch

from mbrl_ros.core.models.gp.kernels import CHUNK_ELEMENTS, F64, cholesky, kfun, sqdist


def heldout_residuals(kind: str, Z: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor,
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
    K = os_[:, None, None] * kfun(kind, sqdist(Xs, Xs))
    K.diagonal(dim1=-2, dim2=-1).add_(noise[:, None])
    L = cholesky(K)
    Ki = torch.cholesky_inverse(L)
    a = Ki @ Y[idx].T.unsqueeze(-1)                                           # (T, m, 1)
    dg = Ki.diagonal(dim1=-2, dim2=-1)                                        # (T, m)
    r = torch.empty(T, N, dtype=F64)
    var = torch.empty(T, N, dtype=F64)
    r[:, idx] = a.squeeze(-1) / dg
    var[:, idx] = 1.0 / dg
    seen = torch.zeros(N, dtype=torch.bool)
    seen[idx] = True
    rest = torch.nonzero(~seen).squeeze(-1)
    step = max(1, CHUNK_ELEMENTS // (T * Xs.shape[1]))
    for i in range(0, len(rest), step):
        j = rest[i:i + step]
        Ks = os_[:, None, None] * kfun(kind, sqdist(Z[j].unsqueeze(0) / ls, Xs))
        r[:, j] = Y[j].T - (Ks @ a).squeeze(-1)
        V = torch.linalg.solve_triangular(L, Ks.mT, upper=False)              # (T, m, b)
        var[:, j] = (os_[:, None] - V.pow(2).sum(-2)).clamp_min(0.0) + noise[:, None]
    return r, var



def find_outliers(kind: str, threshold: float, Z: torch.Tensor, Y: torch.Tensor,
                  idx: torch.Tensor | None, covar, lik) -> tuple[torch.Tensor | None, int]:
    """Extra noise variances of the transitions to down-weight (see the module docstring).

    Args:
        kind: the kernel. threshold: c (<= 0: off).
        Z (N, d), Y (N, T): normalised inputs and residual targets.
        idx: the hyper-parameter subset (None: off).
        covar, lik: the trained ScaleKernel and GaussianLikelihood of the T batched GPs.

    Returns:
        (extra, n): float64 (T, N) variances r^2 / c^2 of the flagged transitions (0
        elsewhere) and their number, or (None, 0) when none is flagged.
    """
    c = threshold
    if c <= 0 or idx is None:
        return None, 0
    with torch.no_grad():
        ls = covar.base_kernel.lengthscale.detach().to(F64)             # (T, 1, d)
        os_ = covar.outputscale.detach().to(F64)
        noise = lik.noise.detach().reshape(-1).to(F64)
        r, var = heldout_residuals(kind, Z.to(F64), Y.to(F64), idx, ls, os_, noise)
        flag = (r.pow(2) > (c * c) * var).any(0)                            # (N,)
        n = int(flag.sum())
        if n:
            return torch.where(flag, r.pow(2) / (c * c), torch.zeros_like(r)), n
    return None, 0


def point_noise(noise: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """(T, N) noise variances of the posterior's training points (T, 1 without outliers):
    the per-output noise (T,), raised to ``extra`` (T, N) for down-weighted outliers."""
    noise = noise.to(F64)[:, None]
    if extra is None:
        return noise
    return torch.maximum(noise, extra)
