"""Known-dynamics models for planner tests (imported by the planner test files)."""
import numpy as np

from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelSpec,
                                       check_xu)


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

class Pendulum(AnalyticModel):
    """Damped pendulum, theta = 0 hanging down; semi-implicit Euler.
    theta'' = -(g/l) sin(theta) - b theta' + u / (m l^2)."""

    def __init__(self, dt=0.05):
        super().__init__({}, spec_for(2, 1, dt))
        self.dt, self.g, self.b = dt, 9.81, 0.1

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        w = x[:, 1] + self.dt * (-self.g * np.sin(x[:, 0]) - self.b * x[:, 1] + u[:, 0])
        return np.stack([x[:, 0] + self.dt * w, w], axis=1), None

    def linearize(self, xs, us):
        T, dt = xs.shape[0], self.dt
        dw_dth = -dt * self.g * np.cos(xs[:, 0])
        dw_dw = 1.0 - dt * self.b
        fx = np.empty((T, 2, 2))
        fx[:, 1, 0] = dw_dth
        fx[:, 1, 1] = dw_dw
        fx[:, 0, 0] = 1.0 + dt * dw_dth
        fx[:, 0, 1] = dt * dw_dw
        fu = np.empty((T, 2, 1))
        fu[:, 1, 0] = dt
        fu[:, 0, 0] = dt * dt
        xn = self.predict(xs, us)[0]
        f0 = xn - np.einsum("tij,tj->ti", fx, xs) - np.einsum("tij,tj->ti", fu, us)
        return Linearization(fx, fu, f0)
