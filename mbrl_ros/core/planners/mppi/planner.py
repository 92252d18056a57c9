"""Model-predictive path integral (MPPI) planner.

Information-theoretic MPPI of Williams, Wagener, Goldfain, Drews, Rehg, Boots & Theodorou,
"Information Theoretic MPC for Model-Based Reinforcement Learning", ICRA 2017, with the
cost terms and update of pytorch_mppi (UM-ARM-Lab/pytorch_mppi, ``MPPI``). One
``optimize`` call:

1. Nominal U (T, nu): the previous plan shifted by the time elapsed since it was planned
   (last action repeated), or the zero action clipped into the limits.
2. For ``iterations`` updates:

   a. sample K perturbations eps_k ~ N(0, Sigma), Sigma = diag(sigma^2) (white, or colored
      along time with ``noise_beta`` > 0: the temporal smoothing option); V_k =
      clip(U + eps_k) and eps_k = V_k - U (the perturbation actually applied);
   b. roll the V_k out (one batch of K rows; for an ensemble under TS-inf sample k keeps
      member k % E, as in the peer benchmark) and score them, S_k = trajectory cost
      + gamma sum_t U_t' Sigma^-1 eps_kt (the control-cost term, gamma = ``control_cost``
      x lambda);
   c. w = softmax(-(S - min S) / lambda), U = clip(U + sum_k w_k eps_k).

3. Return U.

The control-cost term comes from importance sampling towards the optimal distribution
exp(-S/lambda) N(0, Sigma) (Williams et al. 2017; gamma = lambda): it pulls the plan
towards zero action with the strength of the prior N(0, Sigma), i.e. as an action cost
lambda/2 u' Sigma^-1 u would, which is strong for small noise. Without it (gamma = 0) the
update tends to the weighted mean of exp(-S/lambda) N(U, Sigma); Williams, Drews, Goldfain,
Rehg & Theodorou, "Information-Theoretic Model Predictive Control: Theory and Applications
to Autonomous Driving", IEEE T-RO 2018, interpolate with gamma = lambda (1 - alpha).
``keep_nominal`` makes sample 0 the unperturbed plan (eps = 0).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mbrl_ros.core import registry
from mbrl_ros.core.planners.mppi.settings import MPPISettings
from mbrl_ros.core.planners.sampling import SamplingPlanner, limit_scaled_std

__all__ = ["MPPIPlanner"]


@registry.register("planner", "mppi")
class MPPIPlanner(SamplingPlanner):
    """Information-theoretic MPPI (registry name ``mppi``).

    Args:
        settings: :class:`MPPISettings` (None: defaults).
        nx, nu: state and action dimensions.
        u_min, u_max: (nu,) action limits.
        dt: model step [s].

    ``stats`` after ``optimize``, besides those of
    :class:`~mbrl_ros.core.planners.sampling.SamplingPlanner`: iterations, best_cost and
    mean_cost (lowest and mean finite trajectory cost of the last samples, without the
    control-cost term), ess (effective sample size 1 / sum w^2 of the last update, 1..K).

    Raises (constructor): ValueError if ``noise_sigma`` has the wrong length or needs
    finite limits it does not have.
    """
    name = "mppi"
    Settings = MPPISettings

    def __init__(self, settings: MPPISettings | None, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        # Unusable noise settings fail here rather than at the first plan.
        _ = self.noise_std

    @property
    def noise_std(self) -> np.ndarray:
        """(nu,) standard deviation of the action noise from the current settings, action
        units."""
        s = self.settings
        return limit_scaled_std(s.noise_sigma, s.noise_units, self.u_min, self.u_max,
                                "noise_sigma")

    def _improve(self, x0: np.ndarray, U: torch.Tensor, model: Any, cost: Any
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.settings
        K, T = int(s.samples), U.shape[0]
        lam = float(s.temperature)
        std = self.noise_std
        sigma = torch.as_tensor(std, dtype=self.dtype)
        sigma_inv = torch.as_tensor(1.0 / std ** 2, dtype=self.dtype)
        best_cost = mean_cost = math.inf
        ess = 0.0
        any_finite = False
        states = None
        for _ in range(int(s.iterations)):
            noise = self._noise(K, T)
            if s.keep_nominal:
                noise[0] = 0.0
            V = self._clamp(U + sigma * noise)                          # (K, T, nu)
            eps = V - U
            J, xs = self._evaluate(model, cost, x0, V)
            finite = torch.isfinite(J)
            if not bool(finite.any()):
                continue   # no information in this batch; keep U and resample
            any_finite = True
            best_cost = float(J[finite].min())
            mean_cost = float(J[finite].mean())
            S = J
            if s.control_cost > 0.0:
                S = J + (s.control_cost * lam) * ((eps * sigma_inv) * U).sum(dim=(1, 2))
            # exp(-inf) = 0: diverged samples get no weight.
            w = torch.softmax(-(S - S[finite].min()) / lam, dim=0)
            ess = float(1.0 / (w * w).sum())
            U = self._clamp(U + (w @ eps.reshape(K, -1)).view(T, self.nu))
            if not s.nominal_rollout:
                # Importance-weighted state trajectory: the estimate of the new plan's states.
                w_x = w.to(xs.dtype)
                states = torch.einsum("k,tkn->tn", w_x, torch.nan_to_num(xs[:, :K]))
        return U, dict(any_finite=any_finite, iterations=int(s.iterations),
                       best_cost=best_cost, mean_cost=mean_cost, ess=ess, states=states)
