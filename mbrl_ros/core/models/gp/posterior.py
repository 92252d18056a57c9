"""Fast prediction caches of the GP: the posterior as plain float64 tensors, built once at
the end of a fit (or from an artifact), so a query is one kernel row, a dot product for the
mean and one matrix product for the variance, without GPyTorch's per-call overhead.

* :class:`KernelPosterior`: Q latent GPs with shared training inputs (exact GP) or their
  own inducing points (SVGP), optionally mixed into the outputs (LMC).
* :class:`KroneckerPosterior`: the exact multitask (coregionalised) GP through the
  eigen-decompositions of the input and task covariances.

Inputs z (B, d) are normalised model inputs; means and variances (B, T) are of the
normalised residual from the affine prior (variances include the observation noise).
"""
from __future__ import annotations

import numpy as np
import torch

from mbrl_ros.core.models.gp.kernels import F64, kfun, kfun_grad

class KernelPosterior:
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
        self.jitter = (jitter if jitter is not None else torch.zeros(())).to(F64)
        self.inv_ls = inv_ls.to(F64)                                      # (Q, 1, d)
        self.shared = centers.dim() == 2
        self.centers = centers.to(F64).contiguous()                      # (n, d) | (Q, n, d)
        if self.shared:
            self.w = self.inv_ls[:, 0, :].pow(2)                           # (Q, d)
            self.xt = self.centers.T.contiguous()                          # (d, n)
            self.csq = (self.centers.pow(2) @ self.w.T).T.contiguous()    # (Q, n)
        else:
            scaled = self.centers * self.inv_ls
            self.xt = scaled.mT.contiguous()                               # (Q, d, n)
            self.csq = scaled.pow(2).sum(-1)                               # (Q, n)
        self.outputscale = outputscale.to(F64)
        self.alpha = alpha.to(F64).unsqueeze(-1).contiguous()            # (Q, n, 1)
        self.noise = noise.to(F64)
        self.W = W.to(F64).contiguous() if W is not None else None
        self.P = P.to(F64).contiguous() if P is not None else None
        self.mix = mix.to(F64) if mix is not None else None
        self.n_latent = self.inv_ls.shape[0]
        # The mean-only query's constants: -2 folded into the centres, the outputscale
        # into the weights (two fewer passes over the (Q, B, n) kernel rows).
        self._xt_m2 = (-2.0 * self.xt).contiguous()
        self._alpha_os = (self.outputscale[:, None, None] * self.alpha).contiguous()

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
            return self.outputscale[:, None, None] * kfun(self.kind, D.clamp_min(0.0))
        # No autograd: the same arithmetic in place, fewer passes over (Q, B, n).
        D = (zw @ self.xt).mul_(-2.0).add_(zsq).add_(self.csq[:, None, :]).clamp_min_(0.0)
        return kfun(self.kind, D, inplace=True).mul_(self.outputscale[:, None, None])

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(0).expand(self.n_latent, *z.shape)

    def latent_mean(self, zq: torch.Tensor) -> torch.Tensor:
        """(Q, B, d) -> (Q, B): latent q's mean at zq[q] (for per-output Jacobians)."""
        return (self._krow(zq) @ self.alpha).squeeze(-1)

    def mean_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) normalised inputs -> mean (B, T) and its Jacobian (B, T, d), analytic
        (no autograd): with g_qn = a_qn dk/dD (z, c_n) and D = |s_q (z - c_n)|^2,
        d mean_q / dz = 2 s_q^2 (z sum_n g_qn - sum_n g_qn c_n) -- two products of the
        (Q, B, n) kernel-derivative rows, batched over all B rows."""
        zq = self._expand(z)
        if self.shared:
            zw = zq * self.w[:, None, :]
            zsq = (zw * zq).sum(-1, keepdim=True)
            scale, zs, C = self.w[:, None, :], zq, self.xt.T                # (Q,1,d), z, (n,d)
        else:
            zw = zq * self.inv_ls
            zsq = zw.pow(2).sum(-1, keepdim=True)
            scale, zs, C = self.inv_ls, zw, self.xt.mT                      # C (Q, n, d)
        D = ((zw @ self.xt) * -2.0 + zsq + self.csq[:, None, :]).clamp_min_(0.0)
        k, dk = kfun_grad(self.kind, D)
        os_ = self.outputscale[:, None]
        mean = (k @ self.alpha).squeeze(-1) * os_                          # (Q, B)
        g = dk * self.alpha.mT                                             # (Q, B, n)
        J = (zs * g.sum(-1, keepdim=True) - g @ C) * (2.0 * scale) * os_[..., None]
        if self.mix is None:
            return mean.T, J.transpose(0, 1)
        return mean.T @ self.mix, self.mix_jacobian(J)

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
        if not with_var:
            mean = self._mean(z)
            return (mean.T if self.mix is None else mean.T @ self.mix), None
        k = self._krow(self._expand(z))
        mean = (k @ self.alpha).squeeze(-1)                               # (Q, B)
        if self.W is not None:
            red = (k @ self.W).pow(2).sum(-1)
            var = self.outputscale[:, None] - red
        else:
            var = self.outputscale[:, None] + ((k @ self.P) * k).sum(-1)
        var = var.clamp_min(0.0) + self.jitter
        if self.mix is None:
            return mean.T, var.T + self.noise
        return mean.T @ self.mix, var.T @ self.mix.pow(2) + self.noise

    def _mean(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d) -> latent means (Q, B), no autograd: :meth:`_krow` and the product with
        the weights in fewer passes (the constants folded at construction)."""
        zq = self._expand(z)
        if self.shared:
            zw = zq * self.w[:, None, :]
            zsq = (zw * zq).sum(-1, keepdim=True)
            Q, B, d = zw.shape
            D = (zw.reshape(Q * B, d) @ self._xt_m2).view(Q, B, -1)
        else:
            zw = zq * self.inv_ls
            zsq = zw.pow(2).sum(-1, keepdim=True)
            D = zw @ self._xt_m2
        D.add_(self.csq[:, None, :]).add_(zsq).clamp_min_(0.0)
        return (kfun(self.kind, D, inplace=True) @ self._alpha_os).squeeze(-1)

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
    def from_arrays(cls, kind: str, a: dict[str, np.ndarray]) -> KernelPosterior:
        t = {k: torch.from_numpy(np.array(v)) for k, v in a.items()}
        return cls(kind, t["centers"], t["inv_ls"], t["outputscale"], t["alpha"],
                   t["noise"], W=t.get("W"), P=t.get("P"), mix=t.get("mix"), jitter=t["jitter"])


