"""Trajectory costs for the planners, with analytic derivatives (iLQR) and numpy/torch
batch evaluation (sampling planners)."""
from mbrl_ros.core.costs.quadratic import Cost, JointLimitBarrier, QuadraticCost, SumCost

__all__ = ["Cost", "JointLimitBarrier", "QuadraticCost", "SumCost"]
