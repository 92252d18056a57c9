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
   b. roll the V_k out (one batch of K x ``n_particles`` rows; over an ensemble a random
      member at every step by default, or under TS-inf row r keeps member r % E, as in the
      peer benchmark) and score them, S_k = trajectory cost (mean over its particles)
      + gamma sum_t U_t' Sigma^-1 eps_kt (the control-cost term, gamma = ``control_cost``
      x lambda);
   c. w = softmax(-(S - min S) / lambda), U = clip(U + sum_k w_k eps_k), with lambda =
      ``temperature`` in cost units, or (``temperature_units = 'relative'``, the default)
      times the spread median(J) - min(J) of this batch's costs.

3. Return U.

The control-cost term comes from importance sampling towards the optimal distribution
exp(-S/lambda) N(0, Sigma) (Williams et al. 2017; gamma = lambda): it pulls the plan
towards zero action with the strength of the prior N(0, Sigma), i.e. as an action cost
lambda/2 u' Sigma^-1 u would, which is strong for small noise. Without it (gamma = 0) the
update tends to the weighted mean of exp(-S/lambda) N(U, Sigma); Williams, Drews, Goldfain,
Rehg & Theodorou, "Information-Theoretic Model Predictive Control: Theory and Applications
to Autonomous Driving", IEEE T-RO 2018, interpolate with gamma = lambda (1 - alpha).
``keep_nominal`` makes sample 0 the unperturbed plan (eps = 0).

A relative temperature keeps the effective sample size in the same range whatever the
cost's scale and the distance to the target (Williams et al. tune lambda per task; with
lambda = 1 in cost units the reaching costs of the arms, 10^2-10^3, put all weight on one
sample and the plan becomes that sample's noise).
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
    control-cost term), ess (effective sample size 1 / sum w^2 of the last update, 1..K),
    temperature (lambda of the last update, cost units).

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

    def _lambda(self, J: torch.Tensor, finite: torch.Tensor) -> float:
        """Temperature lambda in cost units for the finite costs J[finite]."""
        s = self.settings
        lam = float(s.temperature)
        if s.temperature_units == "relative":
            Jf = J[finite]
            spread = float(Jf.median() - Jf.min())
            # All samples equally good: any lambda gives uniform weights.
            lam *= spread if spread > 0.0 and math.isfinite(spread) else 1.0
        return lam

    def _improve(self, x0: np.ndarray, U: torch.Tensor, model: Any, cost: Any
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.settings
        K, T, P = self._n, U.shape[0], int(s.n_particles)
        std = self.noise_std
        sigma = torch.as_tensor(std, dtype=self.dtype)
        sigma_inv = torch.as_tensor(1.0 / std ** 2, dtype=self.dtype)
        best_cost = mean_cost = lam = math.inf
        ess = 0.0
        any_finite = False
        states = None
        for _ in range(int(s.iterations)):
            noise = self._noise(K, T)
            if s.keep_nominal:
                noise[0] = 0.0
            V = self._clamp(U + sigma * noise)                          # (K, T, nu)
            eps = V - U
            J, xs = self._evaluate(model, cost, x0, V if P == 1 else V.repeat_interleave(P, 0))
            if P > 1:
                J = J.view(K, P).mean(dim=1)      # the mean over a sample's particles
            finite = torch.isfinite(J)
            if not bool(finite.any()):
                continue   # no information in this batch; keep U and resample
            any_finite = True
            best_cost = float(J[finite].min())
            mean_cost = float(J[finite].mean())
            lam = self._lambda(J, finite)
            S = J
            if s.control_cost > 0.0:
                S = J + (s.control_cost * lam) * ((eps * sigma_inv) * U).sum(dim=(1, 2))
            # exp(-inf) = 0: diverged samples get no weight.
            w = torch.softmax(-(S - S[finite].min()) / lam, dim=0)
            ess = float(1.0 / (w * w).sum())
            U = self._clamp(U + (w @ eps.reshape(K, -1)).view(T, self.nu))
            if not s.nominal_rollout:
                # Importance-weighted state trajectory: the estimate of the new plan's states
                # (the mean over each sample's particles).
                w_x = w.to(xs.dtype)
                xk = torch.nan_to_num(xs[:, :K * P]).view(-1, K, P, self.nx).mean(dim=2)
                states = torch.einsum("k,tkn->tn", w_x, xk)
        return U, dict(any_finite=any_finite, iterations=int(s.iterations),
                       best_cost=best_cost, mean_cost=mean_cost, ess=ess, states=states,
                       temperature=lam)
