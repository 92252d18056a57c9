"""Hyper-parameters of the MPPI planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.planners.sampling import STD_UNITS, SamplingSettings
from mbrl_ros.core.settings import setting

__all__ = ["TEMPERATURE_UNITS", "MPPISettings"]

TEMPERATURE_UNITS = ("relative", "absolute")


@dataclass(frozen=True)
class MPPISettings(SamplingSettings):
    """Information-theoretic MPPI settings (Williams et al., ICRA 2017).

    256 samples and one update per call (real time over a 5-member ensemble). The
    defaults reach the arm2 and arm7 reaching targets of ``bench/controllers.py`` with the
    known model, replanning every period: a noise of 0.05 of the effort limit, a
    temperature relative to the sampled cost spread, no control-cost term and the
    unperturbed plan kept as a sample. pytorch_mppi's settings in the peer benchmark
    (noise 0.25 of the limit, lambda 1 in cost units, control-cost term) make the update
    follow the single best sample there (effective sample size 1.0): see the field docs.
    Temporal smoothing of the samples: ``noise_beta`` > 0 (colored noise).
    """
    samples: int = setting(256, "sampled action sequences K per iteration", low=1,
                           high=1_000_000, dynamic=True)
    temperature: float = setting(
        0.1, "temperature lambda of the weights softmax(-S / lambda), in "
        "temperature_units; also scales the control-cost term", low=1e-12, high=1e12,
        dynamic=True)
    temperature_units: str = setting(
        "relative", "'relative': lambda = temperature x (median(S) - min(S)) of the sampled "
        "costs, whatever the cost's scale; 'absolute': lambda in cost units (Williams et al.); "
        "docs/PLANNERS.md", choices=TEMPERATURE_UNITS, dynamic=True)
    noise_sigma: tuple[float, ...] = setting(
        (0.05,), "standard deviation of the action noise (one value, or one per action), in "
        "noise_units; Sigma = diag(noise_sigma^2); tuning notes in docs/PLANNERS.md",
        low=0.0, dynamic=True)
    noise_units: str = setting(
        "limit_fraction", "units of noise_sigma: 'limit_fraction' times half the action range "
        "(u_max - u_min)/2 (the effort limit for symmetric limits), or 'absolute' action "
        "units (N m, N)", choices=STD_UNITS)
    iterations: int = setting(1, "MPPI updates per optimize call", low=1, high=10_000,
                              dynamic=True)
    control_cost: float = setting(
        0.0, "weight gamma / lambda of the control-cost term gamma * sum_t u_t' Sigma^-1 eps_t "
        "(1: Williams et al. 2017, pytorch_mppi; 0: none); docs/PLANNERS.md", low=0.0, high=1.0,
        dynamic=True)
    keep_nominal: bool = setting(
        True, "make sample 0 the unperturbed nominal (eps = 0), so that an update never "
        "loses the current plan when every perturbation is worse", dynamic=True)

    def __post_init__(self):
        if not self.noise_sigma:
            raise ValueError("noise_sigma must not be empty")
        if any(v <= 0 for v in self.noise_sigma):
            raise ValueError("noise_sigma must be > 0")
