"""Settings every sampling planner has (the CEM and MPPI settings subclass them) and the
choices they take."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mbrl_ros.core.settings import setting

__all__ = ["DTYPES", "FEEDBACK_MODES", "FILL_MODES", "PROPAGATION_MODES", "REFINE_MODES",
           "STD_UNITS", "SamplingSettings"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FILL_MODES = ("hold", "repeat", "zero")
FEEDBACK_MODES = ("none", "lqr")
REFINE_MODES = ("none", "newton")
PROPAGATION_MODES = ("tsinf", "ts1", "expectation")
STD_UNITS = ("limit_fraction", "absolute")


@dataclass(frozen=True)
class SamplingSettings:
    """Settings every sampling planner has (subclassed by CEM and MPPI settings)."""
    horizon: int = setting(30, "planning horizon", unit="steps", low=1, high=100000)
    noise_beta: float = setting(
        0.0, "exponent of the sampling noise's power spectrum 1/f^beta along time (iCEM "
        "colored noise, Pinneri et al. 2020): 0 white, 1 pink, 2 brown; larger values give "
        "smoother action sequences", low=0.0, high=6.0, dynamic=True)
    propagation: str = setting(
        "ts1", "how models with a torch propagate() (ensembles) step the samples: 'ts1' (PETS "
        "TS-1), 'tsinf' (PETS TS-inf, member = row % E) or 'expectation'; docs/PLANNERS.md",
        choices=PROPAGATION_MODES, dynamic=True)
    n_particles: int = setting(
        1, "particles per sampled action sequence (PETS: 20); a sequence's cost is the mean over "
        "its particles; P multiplies the time per iteration; docs/PLANNERS.md",
        low=1, high=10_000, dynamic=True)
    aleatoric: bool = setting(
        False, "in 'tsinf'/'ts1', add each member's predicted Gaussian noise to the samples "
        "(PETS); ignored by models whose propagate() has no 'sample' argument", dynamic=True)
    nominal_rollout: bool = setting(
        True, "roll the returned plan out with the model's mean for the policy's xbar, cost and "
        "disagreement (one rollout); false: the weighted mean of the last iteration's samples "
        "(free)",
        dynamic=True)
    warm_start_fill: str = setting(
        "hold", "actions appended to the shifted previous plan beyond its horizon: 'hold' (its "
        "final configuration at rest under the model), 'repeat' its last action, or 'zero'; "
        "docs/PLANNERS.md", choices=FILL_MODES,
        dynamic=True)
    feedback: str = setting(
        "lqr", "gains of the returned policy u = u_t + K_t (x - xbar_t): 'lqr' (time-varying LQR "
        "gains along the plan, as tube MPPI: no open-loop drift between replans) or 'none' "
        "(open loop); docs/PLANNERS.md",
        choices=FEEDBACK_MODES,
        dynamic=True)
    refine: str = setting(
        "newton", "local refinement of the sampled plan: 'newton' (line-searched Gauss-Newton "
        "steps: no steady-state offset, moving when replans are slow) or 'none' (the "
        "sampling update alone); docs/PLANNERS.md", choices=REFINE_MODES, dynamic=True)
    refine_iterations: int = setting(
        1, "refine 'newton': Gauss-Newton steps per replan, each a linearisation, a sweep and "
        "one batched line search; stops at the first step that lowers no cost or, with a "
        "deadline, would end past it",
        low=1, high=100, dynamic=True)
    adapt_samples: bool = setting(
        True, "with a deadline from the controller (timer mode: 1/plan_rate), sample fewer "
        "sequences per replan when solves run late (none: the configured count); "
        "docs/PLANNERS.md", dynamic=True)
    min_samples: int = setting(
        32, "adapt_samples: the fewest sequences a replan samples, however late it runs",
        low=2, high=1_000_000, dynamic=True)
    deadline_fraction: float = setting(
        0.8, "adapt_samples: the share of the deadline a replan aims to use (the rest is "
        "headroom for the variation of solve times)", low=0.05, high=1.0, dynamic=True)
    seed: int = setting(0, "seed of the planner's torch generator (set again by reset())",
                        low=0)
    threads: int = setting(
        1, "torch intra-op threads while optimizing (0: leave torch's setting); restored "
        "afterwards", low=0, high=256)
    dtype: str = setting("float32", "floating-point type of samples, rollouts and costs "
                         "(torch models step in their own torch_dtype)", choices=tuple(DTYPES))
