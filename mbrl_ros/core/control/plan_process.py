"""Replanning in a worker process: the node's control timer never waits for a solver's GIL.

A planning *thread* shares the node's Python interpreter: while iLQR holds the GIL (up to
the 5 ms switch interval at a time) the control timer cannot run, and its period jitters
by milliseconds. :class:`PlanProcess` runs the same :class:`~mbrl_ros.core.control.mpc.
MPCController` in a child interpreter instead and is a thin proxy for it in the parent: the
methods and attributes the controller node uses (``replan``, ``select``, ``set_target``,
``set_cost_settings``, ``rebuild_planners``, ``fallback``, ``uncertainty_threshold``,
``effort_scale``, ``stats``, ``active``, ``model_version``, ``spec``, ``target_q``,
``ready``, ``nominal_states``), plus ``load_model`` (a model *source*, not an object: the
child loads and verifies it itself) and the process lifecycle (``start``, ``stop``).

The child is a fresh interpreter (``python -c``; fork+exec, never a bare fork of a parent
that runs DDS threads; not multiprocessing's 'spawn' either, which re-imports the parent's
``__main__`` -- a ROS node's console script -- in the child). One socket pair carries
``multiprocessing.connection`` messages, tuples of plain values and numpy arrays:

=====================================  ==================================================
parent -> child                        child -> parent
=====================================  ==================================================
``("init", config)`` (first)           ``("ready", 0, info)`` or ``("error", 0, text)``
``("plan", id, x, t, lookahead)``      ``("policy", id, kind, fields, stats, nominal,
                                       active)``, ``("error", id, text)`` or
                                       ``("skipped", id)`` (a newer plan came in)
``("load_model", id, source)``         ``("model", id, version, spec)`` / ``("error", ...)``
``("target", q)``, ``("select", id)``, ``("log", level, text)`` if one of these fails
``("cost", dict)``, ``("fallback",
id)``, ``("threshold", v)``,
``("effort_scale", v)``, ``("planners",
{id: (kind, dict)})``, ``("reset",)``
``("stop",)``                          (exits)
=====================================  ==================================================

Policies cross as their constructor's arrays (:class:`LinearGaussianPolicy`, the GPS
:class:`NeuralPolicy`), rebuilt read-only in the parent. *Latest wins*: the parent has at
most one replan outstanding, and the child, before planning, applies every message that
is waiting and plans only from the newest state. Models load on a thread of the child
while it keeps planning on the previous model, then are swapped between two replans.

Failures: the child exiting (crash, kill) is seen at once (end of file on the socket);
a replan unanswered for ``plan_timeout`` seconds means a hang: the child is killed. Both
count in ``counters['failures']``, fail the replan in progress with
:class:`PlanProcessError`, and the next ``replan`` starts a new child from the mirrored
configuration (target, model source, planner, settings), after a back-off that doubles
with consecutive failures. A model is not a reason to fail: one the child refuses at start
(changed on disk since the parent verified it) is reported once in ``info['model_error']``
and the parent drops it (no model until a new one loads) instead of restarting the child in
a loop. The child exits when the parent closes the socket or dies (it
watches its parent id), and ignores SIGINT/SIGTERM: the parent stops it, so a signal to the
process group never leaves a planner half way through a message. BLAS/OpenMP and torch use
one thread in the child, which may run at a lower priority (``nice``).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

from mbrl_ros.core.models.base import DynamicsModel, ModelError, ModelSpec, check_one_step

__all__ = ["PlanProcess", "PlanProcessError", "PlanError", "load_model", "encode_policy",
           "decode_policy", "START_TIMEOUT"]

START_TIMEOUT = 60.0        # s: a fresh child imports numpy, MuJoCo, the planners, the model
MODEL_TIMEOUT = 300.0       # s: loading a model in the child (a large GP takes a while)
_BACKOFF_MAX = 30.0         # s between restarts after repeated failures
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class PlanProcessError(RuntimeError):
    """The planning process exited, hung, was stopped, or could not start."""


class PlanError(RuntimeError):
    """The planner in the child failed on this replan (the process itself is fine)."""


# ====================================================================== shared helpers
def _robot_layout(robot: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(command joint names, home state x (2n,)) of the MJCF ``robot``: its ``home``
    keyframe, else zeros [rad, m, rad/s, m/s]."""
    from mbrl_ros.sim.env import MujocoSim
    try:
        sim = MujocoSim(robot)
    except (ValueError, TypeError, OSError) as e:
        raise ModelError(f"robot {robot!r} cannot be loaded to check the model: {e}") from e
    return tuple(sim.command_names), sim.state()


