"""How many sequences a replan samples when the controller gives it a deadline (real-time
replanning), from the solve times it measured."""
from __future__ import annotations

import math

__all__ = ["SampleBudget"]


class SampleBudget:
    """Sampled sequences per replan from measured solve times against a deadline.

    Clock-free (the planner passes the times it measured), so it can be tested with
    injected times. A replan's time is modelled as ``fixed + per_sample * n``: the sampled
    rollouts grow with the number of samples n, the rest (warm start, nominal rollout,
    feedback gains) does not. After a replan that took ``total`` seconds, ``sampled`` of
    them in the n-sample rollouts, the next count is the n that would have fit into
    ``fraction * deadline``: taken at once when it is lower (a late replan is cut back
    in the next one), approached by at most ``growth`` x per replan when it is higher
    (a single quick replan does not restore everything), within [n_min, n_max].

    Args:
        n_max: the configured count (also the start).
        n_min: the floor.
        fraction: share of the deadline to aim for.
        growth: largest factor between consecutive counts when they grow (> 1).
    """

    def __init__(self, n_max: int, n_min: int, fraction: float = 0.8, growth: float = 1.5):
        if n_max < 1 or n_min < 1:
            raise ValueError(f"sample counts must be >= 1, got n_max {n_max}, n_min {n_min}")
        if not (0.0 < fraction <= 1.0) or not growth > 1.0:
            raise ValueError(f"need 0 < fraction <= 1 and growth > 1, got {fraction}, "
                             f"{growth}")
        self.n_max, self.n_min = int(n_max), min(int(n_min), int(n_max))
        self.fraction, self.growth = float(fraction), float(growth)
        self.n = self.n_max

    def configure(self, n_max: int, n_min: int, fraction: float) -> None:
        """New limits (settings changed at run time); the count is kept within them."""
        self.n_max, self.n_min = int(n_max), min(int(n_min), int(n_max))
        self.fraction = float(fraction)
        self.n = min(max(self.n, self.n_min), self.n_max)

    def update(self, n: int, total: float, sampled: float, deadline: float) -> int:
        """Record a replan of ``n`` samples that took ``total`` seconds, ``sampled`` of them
        in the sampled rollouts, against ``deadline`` seconds; returns the next count.
        Times that are not finite or not positive leave the count as it is."""
        if not (n > 0 and math.isfinite(total) and math.isfinite(sampled) and total > 0
                and sampled > 0 and deadline > 0):
            return self.n
        per_sample = sampled / n
        fixed = max(total - sampled, 0.0)
        fits = (self.fraction * deadline - fixed) / per_sample
        if fits < n:
            target = fits
        else:
            target = min(fits, n * self.growth)
        self.n = int(min(max(math.floor(target), self.n_min), self.n_max))
        return self.n
