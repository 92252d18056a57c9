"""Hyper-parameters of the CEM planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.planners.sampling import STD_UNITS, SamplingSettings
from mbrl_ros.core.settings import setting

__all__ = ["CEMSettings"]


@dataclass(frozen=True)
class CEMSettings(SamplingSettings):
    """Cross-entropy method settings.

    Defaults follow mbrl-lib's ``CEMOptimizer`` as configured for PETS (elite ratio 0.1,
    alpha 0.1, 5 iterations, initial variance (u_max - u_min)^2 / 16, i.e. a standard
    deviation of half the half-range) with a population of 256, except ``n_particles``: PETS
    uses 20, which costs 20 model rows per candidate and step; 5 (a multiple of the usual 5
    elites) lets every candidate be scored once by every member under TS-inf.
    """
    population: int = setting(256, "candidate action sequences per iteration", low=2,
                              high=1_000_000, dynamic=True)
    elite_ratio: float = setting(0.1, "share of the population (rounded up) that refits the "
                                 "sampling distribution", low=1e-6, high=1.0, dynamic=True)
    iterations: int = setting(5, "CEM iterations per optimize call", low=1, high=10_000,
                              dynamic=True)
    alpha: float = setting(0.1, "smoothing: mean/var = alpha * old + (1 - alpha) * elite "
                           "mean/var", low=0.0, high=1.0, dynamic=True)
    init_std: tuple[float, ...] = setting(
        (0.5,), "initial standard deviation of the samples at every step (one value, or one "
        "per action), in std_units", low=0.0, dynamic=True)
    std_units: str = setting(
        "limit_fraction", "units of init_std: 'limit_fraction' times half the action range "
        "(u_max - u_min)/2 (the effort limit for symmetric limits), or 'absolute' action "
        "units (N m, N)", choices=STD_UNITS)
    sampling: str = setting(
        "truncated", "'truncated': PETS/mbrl-lib CEM, the variance is capped so that 2 "
        "standard deviations stay inside the limits and the noise is truncated (white) or "
        "clipped (colored) to +-2 std, so samples never touch the limits (a mean exactly on "
        "a limit cannot move within the call); 'clipped': iCEM, unconstrained samples "
        "clipped to the limits", choices=("truncated", "clipped"), dynamic=True)
    n_particles: int = setting(
        5, "particles per candidate (PETS: 20); a candidate's cost is the mean over its "
        "particles; with 'tsinf' particle row r uses member r % E", low=1, high=10_000,
        dynamic=True)
    return_best: bool = setting(
        False, "return the best candidate seen instead of the final mean (mbrl-lib "
        "return_mean_elites = not return_best)", dynamic=True)
    aleatoric: bool = setting(
        True, "in 'tsinf'/'ts1', add each member's predicted Gaussian noise to the particles "
        "(PETS); ignored by models whose propagate() has no 'sample' argument", dynamic=True)

    def __post_init__(self):
        if not self.init_std:
            raise ValueError("init_std must not be empty")
        if any(v <= 0 for v in self.init_std):
            raise ValueError("init_std must be > 0")
