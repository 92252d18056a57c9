"""The MDGPS step-size rule: how the KL bound of the next C-step follows from the last one.

From the second iteration, :class:`~mbrl_ros.core.algorithms.gps.MDGPS` compares the
improvement of the global policy that the last C-step predicted with the one that happened,
under the Laplace (LQG) cost estimate or the sample (Monte-Carlo) costs, and rescales the
step multiplier (cbfinn/gps ``_stepadjust`` / ``_set_new_mult``, :func:`adjust_step`); a
last C-step that failed, missed its bound at the largest eta, or whose KL measured on the
new samples exceeds ``kl_sample_limit`` x its bound halves it (:func:`shrink_step`). The
C-step's bound is then epsilon = kl_step * step_mult * T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mbrl_ros.core.lqr.kl_step import CostExpansion, expected_cost, forward, policy_arrays
from mbrl_ros.core.models.base import Linearization
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

if TYPE_CHECKING:
    from mbrl_ros.core.algorithms.gps import GPSSettings, IterationRecord

__all__ = ["StepState", "adjust_step", "laplace_cost", "shrink_step"]


@dataclass
class StepState:
    """Per-iteration quantities the step adaptation compares across iterations (one entry
    per condition)."""
    dyn: list[Linearization]
    x0: list[tuple[np.ndarray, np.ndarray]]
    expansion: list[CostExpansion]
    pol_lin: list[LinearGaussianPolicy]
    new_ctrl: list[LinearGaussianPolicy] | None
    sample_cost: np.ndarray            # (M,) mean sample cost


def laplace_cost(policy: LinearGaussianPolicy, dyn: Linearization,
                 x0: tuple[np.ndarray, np.ndarray], expansion: CostExpansion) -> float:
    """Laplace (LQG) estimate of the expected cost of ``policy`` under ``dyn`` from
    x0 = (mean, cov)."""
    K, k, cov = policy_arrays(policy)
    return float(expected_cost(forward(K, k, cov, dyn, *x0), expansion).sum())


def adjust_step(prev: StepState, cur: StepState, step_mult: float, s: GPSSettings
                ) -> tuple[float, float, float]:
    """MDGPS step-size rule (one multiplier for all conditions): with the improvement
    modelled as quadratic in the step, new_mult = predicted / (2 (predicted - actual)),
    clipped to [min_mult, max_mult], and step_mult *= new_mult within [min_step_mult,
    max_step_mult].

    Args:
        prev: the last iteration's state (its ``new_ctrl`` set); cur: this iteration's.

    Returns:
        (new step_mult, predicted improvement, actual improvement).
    """
    M = len(cur.dyn)
    prev_laplace = np.mean([laplace_cost(prev.pol_lin[m], prev.dyn[m], prev.x0[m],
                                         prev.expansion[m]) for m in range(M)])
    prev_predicted = np.mean([laplace_cost(prev.new_ctrl[m], prev.dyn[m], prev.x0[m],
                                           prev.expansion[m]) for m in range(M)])
    if s.step_rule == "laplace":
        cur_laplace = np.mean([laplace_cost(cur.pol_lin[m], cur.dyn[m], cur.x0[m],
                                            cur.expansion[m]) for m in range(M)])
        predicted = prev_laplace - prev_predicted
        actual = prev_laplace - cur_laplace
    else:
        predicted = float(prev.sample_cost.mean()) - prev_predicted
        actual = float(prev.sample_cost.mean() - cur.sample_cost.mean())
    new_mult = predicted / (2.0 * max(1e-4, predicted - actual))
    new_mult = min(max(new_mult, s.min_mult), s.max_mult)
    step_mult = min(max(new_mult * step_mult, s.min_step_mult), s.max_step_mult)
    return step_mult, float(predicted), float(actual)


def shrink_step(prev_rec: IterationRecord | None, kl_prev: Sequence[float] | None,
                step_mult: float, s: GPSSettings) -> tuple[float, list[str]]:
    """Halve ``step_mult`` (not below ``min_step_mult``) if the last C-step (record
    ``prev_rec``) failed or missed its KL bound at the largest eta for some condition, or
    if its KL measured on this iteration's samples (``kl_prev``, per condition) exceeds
    ``kl_sample_limit`` x its bound.

    Returns:
        (step_mult, warnings saying why it was halved; empty if it was not).
    """
    warnings: list[str] = []
    shrink = False
    bad = [] if prev_rec is None else \
        [m for m, st in enumerate(prev_rec.traj_opt_status) if st in ("max_eta", "failed")]
    if bad:
        warnings.append(f"the last C-step could not meet its KL bound "
                        f"{prev_rec.epsilon:.3g} nats even at the largest eta or "
                        f"failed (conditions {bad})")
        shrink = True
    if kl_prev is not None and prev_rec is not None and \
            max(kl_prev) > s.kl_sample_limit * prev_rec.epsilon:
        warnings.append(f"the last C-step's KL measured on the samples "
                        f"({max(kl_prev):.3g} nats) exceeds {s.kl_sample_limit:g} x "
                        f"its bound {prev_rec.epsilon:.3g}")
        shrink = True
    if shrink:
        step_mult = max(0.5 * step_mult, s.min_step_mult)
        warnings.append(f"step multiplier halved to {step_mult:.3g}")
    return step_mult, warnings
