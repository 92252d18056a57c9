"""Planner that hands out a global policy trained by guided policy search (no online
optimisation): lets the controller node switch to a GPS-trained policy like any planner."""
from mbrl_ros.core.planners.gps_policy.planner import GPSPolicyPlanner
from mbrl_ros.core.planners.gps_policy.settings import GPSPolicySettings

__all__ = ["GPSPolicyPlanner", "GPSPolicySettings"]
