"""Planner that executes a time-varying linear-Gaussian controller with seeded exploration
noise (no online optimisation): how guided policy search samples a condition's local
controller through the controller node."""
from mbrl_ros.core.policies.lg_artifact import (LG_KIND, load_lg_controller,
                                                           publish_lg_controller)
from mbrl_ros.core.planners.lg_controller.planner import ExecutedLG, LGControllerPlanner
from mbrl_ros.core.planners.lg_controller.settings import LGControllerSettings

__all__ = ["ExecutedLG", "LGControllerPlanner", "LGControllerSettings", "LG_KIND",
           "load_lg_controller", "publish_lg_controller"]
