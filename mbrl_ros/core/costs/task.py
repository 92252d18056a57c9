"""The task cost of model-predictive control: reaching a joint target.

:class:`CostSettings` are the controller's task weights (ROS parameters of the controller
node, dynamic); :func:`task_cost` turns them into the :class:`QuadraticCost` every planner
minimises (the controller adds the joint-limit barrier).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.costs.quadratic import QuadraticCost
from mbrl_ros.core.settings import setting

__all__ = ["CostSettings", "task_cost"]


@dataclass(frozen=True)
class CostSettings:
    position_weight: float = setting(100.0, "weight of joint position error",
                                     unit="1/rad²", low=0.0, high=1e8, dynamic=True)
    velocity_weight: float = setting(1.0, "weight of joint velocity", unit="s²/rad²",
                                     low=0.0, high=1e8, dynamic=True)
    effort_weight: float = setting(0.01, "weight of effort, per squared fraction of the "
                                   "effort limit", low=0.0, high=1e8, dynamic=True)
    terminal_factor: float = setting(10.0, "terminal weight as a multiple of the stage "
                                     "weight", low=0.0, high=1e6, dynamic=True)
    limit_weight: float = setting(1000.0, "weight of the joint-limit barrier", unit="1/rad²",
                                  low=0.0, high=1e9, dynamic=True)
    limit_margin: float = setting(0.05, "the barrier starts this far inside the joint limits",
                                  unit="rad|m", low=0.0, high=1.0, dynamic=True)


def task_cost(s: CostSettings, target_q: np.ndarray, effort_limits: np.ndarray,
              continuous: np.ndarray | None = None) -> QuadraticCost:
    """The reaching cost of the MPC (without the joint-limit barrier): weights on the joint
    position error (wrapping on ``continuous`` joints), joint velocities and efforts as
    fractions of their limits; terminal weight ``terminal_factor`` x the stage weight.
    State x = [q (n,), qd (n,)], n = target_q.size."""
    n = np.asarray(target_q).size
    q = np.r_[np.full(n, s.position_weight), np.full(n, s.velocity_weight)]
    r = s.effort_weight / np.maximum(np.asarray(effort_limits, float), 1e-9) ** 2
    periodic = () if continuous is None else np.flatnonzero(continuous)
    return QuadraticCost.diagonal(q, r, s.terminal_factor * q,
                                  x_target=np.r_[target_q, np.zeros(n)], periodic=periodic)
