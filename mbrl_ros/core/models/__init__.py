"""Dynamics models behind one interface (:class:`DynamicsModel`), created by name:
``registry.create('model', 'gp')``. Each family lives in its own module and registers
itself on import; modules are imported on first lookup (torch only when needed)."""
from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec, Normalizer)

for _name, _module in (("linear", "linear"), ("tvlg", "tvlg"), ("gp", "gp"),
                       ("ensemble", "ensemble"), ("mujoco", "mujoco_model")):
    registry.add_provider("model", f"mbrl_ros.core.models.{_module}", _name)

__all__ = ["DynamicsModel", "FitReport", "Linearization", "ModelError", "ModelSpec",
           "Normalizer"]
