"""Cross-entropy method (CEM) planner with PETS trajectory sampling and iCEM's memory.

Rubinstein's cross-entropy method over open-loop action sequences (T, nu), as PETS uses it
(Chua et al., "Deep Reinforcement Learning in a Handful of Trials using Probabilistic
Dynamics Models", NeurIPS 2018) with the update of mbrl-lib's ``CEMOptimizer``
(facebookresearch/mbrl-lib, ``mbrl/planning/trajectory_opt.py``) and the memory of iCEM
(Pinneri et al., "Sample-efficient Cross-Entropy Method for Real-time Planning", CoRL
2020). One ``optimize`` call:

1. Mean mu (T, nu): the previous mean shifted by the time elapsed since it was planned (last
   action repeated), or the zero action clipped into the limits; variance var (T, nu):
   ``init_std^2`` at every step.
2. For ``iterations`` rounds:

   a. ``sampling = 'truncated'`` (mbrl-lib's CEM): constrain the variance so that 2
      standard deviations stay inside the limits,
      ``var_c = min(var, ((mu - u_min)/2)^2, ((u_max - mu)/2)^2)``, and sample
      ``population`` sequences ``mu + sqrt(var_c) * z`` with z a standard normal truncated
      to [-2, 2], or, with ``noise_beta`` > 0, colored noise clipped to [-2, 2];
      ``sampling = 'clipped'`` (mbrl-lib's iCEM): ``clip(mu + sqrt(var) * z)`` with z white
      or colored noise. Colored noise has power spectrum 1/f^beta along time (iCEM);
   b. iCEM: replace the first candidates by the current mean (``keep_mean``) and by the
      ``keep_elites`` share of the previous iteration's elites -- in the first iteration,
      those of the previous call, shifted like the mean;
   c. roll every candidate out with ``n_particles`` particles (one batch of
      population x n_particles rows), its cost being the mean over its particles;
   d. refit to the ceil(elite_ratio * population) lowest-cost candidates (finite costs
      only) with smoothing
      ``mu = alpha mu + (1 - alpha) mean(elites)``, ``var = alpha var + (1 - alpha)
      var(elites)`` (population variance).

3. Return the final mean (or, with ``return_best``, the best candidate seen).

With ``iterations = 1`` (the default) the variance never adapts within a call: the
elites carried from call to call continue the optimisation instead, at the cost of one
rollout of the population per call.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mbrl_ros.core import registry
from mbrl_ros.core.planners.cem.settings import CEMSettings
from mbrl_ros.core.planners.sampling import SamplingPlanner, limit_scaled_std

__all__ = ["CEMPlanner"]


@registry.register("planner", "cem")
class CEMPlanner(SamplingPlanner):
    """CEM over action sequences with PETS particles (registry name ``cem``).

    Args:
        settings: :class:`CEMSettings` (None: defaults).
        nx, nu: state and action dimensions.
        u_min, u_max: (nu,) action limits.
        dt: model step [s].

    ``stats`` after ``optimize``, besides those of
    :class:`~mbrl_ros.core.planners.sampling.SamplingPlanner`: iterations, best_cost (lowest
    candidate cost seen, mean over its particles), mean_cost (mean finite candidate cost of
    the last iteration), elite_cost (mean cost of the last elites), std_mean (mean sampling
    standard deviation after the last update, action units), n_elite, n_kept (elites
    carried into the next iteration / call).

    Raises (constructor): ValueError if ``init_std`` has the wrong length or needs finite
    limits it does not have.
    """
    name = "cem"
    Settings = CEMSettings

    def __init__(self, settings: CEMSettings | None, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        # Unusable std settings fail here rather than at the first plan.
        _ = self.initial_std

    @property
    def initial_std(self) -> np.ndarray:
        """(nu,) initial sampling standard deviation from the current settings, action
        units."""
        s = self.settings
        return limit_scaled_std(s.init_std, s.std_units, self.u_min, self.u_max, "init_std")

    def _sample(self, mu: torch.Tensor, var: torch.Tensor, n: int) -> torch.Tensor:
        """n candidates (n, T, nu) around mu (T, nu) with variance var (T, nu), in the
        limits."""
        T = mu.shape[0]
        if self.settings.sampling == "clipped":
            return self._clamp(mu + var.sqrt() * self._noise(n, T))
        # mbrl-lib: keep 2 std of the truncated normal inside the limits.
        lb = (mu - self._lo) * 0.5
        ub = (self._hi - mu) * 0.5
        var = torch.minimum(torch.minimum(lb * lb, ub * ub), var)
        if float(self.settings.noise_beta) == 0.0:
            z = self._truncated_normal((n, T, self.nu))
        else:
            z = self._noise(n, T).clamp_(-2.0, 2.0)
        # The clamp only removes rounding: 2 std fit inside the limits.
        return self._clamp(mu + var.sqrt() * z)

    def _truncated_normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal samples truncated to [-2, 2]: 6 % more normal draws than needed,
        the 4.6 % outside dropped (redrawn in the rare case too few remain). torch's
        trunc_normal_ inverts the CDF with erfinv, which is slower (BENCHMARKS.md,
        "Figures moved out of docstrings (issue 13)")."""
        n = math.prod(shape)
        parts, have = [], 0
        while have < n:
            z = torch.randn((int(1.06 * (n - have)) + 64,), generator=self._generator,
                            dtype=self.dtype)
            z = z[z.abs() <= 2.0]
            parts.append(z)
            have += z.shape[0]
        z = parts[0] if len(parts) == 1 else torch.cat(parts)
        return z[:n].view(shape)

    def _configured_samples(self) -> int:
        return int(self.settings.population)

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        self._kept: torch.Tensor | None = None

    def _on_warm_start(self) -> None:
        self._kept = None     # elites of another plan

    def _carried_elites(self, T: int) -> torch.Tensor | None:
        """The elites kept at the end of the previous call, shifted like the mean (with its
        ``warm_start_fill`` appended, or their own last action repeated), or None."""
        kept, shift = self._kept, self._shift
        if kept is None or kept.shape[1] != T or shift >= T:
            return None
        if shift > 0:
            tail = (kept[:, -1:].expand(-1, shift, -1) if self._fill is None else
                    torch.as_tensor(self._fill, dtype=kept.dtype).expand(kept.shape[0],
                                                                        shift, -1))
            kept = torch.cat([kept[:, shift:], tail], dim=1)
        return kept

    def _improve(self, x0: np.ndarray, U: torch.Tensor, model: Any, cost: Any
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.settings
        pop, P = self._n, int(s.n_particles)
        n_elite = min(pop, max(1, int(math.ceil(pop * s.elite_ratio))))
        n_keep = min(n_elite, int(round(s.keep_elites * n_elite)), pop - 1)
        T = U.shape[0]
        mu = U.clone()
        std0 = torch.as_tensor(self.initial_std, dtype=self.dtype)
        var = (std0 * std0).expand_as(mu).clone()
        best_cost = math.inf
        best = mu.clone()
        mean_cost = elite_cost = math.inf
        any_finite = False
        states = None
        kept = self._carried_elites(T) if n_keep else None
        for _ in range(int(s.iterations)):
            cand = self._sample(mu, var, pop)                       # (pop, T, nu)
            # iCEM (Pinneri et al. 2020): the current mean and the best elites of the
            # previous iteration (or, shifted, of the previous call) are candidates again.
            first = 0
            if s.keep_mean:
                cand[0] = self._clamp(mu)
                first = 1
            if kept is not None:
                m = min(kept.shape[0], pop - first)
                cand[first:first + m] = self._clamp(kept[:m])
            rows = cand if P == 1 else cand.repeat_interleave(P, dim=0)
            J, xs = self._evaluate(model, cost, x0, rows)
            if P > 1:
                J = J.view(pop, P).mean(dim=1)
            finite = torch.isfinite(J)
            if not bool(finite.any()):
                continue   # nothing to learn from this population; resample
            any_finite = True
            # Diverged candidates (+inf) never become elites, even if fewer remain.
            k = min(n_elite, int(finite.sum()))
            Je, idx = torch.topk(J, k, largest=False, sorted=True)
            elite = cand[idx]
            kept = elite[:n_keep].clone() if n_keep else None
            mu = s.alpha * mu + (1.0 - s.alpha) * elite.mean(dim=0)
            var = s.alpha * var + (1.0 - s.alpha) * elite.var(dim=0, unbiased=False)
            mean_cost = float(J[finite].mean())
            elite_cost = float(Je.mean())
            if not s.nominal_rollout:
                # Mean over the elites' particles: the estimate of the new mean's states.
                states = xs[:, :pop * P].reshape(-1, pop, P, self.nx)[:, idx].mean(dim=(1, 2))
            if float(Je[0]) < best_cost:
                best_cost = float(Je[0])
                best = elite[0].clone()
        self._kept = kept
        plan = best if s.return_best else self._clamp(mu)
        return plan, dict(any_finite=any_finite, iterations=int(s.iterations),
                          best_cost=best_cost, mean_cost=mean_cost, elite_cost=elite_cost,
                          std_mean=float(var.sqrt().mean()), n_elite=n_elite,
                          n_kept=n_keep, states=states)
