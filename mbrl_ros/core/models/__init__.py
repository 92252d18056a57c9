"""Dynamics models behind one interface (:class:`DynamicsModel`), created by name:
``registry.create('model', 'gp')``. Each family lives in its own module, listed in
:data:`mbrl_ros.core.registry.PLUGINS`, and registers itself on import; modules are
imported on first lookup (torch only when needed)."""
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec)
from mbrl_ros.core.models.pipeline import Normalizer

__all__ = ["DynamicsModel", "FitReport", "Linearization", "ModelError", "ModelSpec",
           "Normalizer"]
