"""The planning interface the controller node uses, whoever solves.

:class:`Planning` is what a controller needs of "something that turns states into
policies": the in-process :class:`~mbrl_ros.core.control.mpc.MPCController` and the
worker-process :class:`~mbrl_ros.core.control.plan_process.PlanProcess` both implement it
(same public methods, same signatures; ``test_planning_protocol`` checks), so the node
never asks which one it holds. What differs is hidden behind the members:

- ``start``/``stop``: the worker process's lifecycle (nothing to do in-process);
- ``load_model``: in-process the model is loaded and verified here, with a worker it is
  loaded by the worker while it keeps planning;
- locking: each implementation makes its own methods safe to call from the node's
  planning, model-loading and parameter threads (the in-process controller holds a lock
  around a replan; the proxy does not, so a replan waiting for the worker never blocks a
  parameter change);
- ``pid``/``counters``: the worker process (None / zeros in-process).

:class:`PlanningBase` holds what both share: the configuration checks and the mirrored
configuration (planner ids, horizon, limits, continuous joints, deadline).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.planners.base import Policy

__all__ = ["Planning", "PlanningBase", "check_planner_ids", "check_target", "check_deadline",
           "check_effort_rate"]


def check_planner_ids(planner_ids: list[str], active: str, fallback: str = "") -> None:
    """ValueError unless ``active`` (and ``fallback``, if set) are configured planners."""
    if not planner_ids:
        raise ValueError("no planners configured (planner_plugins is empty)")
    for pid in [active] + ([fallback] if fallback else []):
        if pid not in planner_ids:
            raise ValueError(f"planner {pid!r} is not configured; planner_plugins: "
                             f"{', '.join(planner_ids)}")


def check_target(q_target, n_joints: int) -> np.ndarray:
    """A target as (n_joints,) float64; ValueError if NaN/inf or of another size."""
    q_target = np.asarray(q_target, dtype=float).reshape(-1)
    if not np.all(np.isfinite(q_target)):
        raise ValueError("target contains NaN or inf")
    if q_target.size != n_joints:
        raise ValueError(f"target needs {n_joints} joint positions, got {q_target.size}")
    return q_target


def check_deadline(seconds: float | None) -> float | None:
    """A replan deadline as float [s] or None; ValueError if not positive and finite."""
    if seconds is None:
        return None
    v = float(seconds)
    if not (v > 0 and np.isfinite(v)):
        raise ValueError(f"deadline must be positive and finite (or None), got {seconds}")
    return v


def check_effort_rate(rate: float) -> float:
    """An effort rate [per s] as float; ValueError if negative or not finite (0: none)."""
    v = float(rate)
    if not (v >= 0 and np.isfinite(v)):
        raise ValueError(f"effort rate must be finite and >= 0 (0: none), got {rate}")
    return v


@runtime_checkable
class Planning(Protocol):
    """Planners + model + cost -> policies, as the controller node drives them.

    Attributes (read by the node; set only through the methods and the three settable
    ones below):
        planner_ids: the configured planner ids.
        horizon: plan length [model steps].
        active: the planner in use (after the last replan).
        fallback: planner used while the model is too uncertain ('' : none); settable.
        uncertainty_threshold: mean predicted std above which the fallback plans (0:
            never); settable.
        effort_scale: fraction of the effort limits the planners plan within (change it
            with :meth:`set_effort_scale`).
        effort_rate: the command path's largest effort change [N·m/s or N/s] the planners
            plan within (0: none; change it with :meth:`set_effort_rate`).
        model_version: version of the model in use (0: none or the known model).
        spec: the model's :class:`ModelSpec`, None without a model.
        target_q: (n_joints,) target positions, None until set.
        stats: the last replan's statistics (``replan_seconds``, ``planner``,
            ``fallback``, ``exploring``, ``uncertainty``, ``switched``,
            ``lookahead_steps``, ``model_version``, and the planner's own).
        pid: the worker process's id, None when planning in this process or none runs.
        counters: ``{"starts", "failures"}`` of worker processes (zeros in-process).
    """

    planner_ids: list[str]
    horizon: int
    active: str
    fallback: str
    uncertainty_threshold: float
    effort_scale: float
    effort_rate: float
    model_version: int
    spec: ModelSpec | None
    target_q: np.ndarray | None
    stats: dict[str, Any]
    counters: dict[str, int]

    @property
    def pid(self) -> int | None: ...

    @property
    def ready(self) -> bool:
        """A replan can run (a model and a target, or a model-free planner)."""
        ...

    # -- lifecycle
    def start(self) -> None:
        """Begin planning (a worker process starts in the background)."""
        ...

    def stop(self, timeout: float = 0.2) -> None:
        """Stop planning (a worker process exits; a replan waiting for it fails)."""
        ...

    # -- configuration
    def validate_planner(self, pid: str) -> None: ...

    def select(self, pid: str) -> None: ...

    def set_target(self, q_target: np.ndarray) -> None: ...

    def set_cost_settings(self, s: CostSettings) -> None: ...

    def set_effort_scale(self, scale: float) -> None:
        """Plan within ``scale`` x the effort limits (planners rebuilt, warm-started)."""
        ...

    def set_effort_rate(self, rate: float) -> None:
        """Plan within this effort rate [per s] from the last applied command (the one
        :meth:`replan` is given); 0: no rate limit."""
        ...

    def rebuild_planners(self) -> None: ...

    def reset_planners(self) -> None:
        """Every planner forgets its plan (a new episode)."""
        ...

    def explorer(self) -> str | None: ...

    # -- models
    def load_model(self, source: str, version: int | None = None,
                   checksum: str | None = None, state: np.ndarray | None = None) -> int:
        """Load, verify and use model ``source`` ('mujoco' or an artifact directory) from
        a next replan on; returns its version (ModelError: refused, the previous model
        stays)."""
        ...

    # -- planning
    def replan(self, x: np.ndarray, t: float, lookahead: float = 0.0,
               last: tuple[np.ndarray, float] | None = None) -> Policy:
        """The new policy from state ``x`` at time ``t`` [s] (``lookahead``: latency
        compensation [s]; ``last``: the command last applied and its state's time [s],
        from which :attr:`effort_rate` bounds the plan's first actions)."""
        ...

    def nominal_states(self) -> tuple[np.ndarray, np.ndarray] | None: ...


class PlanningBase:
    """The configuration both implementations check and keep the same way.

    Args:
        planner_ids, active, fallback: configured ids (``active``/``fallback`` checked).
        horizon: plan length [model steps].
        effort_limits: (nu,) command limits [N·m or N].
        position_limits: (n_joints, 2) joint limits (±inf: none).
        continuous: (n_joints,) bool, continuous joints (default: none).
        deadline: wall-clock budget of a replan [s] (None: none).
    """

    def _init_config(self, planner_ids: list[str], active: str, fallback: str, horizon: int,
                     effort_limits: np.ndarray, position_limits: np.ndarray,
                     continuous: np.ndarray | None, deadline: float | None) -> None:
        check_planner_ids(planner_ids, active, fallback)
        self.deadline = check_deadline(deadline)
        self.planner_ids = list(planner_ids)
        self.horizon = int(horizon)
        self.effort_limits = np.asarray(effort_limits, dtype=float)
        self.position_limits = np.asarray(position_limits, dtype=float)
        n_joints = self.position_limits.shape[0]
        self.continuous = (np.zeros(n_joints, bool) if continuous is None
                           else np.asarray(continuous, dtype=bool).reshape(-1))
        if self.continuous.size != n_joints:
            raise ValueError(f"continuous needs {n_joints} flags, got {self.continuous.size}")

    @property
    def n_joints(self) -> int:
        return int(self.position_limits.shape[0])

    def validate_planner(self, pid: str) -> None:
        """ValueError naming the valid ids unless ``pid`` is a configured planner."""
        if pid not in self.planner_ids:
            raise ValueError(f"unknown planner {pid!r}; valid: {', '.join(self.planner_ids)}")
