"""Known-dynamics models for planner tests (imported by the planner test files)."""
from mbrl_ros.core.models.base import DynamicsModel, FitReport, ModelSpec


def spec_for(nx, nu, dt):
    """A ModelSpec with generic names x0.., u0.."""
    return ModelSpec(nx, nu, tuple(f"x{i}" for i in range(nx)),
                     tuple(f"u{i}" for i in range(nu)), dt)


class AnalyticModel(DynamicsModel):
    """Known dynamics: nothing to fit or store. Subclasses implement predict/linearize."""
    kind = "test_analytic"
    Settings = dict

    def fit(self, data, rng=None, progress=None):
        return FitReport(0, 0, 0.0, notes=["analytic model: nothing to fit"])

    def state_arrays(self):
        return {}

    def load_state_arrays(self, arrays):
        pass