def load_model(source: str, *, robot: str, control_period: float,
               joint_names: tuple[str, ...], expect: ModelSpec | None = None,
               checksum: str | None = None, version: int | None = None,
               state: np.ndarray | None = None) -> tuple[DynamicsModel, int]:
    """Load and verify a controller's model: ``'mujoco'`` (the known model of ``robot``
    stepping ``control_period``) or an artifact directory (verified against ``checksum``
    and ``expect``). Returns (model, version); version from the artifact unless given.

    A model is used only if it is one of this robot: its states are the positions and
    velocities of ``joint_names`` and its actions one per command joint of the MJCF
    ``robot`` (:meth:`ModelSpec.check_robot`), its weights are finite, and its one-step
    prediction with zero effort from ``state`` -- the robot's current state, (2n,) [rad,
    m, rad/s, m/s]; None or not finite: the MJCF's home keyframe -- is finite.

    Raises:
        ModelError: unreadable, corrupt, model.json not matching its schema, other spaces
            than ``expect``, for other joints or command joints than the robot's, NaN/inf
            weights, a non-finite one-step prediction.
    """
    from mbrl_ros.core import store
    commands, home = _robot_layout(robot)
    if state is None or np.shape(state) != home.shape or \
            not np.all(np.isfinite(np.asarray(state, dtype=float))):
        state = home
    if source == "mujoco":
        from mbrl_ros.core.models.mujoco_model import MujocoModel
        model: DynamicsModel = MujocoModel.from_sim(robot, control_period=control_period)
        v = 0 if version is None else int(version)
    else:
        model = store.load(source, expect=expect, checksum=checksum)
        v = int(store.read_meta(source)["version"]) if version is None else int(version)
    where = f"model {source}"
    try:
        model.spec.check_robot(joint_names, commands)
    except ModelError as e:
        raise ModelError(f"{where} is not a model of robot {robot!r}: {e}") from e
    check_one_step(model, state, where)
    return model, v


def _policy_types() -> dict[str, type]:
    from mbrl_ros.core.algorithms.global_policy import NeuralPolicy
    from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
    return {"linear_gaussian": LinearGaussianPolicy, "neural": NeuralPolicy}


def encode_policy(policy: Any) -> tuple[str, dict[str, Any]]:
    """(kind, constructor fields) of a policy: arrays and numbers, no pickled classes.

    Raises:
        TypeError: a policy type that cannot cross the process boundary.
    """
    for kind, cls in _policy_types().items():
        if type(policy) is cls:
            return kind, {f.name: getattr(policy, f.name)
                          for f in dataclasses.fields(cls) if f.init}
    raise TypeError(f"a {type(policy).__name__} policy cannot be sent from the planning "
                    "process (known: LinearGaussianPolicy, NeuralPolicy); use planning: "
                    "thread")


def decode_policy(kind: str, fields: dict[str, Any]) -> Any:
    return _policy_types()[kind](**fields)


