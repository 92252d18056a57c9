"""iLQR / iLQG with control limits (box-QP DDP)."""
from mbrl_ros.core.planners.ilqr.planner import ILQRPlanner
from mbrl_ros.core.planners.ilqr.settings import ILQRSettings

__all__ = ["ILQRPlanner", "ILQRSettings"]
