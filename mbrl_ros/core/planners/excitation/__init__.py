"""Model-free exploration as a planner: the controller explores with the excitation policy
(PD toward random in-range targets plus coloured noise) while it has no model, and when
its model is too uncertain (``fallback_planner: excitation``)."""
from mbrl_ros.core.planners.excitation.planner import ExcitationPlanner
from mbrl_ros.core.planners.excitation.settings import ExcitationPlannerSettings

__all__ = ["ExcitationPlanner", "ExcitationPlannerSettings"]
