"""Information-theoretic model-predictive path integral (MPPI) planner."""
from mbrl_ros.core.planners.mppi.planner import MPPIPlanner
from mbrl_ros.core.planners.mppi.settings import MPPISettings

__all__ = ["MPPIPlanner", "MPPISettings"]
