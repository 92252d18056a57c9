"""The one interface every dynamics model implements, and what they share.

A model maps a state x (nx,) = [joint positions, joint velocities] and an action u (nu,)
(joint efforts, N·m or N) to the state one control period later. Models that learn predict
the *delta* x_{t+1} - x_t in normalised coordinates and convert back
(:mod:`mbrl_ros.core.models.pipeline`).

Artifacts hold no code: ``state_arrays()`` returns plain numpy arrays (saved as .npz with
``allow_pickle=False``) and the hyper-parameters live in JSON (see :mod:`mbrl_ros.core.store`).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from mbrl_ros.core.types import TransitionBatch


class ModelError(ValueError):
    """A model cannot be fitted or used as asked; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model is a model of: dimensions, names and control period."""
    nx: int
    nu: int
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    dt: float                      # control period [s] the model steps over
    robot: str = ""                # e.g. 'arm2' or an MJCF file name
    # State indices that are angles of continuous joints (they wrap every 2 pi): learned
    # models see their sine and cosine (:class:`~mbrl_ros.core.models.pipeline.InputFeatures`).
    periodic: tuple[int, ...] = ()

    @classmethod
    def from_batch(cls, batch: TransitionBatch, robot: str = "") -> "ModelSpec":
        """The spec of ``batch``; ``batch.meta['continuous_joints']`` (joint names) marks
        their '<joint>/position' states periodic."""
        dt = float(np.median(batch.dt)) if len(batch) else 0.0
        continuous = {f"{j}/position" for j in batch.meta.get("continuous_joints", ())}
        periodic = tuple(i for i, n in enumerate(batch.state_names) if n in continuous)
        return cls(batch.nx, batch.nu, tuple(batch.state_names), tuple(batch.action_names),
                   dt, robot or str(batch.meta.get("robot", "")), periodic)

    def check_compatible(self, other: "ModelSpec") -> None:
        """Raise ModelError if ``other`` describes different state/action spaces."""
        if (self.state_names, self.action_names) != (other.state_names, other.action_names):
            raise ModelError(
                "state/action names differ: model has "
                f"x={list(self.state_names)}, u={list(self.action_names)}; data has "
                f"x={list(other.state_names)}, u={list(other.action_names)}")

    def check_robot(self, joint_names: tuple[str, ...] | list[str],
                    command_names: tuple[str, ...] | list[str]) -> None:
        """Raise ModelError unless this is a model of a robot with these joints.

        Args:
            joint_names: the robot's state joints, in state order: the model's states must
                be exactly ``('<j>/position' ..., '<j>/velocity' ...)`` of them (nx = 2n).
            command_names: the joints the robot's effort commands drive, in command order:
                the model needs one action per command joint, named after them or
                ``u0 .. u{nu-1}`` (a dataset whose commands are not one per state joint
                names its columns so; they are then taken in command order).
        """
        want_x = (tuple(f"{j}/position" for j in joint_names)
                  + tuple(f"{j}/velocity" for j in joint_names))
        if tuple(self.state_names) != want_x:
            raise ModelError(f"model states {list(self.state_names)} are not the robot's "
                             f"{list(want_x)} (joints {list(joint_names)})")
        want_u = tuple(command_names)
        if self.nu != len(want_u):
            raise ModelError(f"model has {self.nu} action(s) {list(self.action_names)}, the "
                             f"robot {len(want_u)} command joint(s) {list(want_u)}")
        generic = tuple(f"u{i}" for i in range(self.nu))
        if tuple(self.action_names) not in (want_u, generic):
            raise ModelError(f"model actions {list(self.action_names)} are not the robot's "
                             f"command joints {list(want_u)} in that order")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        return cls(int(d["nx"]), int(d["nu"]), tuple(d["state_names"]),
                   tuple(d["action_names"]), float(d["dt"]), d.get("robot", ""),
                   tuple(int(i) for i in d.get("periodic", ())))


@dataclass(frozen=True)
class Linearization:
    """Local affine-Gaussian model along a trajectory of T steps:
    x_{t+1} ~ N(fx[t] x_t + fu[t] u_t + f0[t], cov[t]).

    fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx), cov (T, nx, nx) or None.
    """
    fx: np.ndarray
    fu: np.ndarray
    f0: np.ndarray
    cov: np.ndarray | None = None

    def __post_init__(self):
        T, nx, _ = self.fx.shape
        nu = self.fu.shape[2]
        if self.fx.shape != (T, nx, nx) or self.fu.shape != (T, nx, nu) or \
                self.f0.shape != (T, nx):
            raise ValueError(f"inconsistent linearization shapes fx {self.fx.shape}, "
                             f"fu {self.fu.shape}, f0 {self.f0.shape}")
        if self.cov is not None and self.cov.shape != (T, nx, nx):
            raise ValueError(f"cov shape {self.cov.shape} != {(T, nx, nx)}")

    @classmethod
    def about(cls, fx: np.ndarray, fu: np.ndarray, xs: np.ndarray, us: np.ndarray,
              mean_next: np.ndarray, var: np.ndarray | None = None) -> "Linearization":
        """The linearisation with Jacobians fx (T, nx, nx), fu (T, nx, nu) at the knots xs
        (T, nx), us (T, nu) that passes through the predicted next-state means there:
        ``f0 = mean_next - fx xs - fu us`` (mean_next (T, nx)). ``var`` (T, nx): the
        predicted variance, as ``cov = diag(var)``; None: no ``cov``."""
        f0 = mean_next - np.einsum("tij,tj->ti", fx, xs) - np.einsum("tij,tj->ti", fu, us)
        cov = None
        if var is not None:
            T, nx = f0.shape
            cov = np.zeros((T, nx, nx))
            cov[:, np.arange(nx), np.arange(nx)] = var
        return cls(fx, fu, f0, cov)

    @property
    def horizon(self) -> int:
        return self.fx.shape[0]


@dataclass
class FitReport:
    """What a fit did: sizes, time and validation metrics (JSON-able).

    ``ranges``: each state and action name -> [min, max] over the data the model was fitted
    on (training and validation), the region where its predictions were checked."""
    n_train: int
    n_val: int
    fit_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ranges: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def check_xu(spec: ModelSpec, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and promote (nx,)/(nu,) or (B,nx)/(B,nu) inputs to 2-D float64."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    if x.shape[1] != spec.nx or u.shape[1] != spec.nu or x.shape[0] != u.shape[0]:
        raise ModelError(f"expected x (B, {spec.nx}) and u (B, {spec.nu}), got "
                         f"{x.shape} and {u.shape}")
    return x, u


def check_trajectory(spec: ModelSpec, xs, us) -> tuple[np.ndarray, np.ndarray]:
    """Validate a trajectory for ``linearize``: xs (T, nx), us (T, nu) -> float64 arrays."""
    xs = np.asarray(xs, dtype=np.float64)
    us = np.asarray(us, dtype=np.float64)
    if xs.ndim != 2 or us.ndim != 2 or xs.shape[0] != us.shape[0]:
        raise ModelError(f"linearize expects xs (T, nx) and us (T, nu), got {xs.shape} "
                         f"and {us.shape}")
    check_xu(spec, xs[:1], us[:1])
    return xs, us


def finite_difference_linearization(step: Callable[[np.ndarray, np.ndarray], np.ndarray],
                                    xs: np.ndarray, us: np.ndarray,
                                    eps: float = 1e-5) -> Linearization:
    """Central differences of a batched mean step function, all perturbations in one call.

    Args:
        step: (B, nx), (B, nu) -> (B, nx) mean next state.
        xs: (T, nx) states, us: (T, nu) actions.
    """
    T, nx = xs.shape
    nu = us.shape[1]
    n = nx + nu
    E = np.eye(n) * eps
    # (T, 2n, n) perturbed [x, u] stacked, evaluated in one batch
    z = np.concatenate([xs, us], axis=1)
    zp = np.concatenate([z[:, None, :] + E[None], z[:, None, :] - E[None]], axis=1)
    f = step(zp[..., :nx].reshape(-1, nx), zp[..., nx:].reshape(-1, nu)).reshape(T, 2 * n, nx)
    J = (f[:, :n] - f[:, n:]).transpose(0, 2, 1) / (2 * eps)      # (T, nx, n)
    fx, fu = J[:, :, :nx], J[:, :, nx:]
    return Linearization.about(fx, fu, xs, us, step(xs, us))


# Arrays whose name ends so hold interval bounds (GPyTorch constraints' lower_bound and
# upper_bound), where +-inf is data ("unbounded"), not a diverged weight.
_BOUND_SUFFIX = "_bound"


def check_finite_arrays(arrays: Mapping[str, Any], where: str) -> None:
    """Raise ModelError naming ``where`` and the array if any learned number is not finite.

    A NaN is refused in every floating-point array, an inf in every one except interval
    bounds (names ending in ``_bound``). Integer, boolean and string arrays are not checked.

    Args:
        arrays: name -> array, as :meth:`DynamicsModel.state_arrays` or a weights file.
        where: what to name in the message (e.g. the weights file).
    """
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in "fc":
            continue
        n_nan = int(np.count_nonzero(np.isnan(a)))
        if n_nan:
            raise ModelError(f"{where}: array {name!r} has {n_nan} NaN value(s) of {a.size}: "
                             "the weights diverged or were damaged")
        if not name.endswith(_BOUND_SUFFIX):
            n_inf = int(np.count_nonzero(np.isinf(a)))
            if n_inf:
                raise ModelError(f"{where}: array {name!r} has {n_inf} infinite value(s) of "
                                 f"{a.size}: the weights diverged or were damaged")


def check_one_step(model: "DynamicsModel", x: np.ndarray, where: str = "model",
                   u: np.ndarray | None = None) -> None:
    """Raise ModelError unless the model's one-step prediction from ``x`` is finite.

    Finite weights can still overflow (e.g. the exponential of a huge log-variance), and a
    planner then fails on every replan: such a model is refused before it is used.

    Args:
        model: a model with its spec set.
        x: (nx,) state [rad, m, rad/s, m/s]: the robot's current or home state.
        where: what to name in the message (e.g. the artifact directory).
        u: (nu,) action [N·m or N]; default zeros (no effort). Time-varying models are
            asked for step 0.
    """
    spec = model.spec
    if spec is None:
        raise ModelError(f"{where}: the model has no spec (never fitted)")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    u = np.zeros(spec.nu) if u is None else np.asarray(u, dtype=np.float64).reshape(-1)
    if x.shape != (spec.nx,) or u.shape != (spec.nu,):
        raise ModelError(f"{where}: the one-step check needs x ({spec.nx},) and u "
                         f"({spec.nu},), got {x.shape} and {u.shape}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):   # the result is checked below
            if model.time_varying:
                mean, var = model.predict(x[None], u[None], 0)
            else:
                mean, var = model.predict(x[None], u[None])
    except (ValueError, TypeError, IndexError, RuntimeError, ArithmeticError) as e:
        # ModelError is a ValueError: a model refusing the input is reported the same way
        raise ModelError(f"{where}: one-step prediction failed: {type(e).__name__}: {e}") from e
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape != (1, spec.nx):
        raise ModelError(f"{where}: one-step prediction has shape {mean.shape}, expected "
                         f"(1, {spec.nx})")
    if not np.all(np.isfinite(mean)):
        raise ModelError(f"{where}: one-step prediction from x={np.round(x, 4).tolist()} "
                         f"with u={np.round(u, 4).tolist()} is not finite: "
                         f"{mean[0].tolist()}")
    if var is not None and not np.all(np.isfinite(np.asarray(var, dtype=np.float64))):
        raise ModelError(f"{where}: one-step prediction variance from "
                         f"x={np.round(x, 4).tolist()} is not finite")


def offers_linearization(model: Any) -> bool:
    """Whether ``model`` has a linearisation a planner may call: a ``linearize_mean`` or
    ``linearize`` method, and -- for a time-varying :class:`DynamicsModel` -- one of its
    own (the default differences the mean at one time and refuses time-varying models).

    Planners that only use a linearisation when it exists (the sampling planners' Newton
    step and feedback gains) ask this first, so that an error inside a real linearisation
    fails the replan instead of passing for "no linearisation".
    """
    if callable(getattr(model, "linearize_mean", None)):
        return True
    if not callable(getattr(model, "linearize", None)):
        return False
    if getattr(model, "time_varying", False) and isinstance(model, DynamicsModel):
        return type(model).linearize is not DynamicsModel.linearize
    return True


class DynamicsModel(ABC):
    """Learned or known discrete-time dynamics x_{t+1} = f(x_t, u_t) (+ noise).

    Subclasses set ``kind`` (the registry name), ``Settings`` (frozen dataclass of
    hyper-parameters, JSON-able) and implement fit / predict / state arrays. Time-varying
    models (``time_varying = True``) take a step index ``t`` in predict and linearize.
    """
    kind: ClassVar[str]
    Settings: ClassVar[type]
    time_varying: ClassVar[bool] = False
    min_transitions: ClassVar[int] = 1
    # predict on a batch of B rows costs about as much as on one row (per-call overhead
    # dominates: learned models); False where each row is its own simulation (MuJoCo).
    # Planners batch their candidate rollouts (e.g. iLQR's line search) when it is True.
    vectorized: ClassVar[bool] = True

    def __init__(self, settings: Any = None, spec: ModelSpec | None = None):
        self.settings = settings if settings is not None else self.Settings()
        self.spec = spec

    # -- learning -------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Fit on ``data``; sets ``self.spec`` from it. ``progress(fraction)`` may be called.

        Raises:
            ModelError: too few transitions, or data incompatible with ``self.spec``.
        """

    def _check_fit_data(self, data: TransitionBatch) -> None:
        if len(data) < self.min_transitions:
            raise ModelError(f"{self.kind} needs at least {self.min_transitions} transitions, "
                             f"got {len(data)}")
        spec = ModelSpec.from_batch(data, robot=self.spec.robot if self.spec else "")
        if self.spec is not None:
            self.spec.check_compatible(spec)
        self.spec = spec

    # -- prediction -----------------------------------------------------------------
    @abstractmethod
    def predict(self, x: np.ndarray, u: np.ndarray, t: int | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Next-state mean (B, nx) and per-dimension variance (B, nx) or None.

        Args:
            x: (B, nx) or (nx,) states; u: (B, nu) or (nu,) actions.
            t: time step index (time-varying models only).
        """

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """Affine model along the trajectory (xs (T, nx), us (T, nu)); step t uses the
        model at time t for time-varying models. Default: central differences of the mean."""
        if self.time_varying:
            raise TypeError(f"{type(self).__name__} is time-varying and must implement "
                            "linearize itself")
        return finite_difference_linearization(lambda x, u: self.predict(x, u)[0], xs, us)

    # -- artifacts --------------------------------------------------------------------
    @abstractmethod
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every learned number, as named numpy arrays (no objects, no code)."""

    @abstractmethod
    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`state_arrays` (``self.spec`` and settings already set)."""
