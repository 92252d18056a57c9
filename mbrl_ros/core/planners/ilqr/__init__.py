"""iLQR / iLQG with control limits (box-QP DDP)."""
from mbrl_ros.core.planners.ilqr.boxqp import BoxQPResult, solve_boxqp
from mbrl_ros.core.planners.ilqr.planner import ILQRPlanner
from mbrl_ros.core.planners.ilqr.settings import ILQRSettings

__all__ = ["BoxQPResult", "ILQRPlanner", "ILQRSettings", "solve_boxqp"]
