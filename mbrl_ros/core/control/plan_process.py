"""Replanning in a worker process: the node's control timer never waits for a solver's GIL.

A planning *thread* shares the node's Python interpreter: while iLQR holds the GIL (up to
the 5 ms switch interval at a time) the control timer cannot run, and its period jitters
by milliseconds. :class:`PlanProcess` runs the same :class:`~mbrl_ros.core.control.mpc.
MPCController` in a child interpreter instead and is a thin proxy for it in the parent:
it implements the same :class:`~mbrl_ros.core.control.planning.Planning` protocol
(``replan``, ``select``, ``set_target``, ``load_model`` -- a model *source*, not an object:
the child loads and verifies it itself --, ``start``/``stop`` for the process lifecycle,
...).

Three modules: this one is the parent's proxy (mirrored configuration, restarts);
:mod:`~mbrl_ros.core.control.plan_wire` the messages, the policy encoding and the parent's
end of the socket; :mod:`~mbrl_ros.core.control.plan_worker` the child (one
MPCController, latest wins). The child is a fresh interpreter (``python -c``; fork+exec,
never a bare fork of a parent that runs DDS threads; not multiprocessing's 'spawn' either,
which re-imports the parent's ``__main__`` -- a ROS node's console script -- in the
child). *Latest wins*: the parent has at most one replan outstanding, and the child plans
only from the newest state.

Failures: the child exiting (crash, kill) is seen at once (end of file on the socket);
a replan unanswered for ``plan_timeout`` seconds means a hang: the child is killed. Both
count in ``counters['failures']``, fail the replan in progress with
:class:`PlanProcessError`, and the next ``replan`` starts a new child from the mirrored
configuration (target, model source, planner, settings), after a back-off that doubles
with consecutive failures. A model is not a reason to fail: one the child refuses at start
(changed on disk since the parent verified it) is reported once in ``info['model_error']``
and the parent drops it (no model until a new one loads) instead of restarting the child in
a loop.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import numpy as np

from mbrl_ros.core.control.model_source import load_model
from mbrl_ros.core.control.plan_wire import (ChildHandle, PlanError, PlanProcessError,
                                             decode_policy, encode_policy, settings_dict)
from mbrl_ros.core.control.planning import PlanningBase, check_effort_rate, check_target
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.base import ModelError, ModelSpec
from mbrl_ros.core.planners.base import Policy

__all__ = ["PlanProcess", "PlanProcessError", "PlanError", "load_model", "encode_policy",
           "decode_policy", "START_TIMEOUT"]

START_TIMEOUT = 60.0        # s: a fresh child imports numpy, MuJoCo, the planners, the model
MODEL_TIMEOUT = 300.0       # s: loading a model in the child (a large GP takes a while)
_BACKOFF_MAX = 30.0         # s between restarts after repeated failures


class PlanProcess(PlanningBase):
    """An :class:`~mbrl_ros.core.control.mpc.MPCController` in a child process (see the
    module docstring; a :class:`~mbrl_ros.core.control.planning.Planning`); the
    constructor takes the controller's arguments.

    Args:
        robot: MJCF of the robot (for the ``'mujoco'`` model source).
        control_period: the known model's step [s].
        joint_names: the robot's state joints (models for other joints are refused).
        planner_settings: ``() -> {id: (registry kind, settings dataclass)}``; read when a
            child starts and on :meth:`rebuild_planners`.
        planner_ids, active, horizon, effort_limits, position_limits, cost_settings,
            fallback, uncertainty_threshold, continuous: as for MPCController.
        layout: the robot's layout (:class:`~mbrl_ros.core.planners.base.RobotLayout`):
            the child's planners exist before a model, so a model-free planner explores
            until the first one (as MPCController with ``robot`` and ``control_period``).
        plan_timeout: a replan unanswered for this long [s] means the child hangs.
        deadline: wall-clock budget of a replan [s] for the child's planners (as
            MPCController's ``deadline``; None: none).
        nice: niceness added to the child (0: the parent's priority): when the CPUs are
            busy, the scheduler runs the parent's control loop before the solver.
        start_timeout: a child not ready within this long [s] failed to start.
        effort_scale: fraction of ``effort_limits`` the planners plan within.
        effort_rate: the effort rate [per s] the planners plan within (as MPCController).
        log: ``log(level, text)`` for the child's errors ('error', 'warning', 'info').
        on_lost: ``on_lost(reason)``, called (from a helper thread) as soon as a child is
            found dead or hung, so the caller can stop using its last policy at once.
    """

    def __init__(self, robot: str, control_period: float, joint_names: tuple[str, ...],
                 planner_settings: Callable[[], dict[str, tuple[str, Any]]],
                 planner_ids: list[str], active: str, horizon: int,
                 effort_limits: np.ndarray, position_limits: np.ndarray, cost_settings: Any,
                 fallback: str = "", uncertainty_threshold: float = 0.0,
                 continuous: np.ndarray | None = None, layout: Any = None,
                 plan_timeout: float = 10.0, deadline: float | None = None,
                 start_timeout: float = START_TIMEOUT, nice: int = 0,
                 log: Callable[[str, str], None] | None = None,
                 on_lost: Callable[[str], None] | None = None, effort_scale: float = 1.0,
                 effort_rate: float = 0.0):
        self._init_config(planner_ids, active, fallback, horizon, effort_limits,
                          position_limits, continuous, deadline)
        self.robot, self.control_period = robot, float(control_period)
        self.joint_names = tuple(joint_names)
        self._planner_settings = planner_settings
        self.cost_settings = cost_settings
        self.layout = layout
        self.plan_timeout, self.start_timeout = float(plan_timeout), float(start_timeout)
        self.nice = int(nice)
        self._log = log or (lambda level, text: None)
        self._notify_lost = on_lost or (lambda reason: None)
        self._lock = threading.RLock()        # the child handle and the mirrored state
        self._child: ChildHandle | None = None
        self._enabled = False                 # start() .. stop(): (re)start children
        self._next_start = 0.0
        self._failures_in_row = 0
        # Mirrored state: what a (re)started child is initialised with.
        self._selected = active
        self._fallback = fallback
        self._threshold = float(uncertainty_threshold)
        self._effort_scale = float(effort_scale)
        self._effort_rate = check_effort_rate(effort_rate)
        self._source: dict[str, Any] | None = None
        self.target_q: np.ndarray | None = None
        # The child's answers.
        self.active = active
        self.model_version = 0
        self.spec: ModelSpec | None = None
        self.stats: dict[str, Any] = {}
        self._nominal: tuple[np.ndarray, np.ndarray] | None = None
        # the newest state planned from: a model is checked to predict from it
        self._last_state: np.ndarray | None = None
        self.counters = {"starts": 0, "failures": 0}
        # the explorer planned here while a child starts (None until first needed)
        self._local: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start a child (returns at once; :meth:`replan` waits until it is ready)."""
        with self._lock:
            self._enabled = True
            self._failures_in_row = 0
            self._next_start = 0.0
            if self._child is None or self._child.lost is not None:
                self._spawn()

    def stop(self, timeout: float = 0.2) -> None:
        """Stop the child (no new one until :meth:`start`); waits for it to exit."""
        with self._lock:
            self._enabled = False
            child, self._child = self._child, None
        if child is not None:
            child.stop(timeout)

    @property
    def running(self) -> bool:
        c = self._child
        return c is not None and c.lost is None

    @property
    def pid(self) -> int | None:
        c = self._child
        return c.pid if c is not None and c.lost is None else None

    def _spawn(self) -> None:
        init = {"robot": self.robot, "control_period": self.control_period,
                "joint_names": self.joint_names, "planners": self._planner_dicts(),
                "planner_ids": self.planner_ids, "active": self._selected,
                "horizon": self.horizon, "effort_limits": self.effort_limits,
                "position_limits": self.position_limits, "continuous": self.continuous,
                "cost": settings_dict(self.cost_settings), "fallback": self._fallback,
                "threshold": self._threshold, "effort_scale": self._effort_scale,
                "effort_rate": self._effort_rate,
                "target": self.target_q, "model": self._source, "parent": os.getpid(),
                "nice": self.nice, "deadline": self.deadline,
                "layout": None if self.layout is None else self.layout.to_dict()}
        self._child = ChildHandle(init, self._log, self._on_lost)
        self._child.spawned_at = time.monotonic()
        self.counters["starts"] += 1

    def _on_lost(self, child: ChildHandle, reason: str) -> None:
        with self._lock:
            if child is not self._child:
                return
            self.counters["failures"] += 1
            self._failures_in_row += 1
            backoff = 0.0 if self._failures_in_row <= 1 else \
                min(_BACKOFF_MAX, 2.0 ** (self._failures_in_row - 2))
            self._next_start = time.monotonic() + backoff
        self._log("error", f"{reason}; restarting it"
                  + (f" in {backoff:g} s" if backoff else ""))
        self._notify_lost(reason)

    def _ready_child(self) -> ChildHandle:
        """The running child, (re)started if needed and waited for until ready."""
        with self._lock:
            if not self._enabled:
                raise PlanProcessError("planning process stopped")
            child = self._child
            if child is None or child.lost is not None:
                wait = self._next_start - time.monotonic()
                if wait > 0:
                    raise PlanProcessError(f"planning process restarts in {wait:.1f} s")
                self._spawn()
                child = self._child
        try:
            msg = child.ready.result(timeout=self.start_timeout)
        except FutureTimeout:
            child.kill(f"planning process not ready within {self.start_timeout:g} s")
            raise PlanProcessError(child.lost) from None
        if msg[0] != "ready":
            reason = f"planning process failed to start: {msg[2]}"
            child.kill(reason)
            raise PlanProcessError(reason)
        if not child.model_checked:
            child.model_checked = True
            # a first start compiles the LQR kernels (numba cache, ~10 s of CPU): say when
            # the planner can answer, so a still arm is explained in the log
            self._log("info", f"planning process {child.pid} ready after "
                      f"{time.monotonic() - child.spawned_at:.1f} s")
            refused = msg[2].get("model_error") if isinstance(msg[2], dict) else None
            if refused:
                self._model_refused(child, refused)
        return child

    def _model_refused(self, child: ChildHandle, reason: str) -> None:
        """The child started without the model it was given (changed on disk since the
        parent verified it, or refused by the planners): no model until a new one loads,
        instead of a child that fails to start again and again."""
        with self._lock:
            if self._source is not child.model_source:
                return              # a newer model was loaded meanwhile
            source = self._source["source"] if self._source else "?"
            self._source, self.spec, self.model_version = None, None, 0
        self._log("error", f"planning process refused model {source}: {reason}; no model "
                  "until a new one is loaded")

    # ------------------------------------------------------------------ planning
    @property
    def ready(self) -> bool:
        """A replan can run: a model and a target, or no model but a model-free planner
        to explore with (as MPCController.ready)."""
        if self.spec is None:
            return self.explorer() is not None
        return self.target_q is not None

    def explorer(self) -> str | None:
        """The model-free planner the child explores with while it has no model (the
        fallback if model-free, else the active one; see MPCController.explorer)."""
        if self.layout is None:
            return None
        from mbrl_ros.core import registry
        kinds = self._planner_settings()
        for pid in (self._fallback, self._selected):
            if pid and pid in kinds and \
                    not registry.lookup("planner", kinds[pid][0]).needs_model:
                return pid
        return None

    def replan(self, x: np.ndarray, t: float, lookahead: float = 0.0,
               last: tuple[np.ndarray, float] | None = None) -> Policy:
        """Plan from state ``x`` at time ``t`` [s] in the child (``lookahead``: latency
        compensation; ``last``: the last applied command and its time; as
        MPCController.replan); returns the new policy.

        Raises:
            PlanProcessError: the child is gone, hung (killed after ``plan_timeout``), or
                is being restarted: the caller holds until a later replan succeeds.
            PlanError: the planner failed (as MPCController.replan raising).
        """
        if not self.ready:
            raise ModelError("no model or no target yet")
        x = np.asarray(x, dtype=float)
        self._last_state = x
        if self.spec is None:        # no model yet: explore here until the child answers
            policy = self._explore_while_starting(x, t, lookahead, last)
            if policy is not None:
                return policy
        child = self._ready_child()
        if last is not None:
            last = (np.asarray(last[0], dtype=float), float(last[1]))
        f = child.request("plan", x, float(t), float(lookahead), last)
        try:
            msg = f.result(timeout=self.plan_timeout)
        except FutureTimeout:
            child.kill(f"planning process did not answer a replan within "
                       f"{self.plan_timeout:g} s: killed")
            raise PlanProcessError(child.lost) from None
        if msg[0] == "error":
            raise PlanError(msg[2])
        if msg[0] == "skipped":
            raise PlanError("replan superseded by a newer state")
        _, _, kind, fields, stats, nominal, active = msg
        policy = decode_policy(kind, fields)
        self.stats, self._nominal, self.active = stats, nominal, active
        self._failures_in_row = 0
        return policy

    def _explore_while_starting(self, x: np.ndarray, t: float, lookahead: float,
                                last: tuple[np.ndarray, float] | None) -> Policy | None:
        """A plan of the model-free explorer, solved in this process, while the child is
        starting (a fresh interpreter imports torch and MuJoCo and loads the compiled
        kernels: 5-20 s on a busy 2-core machine, during which the robot held still
        instead of exploring); None once the child is ready, or if it is not starting
        (stopped, lost, restarting: :meth:`_ready_child` says so) or there is no explorer.
        The explorer is cheap (sub-millisecond plans), so the caller's thread solves it."""
        child = self._child
        if child is None or child.lost is not None or child.ready.done():
            return None
        pid = self.explorer()
        if pid is None:
            return None
        if self._local is None or self._local.planner_ids != [pid]:
            from mbrl_ros.core import registry
            from mbrl_ros.core.control.mpc import MPCController
            kind, settings = self._planner_settings()[pid]
            cls = registry.lookup("planner", kind)

            def factory(_pid, nx, nu, u_min, u_max, dt):
                return cls(settings, nx, nu, u_min, u_max, dt)
            self._local = MPCController(factory, [pid], pid, self.horizon,
                                        self.effort_limits, self.position_limits,
                                        self.cost_settings, continuous=self.continuous,
                                        robot=self.layout, control_period=self.control_period,
                                        effort_scale=self._effort_scale,
                                        effort_rate=self._effort_rate)
        self._local.set_effort_rate(self._effort_rate)
        policy = self._local.replan(x, t, lookahead, last)
        self.stats = {**self._local.stats, "planned_here": True}
        return policy

    def nominal_states(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(xs, us) of the child's active plan after the last replan, or None."""
        return self._nominal

    # ------------------------------------------------------------------ models
    def load_model(self, source: str, version: int | None = None,
                   checksum: str | None = None, state: np.ndarray | None = None) -> int:
        """Use model ``source`` ('mujoco' or an artifact directory) from a next replan on.

        With a child running, the child loads and verifies it (while it keeps planning on
        the previous model) and this waits for its answer; without one (inactive), it is
        verified here and the next child starts with it. ``state`` (2n,): the robot's
        current state for the one-step check (None: the state of the last replan, else
        the home keyframe; see :func:`load_model`). Returns the model version.

        Raises:
            ModelError: refused (the previous model stays in use).
        """
        if state is None:
            state = self._last_state
        child = self._child
        if child is None or child.lost is not None:
            model, v = load_model(source, robot=self.robot,
                                  control_period=self.control_period,
                                  joint_names=self.joint_names, expect=self.spec,
                                  checksum=checksum, version=version, state=state)
            with self._lock:
                self._set_source(source, v, checksum, model.spec)
            return v
        spec = None if self.spec is None else self.spec.to_json()
        f = child.request("load_model", {"source": source, "version": version,
                                         "checksum": checksum, "expect": spec,
                                         "state": None if state is None
                                         else np.asarray(state, dtype=float)})
        try:
            msg = f.result(timeout=MODEL_TIMEOUT)
        except FutureTimeout:
            raise ModelError(f"the planning process did not load the model within "
                             f"{MODEL_TIMEOUT:g} s") from None
        except PlanProcessError as e:
            raise ModelError(f"the planning process was lost while loading: {e}") from e
        if msg[0] == "error":
            raise ModelError(msg[2])
        with self._lock:
            self._set_source(source, msg[2], checksum, ModelSpec.from_json(msg[3]))
        return msg[2]

    def _set_source(self, source: str, version: int, checksum: str | None,
                    spec: ModelSpec) -> None:
        self._source = {"source": source, "version": int(version), "checksum": checksum}
        self.model_version = int(version)
        self.spec = spec

    # ------------------------------------------------------------------ settings
    def _command(self, *msg) -> None:
        """Forward a change to the running child (the mirror was updated under the same
        lock, so a child started concurrently gets it in its init instead)."""
        child = self._child
        if child is not None and child.lost is None:
            child.post(msg)

    def select(self, pid: str) -> None:
        """Switch to planner ``pid`` at the child's next replan (ValueError if unknown)."""
        self.validate_planner(pid)
        with self._lock:
            self._selected = pid
            self._command("select", pid)

    def set_target(self, q_target: np.ndarray) -> None:
        q_target = check_target(q_target, self.n_joints)
        with self._lock:
            self.target_q = q_target
            self._command("target", q_target)

    def set_cost_settings(self, s: CostSettings) -> None:
        with self._lock:
            self.cost_settings = s
            self._command("cost", settings_dict(s))

    @property
    def fallback(self) -> str:
        return self._fallback

    @fallback.setter
    def fallback(self, pid: str) -> None:
        with self._lock:
            self._fallback = pid
            self._command("fallback", pid)

    @property
    def uncertainty_threshold(self) -> float:
        return self._threshold

    @uncertainty_threshold.setter
    def uncertainty_threshold(self, v: float) -> None:
        with self._lock:
            self._threshold = float(v)
            self._command("threshold", float(v))

    @property
    def effort_scale(self) -> float:
        return self._effort_scale

    def set_effort_scale(self, scale: float) -> None:
        """Plan within ``scale`` x the effort limits (the child rebuilds its planners,
        warm-started; a child started later gets it in its init)."""
        with self._lock:
            self._effort_scale = float(scale)
            self._command("effort_scale", float(scale))

    @property
    def effort_rate(self) -> float:
        return self._effort_rate

    def set_effort_rate(self, rate: float) -> None:
        """Plan within this effort rate [per s] (0: none; the child from its next
        message, a child started later from its init)."""
        rate = check_effort_rate(rate)
        with self._lock:
            self._effort_rate = rate
            self._command("effort_rate", rate)

    def _planner_dicts(self) -> dict[str, tuple[str, dict]]:
        return {pid: (kind, settings_dict(s))
                for pid, (kind, s) in self._planner_settings().items()}

    def rebuild_planners(self) -> None:
        """Rebuild the child's planners with the current planner settings (warm-started
        from the active plan, as MPCController.rebuild_planners)."""
        with self._lock:
            self._command("planners", self._planner_dicts())

    def reset_planners(self) -> None:
        """Every planner forgets its plan (a new episode)."""
        with self._lock:
            self._command("reset")