def _plain(v: Any) -> Any:
    """Stats values as plain Python/numpy data (nothing that needs a class to unpickle)."""
    if isinstance(v, (bool, int, float, str, type(None), np.ndarray)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _settings_dict(settings: Any) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


# ====================================================================== parent side
class _Child:
    """One child process and the parent's end of its socket; a reader thread resolves
    the futures of requests and notices the end of file when the child exits."""

    def __init__(self, init: dict, on_log: Callable[[str, str], None],
                 on_lost: Callable[["_Child", str], None]):
        ours, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            boot = ("import sys; from mbrl_ros.core.control.plan_process import child_main; "
                    "child_main(int(sys.argv[1]))")
            self.proc = subprocess.Popen([sys.executable, "-c", boot, str(fd)], pass_fds=(fd,),
                                         env={**os.environ, **_THREAD_ENV},
                                         stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self._on_log, self._on_lost = on_log, on_lost
        self._lock = threading.Lock()          # pending requests, lost
        self._send_lock = threading.Lock()     # one writer at a time on the socket
        self._ids = itertools.count(1)
        self.ready: Future = Future()
        self._pending: dict[int, Future] = {0: self.ready}
        self.lost: str | None = None
        self._stopping = False
        # the model source the child starts with, and whether the parent has seen its
        # answer about it (a refused model is reported once, not on every replan)
        self.model_source = init.get("model")
        self.model_checked = False
        self.post(("init", init))
        self._reader = threading.Thread(target=self._read, name="plan_process_reader",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def post(self, msg: tuple) -> None:
        """Send without an answer (lost silently if the child is gone: the next request
        notices, and a restarted child gets the mirrored state)."""
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (OSError, ValueError):
            pass

    def request(self, kind: str, *args) -> Future:
        f: Future = Future()
        with self._lock:
            if self.lost is not None:
                f.set_exception(PlanProcessError(self.lost))
                return f
            i = next(self._ids)
            self._pending[i] = f
        try:
            with self._send_lock:
                self.conn.send((kind, i, *args))
        except (OSError, ValueError) as e:
            self._fail(f"planning process unreachable: {e}")
        return f

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "log":
                    self._on_log(msg[1], msg[2])
                    continue
                with self._lock:
                    f = self._pending.pop(msg[1], None)
                if f is not None and not f.done():
                    f.set_result(msg)
        except (EOFError, OSError):
            pass
        except Exception as e:           # an unreadable message: treat the child as lost
            self._on_log("error", f"planning process sent an unreadable message: {e!r}")
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._fail(f"planning process exited (code {code})")

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self.lost = reason
            pending, self._pending = list(self._pending.values()), {}
        for f in pending:
            if not f.done():
                f.set_exception(PlanProcessError(reason))
        if not self._stopping:
            self._on_lost(self, reason)

    def kill(self, reason: str) -> None:
        """A hung child: SIGKILL, then the failure is reported as a loss."""
        try:
            self.proc.kill()
        except OSError:
            pass
        self._fail(reason)
        self._finish(5.0)

    def stop(self, timeout: float = 0.2) -> None:
        """Ask the child to exit; SIGKILL if it has not within ``timeout`` s (it holds
        nothing worth waiting for: a deactivating controller should not wait on a solve)."""
        self._stopping = True
        self.post(("stop",))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fail("planning process stopped")
        self._finish(5.0)

    def _finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=timeout)
        if not self._reader.is_alive():
            self.conn.close()


class PlanProcess:
    """An :class:`~mbrl_ros.core.control.mpc.MPCController` in a child process (see the
    module docstring); the constructor takes the controller's arguments.

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
                 on_lost: Callable[[str], None] | None = None):
        from mbrl_ros.core.control.mpc import check_planner_ids
        check_planner_ids(planner_ids, active, fallback)
        self.robot, self.control_period = robot, float(control_period)
        self.joint_names = tuple(joint_names)
        self._planner_settings = planner_settings
        self.planner_ids = list(planner_ids)
        self.horizon = int(horizon)
        self.effort_limits = np.asarray(effort_limits, dtype=float)
        self.position_limits = np.asarray(position_limits, dtype=float)
        n = self.position_limits.shape[0]
        self.continuous = (np.zeros(n, bool) if continuous is None
                           else np.asarray(continuous, dtype=bool).reshape(-1))
        self.cost_settings = cost_settings
        self.layout = layout
        self.plan_timeout, self.start_timeout = float(plan_timeout), float(start_timeout)
        from mbrl_ros.core.control.mpc import _check_deadline
        self.deadline = _check_deadline(deadline)
        self.nice = int(nice)
        self._log = log or (lambda level, text: None)
        self._notify_lost = on_lost or (lambda reason: None)
        self._lock = threading.RLock()        # the child handle and the mirrored state
        self._child: _Child | None = None
        self._enabled = False                 # start() .. stop(): (re)start children
        self._next_start = 0.0
        self._failures_in_row = 0
        # Mirrored state: what a (re)started child is initialised with.
        self._selected = active
        self._fallback = fallback
        self._threshold = float(uncertainty_threshold)
        self._effort_scale = 1.0
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
                "cost": _settings_dict(self.cost_settings), "fallback": self._fallback,
                "threshold": self._threshold, "effort_scale": self._effort_scale,
                "target": self.target_q, "model": self._source, "parent": os.getpid(),
                "nice": self.nice, "deadline": self.deadline,
                "layout": None if self.layout is None else self.layout.to_dict()}
        self._child = _Child(init, self._log, self._on_lost)
        self.counters["starts"] += 1

    def _on_lost(self, child: _Child, reason: str) -> None:
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

    def _ready_child(self) -> _Child:
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
            refused = msg[2].get("model_error") if isinstance(msg[2], dict) else None
            if refused:
                self._model_refused(child, refused)
        return child

    def _model_refused(self, child: _Child, reason: str) -> None:
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

    def replan(self, x: np.ndarray, t: float, lookahead: float = 0.0) -> Any:
        """Plan from state ``x`` at time ``t`` [s] in the child (``lookahead``: latency
        compensation, as MPCController.replan); returns the new policy.

        Raises:
            PlanProcessError: the child is gone, hung (killed after ``plan_timeout``), or
                is being restarted: the caller holds until a later replan succeeds.
            PlanError: the planner failed (as MPCController.replan raising).
        """
        if not self.ready:
            raise ModelError("no model or no target yet")
        x = np.asarray(x, dtype=float)
        self._last_state = x
        child = self._ready_child()
        f = child.request("plan", x, float(t), float(lookahead))
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

    def validate_planner(self, pid: str) -> None:
        if pid not in self.planner_ids:
            raise ValueError(f"unknown planner {pid!r}; valid: {', '.join(self.planner_ids)}")

    def select(self, pid: str) -> None:
        """Switch to planner ``pid`` at the child's next replan (ValueError if unknown)."""
        self.validate_planner(pid)
        with self._lock:
            self._selected = pid
            self._command("select", pid)

    def set_target(self, q_target: np.ndarray) -> None:
        from mbrl_ros.core.control.mpc import check_target
        q_target = check_target(q_target, self.position_limits.shape[0])
        with self._lock:
            self.target_q = q_target
            self._command("target", q_target)

    def set_cost_settings(self, s: Any) -> None:
        with self._lock:
            self.cost_settings = s
            self._command("cost", _settings_dict(s))

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

    @effort_scale.setter
    def effort_scale(self, v: float) -> None:
        with self._lock:
            self._effort_scale = float(v)
            self._command("effort_scale", float(v))

    def _planner_dicts(self) -> dict[str, tuple[str, dict]]:
        return {pid: (kind, _settings_dict(s))
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


# ====================================================================== child side
class _Worker:
    """The child: one MPCController, messages in, policies out."""

    def __init__(self, conn: Connection, cfg: dict):
        from concurrent.futures import ThreadPoolExecutor

        from mbrl_ros.core.control.mpc import CostSettings, MPCController
        from mbrl_ros.core.planners.base import RobotLayout
        from mbrl_ros.core.settings import from_mapping
        self._from_mapping, self._cost_cls = from_mapping, CostSettings
        self.conn, self.cfg = conn, cfg
        self._send_lock = threading.Lock()
        self._mpc_lock = threading.Lock()     # planning vs. a model swap
        self.planners: dict[str, tuple[str, dict]] = dict(cfg["planners"])
        self.mpc = MPCController(self._make_planner, list(cfg["planner_ids"]), cfg["active"],
                                 cfg["horizon"], cfg["effort_limits"], cfg["position_limits"],
                                 from_mapping(CostSettings, cfg["cost"]), cfg["fallback"],
                                 cfg["threshold"], continuous=cfg["continuous"],
                                 robot=None if cfg.get("layout") is None
                                 else RobotLayout(**cfg["layout"]),
                                 control_period=cfg["control_period"],
                                 deadline=cfg.get("deadline"))
        self.mpc.effort_scale = cfg["effort_scale"]
        if cfg["effort_scale"] != 1.0:
            self.mpc.rebuild_planners()       # built above with the unscaled limits
        if cfg["target"] is not None:
            self.mpc.set_target(cfg["target"])
        # The model the parent verified can still be refused here (the file changed since,
        # or the planners refuse it): the child then starts without it and says so in its
        # "ready" answer. Failing the start instead would restart the child in a loop.
        self.model_error: str | None = None
        if cfg["model"] is not None:
            m = cfg["model"]
            try:
                model, v = self._load(m["source"], m["version"], m["checksum"], None)
                self.mpc.set_model(model, v)
            except Exception as e:      # noqa: BLE001 -- any refusal is reported, once
                self.model_error = f"{type(e).__name__}: {e}"
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model_load")

    def _make_planner(self, pid: str, nx: int, nu: int, u_min, u_max, dt: float):
        from mbrl_ros.core import registry
        kind, values = self.planners[pid]
        cls = registry.lookup("planner", kind)
        return cls(self._from_mapping(cls.Settings, values), nx, nu, u_min, u_max, dt)

    def _load(self, source, version, checksum, expect, state=None):
        model, v = load_model(source, robot=self.cfg["robot"],
                              control_period=self.cfg["control_period"],
                              joint_names=tuple(self.cfg["joint_names"]), expect=expect,
                              checksum=checksum, version=version, state=state)
        _torch_one_thread()
        return model, v

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def log(self, level: str, text: str) -> None:
        self.send(("log", level, text))

    def run(self) -> None:
        while True:
            batch = [self.conn.recv()]
            while self.conn.poll(0):           # latest wins: take everything waiting
                batch.append(self.conn.recv())
            plan = None
            for msg in batch:
                if msg[0] == "stop":
                    return
                if msg[0] == "plan":
                    if plan is not None:
                        self.send(("skipped", plan[1]))
                    plan = msg
                else:
                    self._handle(msg)
            if plan is not None:
                self._plan(plan[1], plan[2], plan[3], plan[4])

    def _plan(self, i: int, x: np.ndarray, t: float, lookahead: float) -> None:
        try:
            with self._mpc_lock:
                policy = self.mpc.replan(x, t, lookahead)
                stats = _plain(dict(self.mpc.stats))
                nominal = self.mpc.nominal_states()
                active = self.mpc.active
            kind, fields = encode_policy(policy)
        except Exception as e:         # the planner's failure is the parent's to report
            self.send(("error", i, f"{type(e).__name__}: {e}"))
            return
        self.send(("policy", i, kind, fields, stats, nominal, active))

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        try:
            with self._mpc_lock:
                if kind == "target":
                    self.mpc.set_target(msg[1])
                elif kind == "select":
                    self.mpc.select(msg[1])
                elif kind == "cost":
                    self.mpc.set_cost_settings(self._from_mapping(self._cost_cls, msg[1]))
                elif kind == "fallback":
                    self.mpc.fallback = msg[1]
                elif kind == "threshold":
                    self.mpc.uncertainty_threshold = msg[1]
                elif kind == "effort_scale":
                    self.mpc.effort_scale = msg[1]
                    self.mpc.rebuild_planners()
                elif kind == "planners":
                    self.planners = dict(msg[1])
                    self.mpc.rebuild_planners()
                elif kind == "reset":
                    for p in self.mpc.planners.values():
                        p.reset(self.mpc.horizon)
                elif kind == "load_model":
                    self._loader.submit(self._load_model, msg[1], msg[2])
                else:
                    raise ValueError(f"unknown message {kind!r}")
        except Exception as e:
            self.log("error", f"planning process: {kind} failed: {type(e).__name__}: {e}")

    def _load_model(self, i: int, m: dict) -> None:
        """On the loader thread: the previous model keeps planning until the swap."""
        try:
            expect = None if m["expect"] is None else ModelSpec.from_json(m["expect"])
            model, v = self._load(m["source"], m["version"], m["checksum"], expect,
                                  m.get("state"))
            with self._mpc_lock:
                self.mpc.set_model(model, v)
            _torch_one_thread()
        except Exception as e:
            self.send(("error", i, f"{type(e).__name__}: {e}"))
            return
        self.send(("model", i, v, model.spec.to_json()))


def _torch_one_thread() -> None:
    torch = sys.modules.get("torch")        # only if a model imported it
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _watch_parent(parent: int) -> None:
    """Exit if the parent died without closing the socket (it is inherited nowhere else,
    but a hung solve would never read the end of file)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def child_main(fd: int) -> None:
    """Entry of the planning process (``python -c``): serve one parent on socket ``fd``."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent stops us (see module doc)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from mbrl_ros.core.threads import limit_threads
    limit_threads(1)
    conn = Connection(fd)
    try:
        msg = conn.recv()
    except EOFError:
        os._exit(0)
    cfg = msg[1]
    if cfg.get("nice", 0) > 0:                       # background work: the control loop first
        try:
            os.nice(int(cfg["nice"]))
        except OSError:
            pass
    threading.Thread(target=_watch_parent, args=(cfg["parent"],), daemon=True,
                     name="watch_parent").start()
    try:
        worker = _Worker(conn, cfg)
    except Exception as e:
        conn.send(("error", 0, f"{type(e).__name__}: {e}"))
        conn.close()
        os._exit(1)
    _torch_one_thread()
    torch = sys.modules.get("torch")
    conn.send(("ready", 0, {"model_version": worker.mpc.model_version,
                            "torch_threads": torch.get_num_threads() if torch else None,
                            "model_error": worker.model_error}))
    try:
        worker.run()
    except (EOFError, OSError):
        pass                                  # the parent closed the socket
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
