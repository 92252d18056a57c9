"""The ensemble's network: M Gaussian MLPs as ONE batched network.

Weights are (M, in, out) tensors and a layer is one ``torch.baddbmm`` for every member at
once (no Python loop over members). Each member maps the normalised input ``z`` (K, P, in)
to the mean and the log-variance (K, P, nx) of the normalised state change; the
log-variance is squashed softly between learned per-member bounds (PETS appendix A.1).
With the linear prior, a member's mean is ``z A + c + s * net(z)``: the network learns the
prior's residual in units of its spread ``s``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mbrl_ros.core.models.base import ModelError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _silu_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = 0.5 * (1.0 + np.tanh(0.5 * x))          # the logistic function, without overflow
    return x * s, s * (1.0 + x * (1.0 - s))


def _relu_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(x, 0.0), (x > 0.0).astype(x.dtype)


def _tanh_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.tanh(x)
    return h, 1.0 - h * h


# numpy float64 activations with their derivatives (the analytic Jacobian), same keys
ACTIVATION_GRADS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "silu": _silu_grad, "relu": _relu_grad, "tanh": _tanh_grad}


class MLPDynamics(NamedTuple):
    """The ensemble's mean prediction as plain float64 arrays (numpy, C-contiguous):

    ``x' = x + c + zc @ lin + sum_e h_e @ WL[e]``, ``zc = [x - x_mean, u - u_mean]``,
    ``h_e = act(... act(act(zc @ W0[e] + b0[e]) @ Wh[e, 0] + bh[e, 0]) ...)``
    (E elites, L = ``Wh.shape[1]`` hidden-to-hidden layers of width H; input
    normalisation, linear prior, output scaling and the 1/E of the mean folded in).
    """
    x_mean: np.ndarray      # (nx,)
    u_mean: np.ndarray      # (nu,)
    W0: np.ndarray          # (E, nx + nu, H)
    b0: np.ndarray          # (E, H)
    Wh: np.ndarray          # (E, L, H, H)
    bh: np.ndarray          # (E, L, H)
    WL: np.ndarray          # (E, H, nx), divided by E
    c: np.ndarray           # (nx,) mean of member_c
    lin: np.ndarray         # (nx + nu, nx)
    activation: str         # a key of ACTIVATIONS
# Rows per member in one batched forward pass when predicting for many particles.
_CHUNK = 1024


class Network:
    """Parameters and forward passes of :class:`~mbrl_ros.core.models.ensemble.EnsembleModel`
    (a mixin: the model holds the state)."""

    @property
    def n_elite(self) -> int:
        """Number of elite members used by predictions (E)."""
        return int(len(self.elites))

    def _init_params(self, n_in: int, n_out: int, gen: torch.Generator) -> None:
        s = self.settings
        M, H = s.members, s.hidden_units
        sizes = [n_in] + [H] * s.hidden_layers + [2 * n_out]
        self.weights, self.biases = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            W = torch.empty(M, a, b, dtype=self.torch_dtype)
            # Truncated normal, std 1/(2 sqrt(fan_in)), as PETS and mbrl-lib initialise.
            std = 1.0 / (2.0 * math.sqrt(a))
            torch.nn.init.trunc_normal_(W, 0.0, std, -2 * std, 2 * std, generator=gen)
            self.weights.append(W.requires_grad_())
            self.biases.append(torch.zeros(M, 1, b, dtype=self.torch_dtype, requires_grad=True))
        self.max_logvar = torch.full((M, 1, n_out), s.max_logvar_init, dtype=self.torch_dtype,
                                     requires_grad=True)
        self.min_logvar = torch.full((M, 1, n_out), s.min_logvar_init, dtype=self.torch_dtype,
                                     requires_grad=True)

    def _params(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, self.max_logvar, self.min_logvar]

    @staticmethod
    def _forward_with(params, act, lin, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All members in one batched pass.

        Args:
            params: (weights, biases, max_logvar, min_logvar) with a leading member axis K.
            lin: None, or the linear prior (A (in, nx), c (nx,), s (nx,), log s^2 (nx,)).
            z: (K, P, in) normalised inputs; member k evaluates the rows z[k].

        Returns:
            mean, logvar: (K, P, nx) of the normalised state change.
        """
        weights, biases, max_lv, min_lv = params
        h = z
        for W, b in zip(weights[:-1], biases[:-1]):
            h = act(torch.baddbmm(b, h, W))
        out = torch.baddbmm(biases[-1], h, weights[-1])
        nx = out.shape[-1] // 2
        mean, raw = out[..., :nx], out[..., nx:]
        if lin is not None:
            # The network predicts the residual of the linear prior in units of the
            # residual's spread.
            A, c, res_std, log_var = lin
            mean = torch.addmm(c, z.reshape(-1, z.shape[-1]), A).view(mean.shape) \
                + res_std * mean
            raw = raw + log_var
        # Soft clamp into [min_logvar, max_logvar] (PETS appendix A.1): smooth, so the
        # bounds themselves receive gradients and can be learned.
        logvar = max_lv - F.softplus(max_lv - raw)
        logvar = min_lv + F.softplus(logvar - min_lv)
        return mean, logvar

    def _forward_all(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_with((self.weights, self.biases, self.max_logvar,
                                   self.min_logvar), self._act, self._lin, z)

    def _refresh_caches(self) -> None:
        """Elite weights as contiguous no-grad tensors, and torch copies of the normalisers,
        so every prediction avoids re-indexing the weights and numpy conversions."""
        e = torch.as_tensor(self.elites, dtype=torch.long)
        self._folded = self._folded64 = self._mlp = self._mlp32 = None
        with torch.no_grad():
            self._elite_params = ([W.detach()[e].contiguous() for W in self.weights],
                                  [b.detach()[e].contiguous() for b in self.biases],
                                  self.max_logvar.detach()[e].contiguous(),
                                  self.min_logvar.detach()[e].contiguous())
        def t(a):
            return torch.as_tensor(a, dtype=self.torch_dtype)
        self._t_in_mean, self._t_in_std = t(self.in_norm.mean), t(self.in_norm.std)
        self._t_out_mean, self._t_out_std = t(self.out_norm.mean), t(self.out_norm.std)

    def _set_linear(self, linear) -> None:
        self.linear = linear
        if linear is None:
            self._lin = None
            return
        A, c, res_std = (torch.as_tensor(a, dtype=self.torch_dtype) for a in linear)
        self._lin = (A, c, res_std, 2.0 * torch.log(res_std))

    def _require_fitted(self) -> None:
        if self._elite_params is None or self.spec is None:
            raise ModelError("ensemble model is not fitted (call fit or load an artifact)")

    def _forward_elites(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elites on z (E, P, in); long particle sets in chunks of ``_CHUNK`` rows, whose
        hidden activations stay in cache."""
        P = z.shape[1]
        if P <= _CHUNK:
            return self._forward_with(self._elite_params, self._act, self._lin, z)
        parts = [self._forward_with(self._elite_params, self._act, self._lin, z[:, a:a + _CHUNK])
                 for a in range(0, P, _CHUNK)]
        return torch.cat([m for m, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)

