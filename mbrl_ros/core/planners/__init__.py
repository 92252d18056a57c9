"""Trajectory optimisers for model-predictive control, behind one interface
(:class:`Planner`: ``optimize`` returns a :class:`Policy`), created by name:
``registry.create('planner', 'ilqr', settings, nx, nu, u_min, u_max, dt)``.

Each planner module is listed in :data:`mbrl_ros.core.registry.PLUGINS` and registers
itself on import; modules are imported on first lookup.
"""
from mbrl_ros.core.planners.base import Planner, Policy

__all__ = ["Planner", "Policy"]