class KroneckerPosterior:
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
        self.centers = centers.to(F64).contiguous()                      # (N, d)
        self.inv_ls = inv_ls.to(F64)                                      # (1, 1, d)
        self.w = self.inv_ls[0, 0].pow(2)                                  # (d,)
        self.xt = self.centers.T.contiguous()
        self.csq = self.centers.pow(2) @ self.w                            # (N,)
        self.amean = amean.to(F64).contiguous()                           # (N, T)
        self.U = U.to(F64).contiguous()                                   # (N, r)
        self.lx, self.lb = lx.to(F64), lb.to(F64)                        # (r,), (T,)
        self.G2 = G2.to(F64)                                              # (T, T) = G**2
        self.bdiag, self.noise = bdiag.to(F64), noise.to(F64)            # (T,), (T,)
        self._inv = 1.0 / (self.lx[:, None] * self.lb[None, :] + 1.0)      # (r, T)
        self.n_latent = self.amean.shape[1]

    def _krow(self, z: torch.Tensor) -> torch.Tensor:
        """(..., B, d) -> (..., B, N) unit-variance kernel rows."""
        zw = z * self.w
        D = (zw @ self.xt) * -2.0 + (zw * z).sum(-1, keepdim=True) + self.csq
        return kfun(self.kind, D.clamp_min(0.0))

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(0).expand(self.n_latent, *z.shape)

    def latent_mean(self, zq: torch.Tensor) -> torch.Tensor:
        """(T, B, d) -> (T, B): output t's mean at zq[t]."""
        return (self._krow(zq) * self.amean.T[:, None, :]).sum(-1)

    def mix_jacobian(self, J: torch.Tensor) -> torch.Tensor:
        return J.transpose(0, 1)

    def mean_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> mean (B, T) and its Jacobian (B, T, d), analytic: with
        g_bn = dk/dD (z_b, c_n), d mean_t / dz = 2 w (z (g A)_t - sum_n g_n A_nt c_n)."""
        zw = z * self.w
        D = ((zw @ self.xt) * -2.0 + (zw * z).sum(-1, keepdim=True) + self.csq
             ).clamp_min_(0.0)
        k, dk = kfun_grad(self.kind, D)                                    # (B, N)
        gA = dk @ self.amean                                               # (B, T)
        J = (z[:, None, :] * gA[..., None]
             - (dk[:, None, :] * self.amean.T[None]) @ self.centers) * (2.0 * self.w)
        return k @ self.amean, J

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
    def from_arrays(cls, kind: str, a: dict[str, np.ndarray]) -> KroneckerPosterior:
        t = {k: torch.from_numpy(np.array(v)) for k, v in a.items()}
        return cls(kind, t["centers"], t["inv_ls"], t["amean"], t["U"], t["lx"],
                   t["lb"], t["G2"], t["bdiag"], t["noise"])
