"""The task cost of model-predictive control: reaching a joint target.

:class:`CostSettings` are the controller's task weights (ROS parameters of the controller
node, dynamic); :func:`task_cost` turns them into the :class:`QuadraticCost` every planner
minimises (the controller adds the joint-limit barrier). :func:`default_conditions` draws
reaching tasks (start, target) for a robot that has no tuned ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mbrl_ros.core.costs.quadratic import QuadraticCost
from mbrl_ros.core.settings import setting

if TYPE_CHECKING:
    from mbrl_ros.core.robot import RobotDescription

__all__ = ["CostSettings", "task_cost", "default_conditions"]


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


def default_conditions(robot: RobotDescription, n: int, spread: float = 0.3, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """n (start, target) pairs for a robot without tuned conditions: every start is the
    ``home`` keyframe (zeros without one), every target home plus uniform offsets in
    [-spread, spread] (rad, a tenth of that for slide joints), kept in the middle half of
    each limited range.

    Returns:
        starts (n, n_joints), targets (n, n_joints).
    """
    rng = np.random.default_rng(seed)
    home = robot.home_positions.copy()
    lo, hi = robot.position_limits[:, 0], robot.position_limits[:, 1]
    finite = np.isfinite(lo) & np.isfinite(hi)
    slide = finite & ((hi - lo) < 1.0) & ~robot.continuous
    scale = np.where(slide, 0.1 * spread, spread)
    targets = home + rng.uniform(-1.0, 1.0, (n, len(home))) * scale
    quarter = 0.25 * np.where(finite, hi - lo, 0.0)
    targets = np.where(finite, np.clip(targets, lo + quarter, hi - quarter), targets)
    return np.tile(home, (n, 1)), targets
