"""Trajectory optimisers for model-predictive control, behind one interface
(:class:`Planner`: ``optimize`` returns a :class:`Policy`), created by name:
``registry.create('planner', 'ilqr', settings, nx, nu, u_min, u_max, dt)``.

Each planner module registers itself on import; modules are imported on first lookup.
"""
from mbrl_ros.core import registry
from mbrl_ros.core.planners.base import Planner, Policy

# One provider per planner module; further planners (direct collocation) add their module
# here when they exist.
for _module in ("mbrl_ros.core.planners.ilqr.planner", "mbrl_ros.core.planners.cem.planner",
                "mbrl_ros.core.planners.mppi.planner"):
    registry.add_provider("planner", _module)
registry.add_provider("planner", "mbrl_ros.core.planners.casadi_mpc.planner")
registry.add_provider("planner", "mbrl_ros.core.planners.gps_policy.planner", "gps_policy")
registry.add_provider("planner", "mbrl_ros.core.planners.excitation.planner", "excitation")

__all__ = ["Planner", "Policy"]
