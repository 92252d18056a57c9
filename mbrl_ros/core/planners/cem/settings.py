"""Hyper-parameters of the CEM planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.planners.sampling import STD_UNITS, SamplingSettings
from mbrl_ros.core.settings import setting

__all__ = ["CEMSettings"]


@dataclass(frozen=True)
class CEMSettings(SamplingSettings):
    """Cross-entropy method settings.

    Real-time defaults: one iteration of 256 candidates per call (the cost of one MPPI
    update), warm-started from the shifted mean and, as in iCEM (Pinneri et al. 2020), the
    shifted best elites of the previous call and the mean itself among the candidates, so
    the optimisation continues from call to call; one particle per candidate (TS-1 over an
    ensemble), an initial standard deviation of 0.1 of the effort limit. Elite ratio 0.1 and
    alpha 0.1 as mbrl-lib's ``CEMOptimizer``.

    mbrl-lib's PETS configuration (population 256 (its default: 500), 5 iterations, 20
    particles, initial std of half the half-range, TS-inf) evaluates 25,600 model rows per
    step of the horizon, 100 times the defaults' 256, far too slow to replan in real time
    (plan times against mbrl-lib's own CEM, ``bench/anchors.py`` P2:
    BENCHMARKS.md, "Figures moved out of docstrings (issue 13)").
    """
    population: int = setting(256, "candidate action sequences per iteration", low=2,
                              high=1_000_000, dynamic=True)
    elite_ratio: float = setting(0.1, "share of the population (rounded up) that refits the "
                                 "sampling distribution", low=1e-6, high=1.0, dynamic=True)
    iterations: int = setting(
        1, "CEM iterations per optimize call; each costs one rollout of population x "
        "n_particles rows (mbrl-lib/PETS: 5; 2 already doubles the time of a call)", low=1,
        high=10_000, dynamic=True)
    alpha: float = setting(0.1, "smoothing: mean/var = alpha * old + (1 - alpha) * elite "
                           "mean/var", low=0.0, high=1.0, dynamic=True)
    init_std: tuple[float, ...] = setting(
        (0.1,), "initial standard deviation of the samples at every step (one value, or one per "
        "action), in std_units (mbrl-lib: 0.5); docs/PLANNERS.md", low=0.0, dynamic=True)
    std_units: str = setting(
        "limit_fraction", "units of init_std: 'limit_fraction' times half the action range "
        "(u_max - u_min)/2 (the effort limit for symmetric limits), or 'absolute' action "
        "units (N m, N)", choices=STD_UNITS)
    sampling: str = setting(
        "truncated", "'truncated' (PETS/mbrl-lib CEM: variance capped and noise truncated to +-2 "
        "std inside the limits) or 'clipped' (iCEM: unconstrained samples clipped to the limits)",
        choices=("truncated", "clipped"), dynamic=True)
    keep_elites: float = setting(
        0.3, "iCEM: share of the elites (rounded) that are candidates again in the next "
        "iteration and, shifted by the elapsed steps, in the first iteration of the next "
        "call (re-evaluated; 0: mbrl-lib's CEM)", low=0.0, high=1.0, dynamic=True)
    keep_mean: bool = setting(
        True, "iCEM: the current mean is one of the candidates of every iteration",
        dynamic=True)
    return_best: bool = setting(
        False, "return the best candidate seen instead of the final mean (mbrl-lib "
        "return_mean_elites = not return_best)", dynamic=True)

    def __post_init__(self):
        if not self.init_std:
            raise ValueError("init_std must not be empty")
        if any(v <= 0 for v in self.init_std):
            raise ValueError("init_std must be > 0")
