"""Global affine dynamics x_{t+1} = A x_t + B u_t + c + w, w ~ N(0, diag(var)).

Fitted by ridge-regularised least squares on the state change x_{t+1} - x_t, in
standardised coordinates: the shared input pipeline of the learned models
(:class:`~mbrl_ros.core.models.pipeline.DeltaPipeline`, without the sin/cos features, so
the model stays affine in x) and its affine prior
(:class:`~mbrl_ros.core.models.pipeline.AffinePrior`), which is the whole model here.
Predicting the change makes the ridge shrink A towards the identity (a system that keeps
its state) instead of towards zero, and standardising makes one ``ridge`` value mean the
same for joints in rad and efforts in N·m. The noise variance is the per-dimension
variance of the training residuals (with the degrees-of-freedom correction), so
``predict`` can report it.

Being affine, the model's linearisation is exact and the same everywhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       ModelSpec, check_trajectory, check_xu)
from mbrl_ros.core.models.pipeline import AffinePrior, DeltaPipeline
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch

__all__ = ["LinearModel", "LinearSettings"]


@dataclass(frozen=True)
class LinearSettings:
    """Hyper-parameters of :class:`LinearModel`."""
    ridge: float = setting(
        1e-6, "Tikhonov weight on the coefficients of the standardised inputs, relative "
        "to the per-sample Gram matrix (whose diagonal is 1); 0 = plain least squares",
        low=0.0, high=1e6)


@registry.register("model", "linear")
class LinearModel(DynamicsModel):
    """Least-squares affine model (registry name ``linear``).

    After fitting: ``A`` (nx, nx), ``B`` (nx, nu), ``c`` (nx,) and ``var`` (nx,) residual
    variance per state dimension (state units squared).
    """

    kind = "linear"
    Settings = LinearSettings

    # Overridden by a check that depends on nx and nu (see fit).
    min_transitions = 2

    def __init__(self, settings: LinearSettings | None = None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self.A: np.ndarray | None = None
        self.B: np.ndarray | None = None
        self.c: np.ndarray | None = None
        self.var: np.ndarray | None = None

    # ------------------------------------------------------------------ learning
    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Fit A, B, c and the residual variance on every transition of ``data``.

        Args:
            data: N transitions; needs N > nx + nu + 1 (the parameters per output plus one
                degree of freedom for the variance). ``rng`` is unused (the fit is exact).

        Raises:
            ModelError: too few transitions or incompatible state/action names.
        """
        t0 = time.perf_counter()
        self._check_fit_data(data)
        nx, nu = data.nx, data.nu
        n_params = nx + nu + 1
        N = len(data)
        if N <= n_params:
            raise ModelError(
                f"linear needs more than nx + nu + 1 = {n_params} transitions (one column "
                f"of [A B c] per input plus one degree of freedom for the noise variance) "
                f"for nx={nx}, nu={nu}; got {N}")
        x, u, xn = data.states, data.actions, data.next_states
        if not all(np.all(np.isfinite(a)) for a in (x, u, xn)):
            raise ModelError("linear: data contains NaN or inf")
        pipe = DeltaPipeline.fit(self.spec, x, u, xn, periodic=False)
        prior = AffinePrior.fit(pipe.inputs(x, u), pipe.targets(x, xn), self.settings.ridge)
        self.A, self.B, self.c = pipe.affine(prior)
        resid = data.next_states - self._mean(data.states, data.actions)
        self.var = np.sum(resid ** 2, axis=0) / (N - n_params)
        if progress is not None:
            progress(1.0)
        rmse = float(np.sqrt(np.mean(resid ** 2)))
        return FitReport(
            n_train=N, n_val=0, fit_seconds=time.perf_counter() - t0,
            metrics={"train_rmse": rmse,
                     "train_rmse_max_dim": float(np.sqrt(np.max(np.mean(resid ** 2, axis=0))))},
            notes=[f"ridge={self.settings.ridge:g} on standardised inputs"])

    # ------------------------------------------------------------------ prediction
    def _require_fitted(self) -> None:
        if self.A is None or self.spec is None:
            raise ModelError("linear model is not fitted (call fit or load an artifact)")

    def _mean(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return x @ self.A.T + u @ self.B.T + self.c

    def predict(self, x: np.ndarray, u: np.ndarray, t: int | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Mean (B, nx) and residual variance (B, nx) of x_{t+1}; ``t`` is ignored."""
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        return self._mean(x, u), np.broadcast_to(self.var, x.shape).copy()

    def affine_dynamics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, B, c) of the mean x' = A x + B u + c (iLQR rolls it out in compiled code)."""
        self._require_fitted()
        return self.A, self.B, self.c

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """The constant A, B, c (and diag(var) as cov) repeated for T = len(xs) steps."""
        self._require_fitted()
        xs, us = check_trajectory(self.spec, xs, us)
        T = xs.shape[0]
        return Linearization(np.repeat(self.A[None], T, axis=0),
                             np.repeat(self.B[None], T, axis=0),
                             np.repeat(self.c[None], T, axis=0),
                             np.repeat(np.diag(self.var)[None], T, axis=0))

    # ------------------------------------------------------------------ artifacts
    def state_arrays(self) -> dict[str, np.ndarray]:
        self._require_fitted()
        return {"A": self.A, "B": self.B, "c": self.c, "var": self.var}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        A, B, c, var = (np.asarray(arrays[k], dtype=np.float64) for k in ("A", "B", "c", "var"))
        nx, nu = (self.spec.nx, self.spec.nu) if self.spec else (A.shape[0], B.shape[1])
        if A.shape != (nx, nx) or B.shape != (nx, nu) or c.shape != (nx,) or var.shape != (nx,):
            raise ModelError(f"linear arrays do not match nx={nx}, nu={nu}: A {A.shape}, "
                             f"B {B.shape}, c {c.shape}, var {var.shape}")
        self.A, self.B, self.c, self.var = A, B, c, var
