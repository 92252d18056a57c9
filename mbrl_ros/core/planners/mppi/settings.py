"""Hyper-parameters of the MPPI planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.planners.sampling import STD_UNITS, SamplingSettings
from mbrl_ros.core.settings import setting

__all__ = ["MPPISettings"]


@dataclass(frozen=True)
class MPPISettings(SamplingSettings):
    """Information-theoretic MPPI settings (Williams et al., ICRA 2017).

    Defaults match pytorch_mppi's use in the peer benchmark: 256 samples, lambda 1, a
    noise standard deviation of 0.25 of the effort limit, one update per call.
    Temporal smoothing of the samples: ``noise_beta`` > 0 (colored noise).
    """
    samples: int = setting(256, "sampled action sequences K per iteration", low=1,
                           high=1_000_000, dynamic=True)
    temperature: float = setting(1.0, "temperature lambda: weights softmax(-S / lambda) and "
                             "scale of the control-cost term", low=1e-12, high=1e12,
                             dynamic=True)
    noise_sigma: tuple[float, ...] = setting(
        (0.25,), "standard deviation of the action noise (one value, or one per action), in "
        "noise_units; Sigma = diag(noise_sigma^2)", low=0.0, dynamic=True)
    noise_units: str = setting(
        "limit_fraction", "units of noise_sigma: 'limit_fraction' times half the action range "
        "(u_max - u_min)/2 (the effort limit for symmetric limits), or 'absolute' action "
        "units (N m, N)", choices=STD_UNITS)
    iterations: int = setting(1, "MPPI updates per optimize call", low=1, high=10_000,
                              dynamic=True)
    control_cost: float = setting(
        1.0, "weight gamma / lambda of the control-cost term gamma * sum_t u_t' Sigma^-1 "
        "eps_t of a sample's perturbation eps: 1 as in Williams et al. 2017 and "
        "pytorch_mppi (the update then tends to the mean of exp(-S/lambda) N(0, Sigma), "
        "which pulls the plan towards zero action as a cost lambda/2 u' Sigma^-1 u would); "
        "0: no such term (the mean of exp(-S/lambda) N(U, Sigma)); Williams et al. 2018 "
        "use 1 - alpha", low=0.0, high=1.0, dynamic=True)
    keep_nominal: bool = setting(
        False, "make sample 0 the unperturbed nominal (eps = 0), so that an update never "
        "loses the current plan when every perturbation is worse", dynamic=True)

    def __post_init__(self):
        if not self.noise_sigma:
            raise ValueError("noise_sigma must not be empty")
        if any(v <= 0 for v in self.noise_sigma):
            raise ValueError("noise_sigma must be > 0")
