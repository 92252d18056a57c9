"""Cross-entropy method planner with PETS trajectory sampling (and iCEM colored noise)."""
from mbrl_ros.core.planners.cem.planner import CEMPlanner
from mbrl_ros.core.planners.cem.settings import CEMSettings

__all__ = ["CEMPlanner", "CEMSettings"]
