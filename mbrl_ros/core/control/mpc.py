"""Model-predictive control around swappable planners and models (ROS-free).

:class:`MPCController` owns one planner per configured id, the current model and the
task cost, and produces an immutable :class:`~mbrl_ros.core.planners.base.Policy` at every
replan; the control loop only evaluates that policy (plan / act split, as mujoco_mpc).

- Planner switch (:meth:`select`): validated at once, applied at the next replan, and
  warm-started from the previous planner's nominal plan, so the command stays continuous.
- Model swap (:meth:`set_model`): one reference replaced; a model for other joints is
  refused. Planners are rebuilt only if the model's step (dt) changes.
- Uncertainty fallback: if the model's predicted standard deviation at the planned first
  action exceeds ``uncertainty_threshold``, this replan uses the ``fallback`` planner
  (e.g. a conservative one on the known model), and says so in the stats.
- Exploration without a model: given the robot's layout and control period, the planners
  exist before any model, and a model-free planner (``needs_model`` False, e.g.
  ``excitation``) plans while there is none -- the fallback planner if it is model-free,
  else the active one -- instead of the controller holding: a learning robot moves, so
  its fitter gets data. The first model takes over at the next replan.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from mbrl_ros.core.control.planning import (PlanningBase, check_deadline,
                                            check_effort_rate, check_planner_ids,
                                            check_target)
from mbrl_ros.core.costs.quadratic import Cost, JointLimitBarrier
from mbrl_ros.core.costs.task import CostSettings, task_cost
from mbrl_ros.core.models.base import DynamicsModel, ModelError, ModelSpec
from mbrl_ros.core.planners.base import Planner, Policy, RobotLayout

__all__ = ["MPCController", "CostSettings", "check_planner_ids", "check_target",
           "finite_plan", "joints_of"]

_check_deadline = check_deadline      # the name plan_process and older callers import


def finite_plan(policy: Policy, x: np.ndarray, t: float) -> bool:
    """The policy's action at (x (nx,), t [s]) is finite, and so are its arrays (gains,
    controls, nominal states) where it has them (a linear-Gaussian plan)."""
    for name in ("K", "k", "xbar"):
        a = getattr(policy, name, None)
        if a is not None and not np.all(np.isfinite(a)):
            return False
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.isfinite(policy.action(x, t))))


def joints_of(spec: ModelSpec) -> tuple[str, ...]:
    """Joint names of a model whose states are '<joint>/position'..., '<joint>/velocity'."""
    n = spec.nx // 2
    names = []
    for name in spec.state_names[:n]:
        if not name.endswith("/position"):
            raise ModelError(f"state name {name!r} is not '<joint>/position'")
        names.append(name[: -len("/position")])
    return tuple(names)


class MPCController(PlanningBase):
    """Planners + model + cost -> policies, in this process (a
    :class:`~mbrl_ros.core.control.planning.Planning`).

    Args:
        planner_factory: ``factory(id, nx, nu, u_min, u_max, dt) -> Planner`` for each id.
        planner_ids: the configured planner ids; ``active`` must be one of them.
        horizon: plan length in model steps.
        effort_limits: (nu,) command limits [N·m or N].
        position_limits: (n_joints, 2) joint limits (±inf: none) for the barrier.
        cost_settings: task weights.
        fallback: planner id used when the model is too uncertain ('' : none).
        uncertainty_threshold: mean predicted std [state units] above which the fallback
            planner is used (0: never).
        continuous: (n_joints,) bool, continuous joints (unlimited hinges): their position
            error in the cost wraps every 2 pi (default: none).
        robot: the robot's layout, for planners that need it (``set_robot``: the
            model-free ``excitation`` planner).
        control_period: the robot's control period [s]. With ``robot``, the planners are
            built at once with this step (nx = 2 n_joints), so a model-free planner can
            plan before the first model; a model with another step rebuilds them.
        deadline: wall-clock time a replan should take at most [s], given to every planner
            (:meth:`~mbrl_ros.core.planners.base.Planner.set_deadline`: iLQR stops
            iterating, the sampling planners sample fewer sequences); for real-time
            replanning (the node's timer mode: 1/plan_rate). None: no limit, every replan
            does the same work (lockstep, tests).
        effort_scale: fraction of ``effort_limits`` the planners plan within.
        effort_rate: the command path's largest effort change [N·m/s or N/s] (the safety
            filter's ``max_effort_rate``): with the last applied command given to
            :meth:`replan`, the planners plan their first actions within what it lets
            the robot reach (:meth:`~mbrl_ros.core.planners.base.Planner.action_bounds`);
            0: none.
        mjcf: the robot's MJCF (shipped name or path), for :meth:`load_model` (with
            ``control_period``: the known model's step).

    Thread safety: replans, model swaps and planner rebuilds hold one lock, so the node
    may call them from its planning, model-loading and parameter threads.
    """

    def __init__(self, planner_factory: Callable[..., Planner], planner_ids: list[str],
                 active: str, horizon: int, effort_limits: np.ndarray,
                 position_limits: np.ndarray, cost_settings: CostSettings,
                 fallback: str = "", uncertainty_threshold: float = 0.0,
                 continuous: np.ndarray | None = None, robot: RobotLayout | None = None,
                 control_period: float | None = None, deadline: float | None = None,
                 effort_scale: float = 1.0, mjcf: str | None = None,
                 effort_rate: float = 0.0):
        self._init_config(planner_ids, active, fallback, horizon, effort_limits,
                          position_limits, continuous, deadline)
        self._factory = planner_factory
        self.active = active
        self._pending: str | None = None
        self.fallback = fallback
        self.uncertainty_threshold = uncertainty_threshold
        self.cost_settings = cost_settings
        self.effort_scale = float(effort_scale)
        self.effort_rate = check_effort_rate(effort_rate)
        self.model: DynamicsModel | None = None
        self.model_version = 0
        self.spec: ModelSpec | None = None
        self.planners: dict[str, Planner] = {}
        self._dt: float | None = None
        self.target_q: np.ndarray | None = None
        self.cost: Cost | None = None
        self.policy: Policy | None = None
        self.stats: dict[str, Any] = {}
        self.robot = robot
        self.mjcf = mjcf
        self.control_period = None if control_period is None else float(control_period)
        self.counters = {"starts": 0, "failures": 0}      # no worker process
        self._lock = threading.RLock()
        if robot is not None and control_period is not None:
            self._build_planners(2 * self.n_joints, self.effort_limits.size,
                                 float(control_period))

    # ------------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> int | None:
        """None: planning runs in this process."""
        return None

    def start(self) -> None:
        """Nothing to start: plans are solved in the caller's thread."""

    def stop(self, timeout: float = 0.2) -> None:
        """Nothing to stop (see :meth:`start`)."""

    # ------------------------------------------------------------------ configuration
    def select(self, pid: str) -> None:
        """Switch to planner ``pid`` at the next replan (ValueError if unknown)."""
        self.validate_planner(pid)
        # Selecting the active planner again cancels a pending switch (A -> B -> A).
        self._pending = None if pid == self.active else pid

    def load_model(self, source: str, version: int | None = None,
                   checksum: str | None = None, state: np.ndarray | None = None) -> int:
        """Load and verify ``source`` ('mujoco' or an artifact directory; see
        :func:`mbrl_ros.core.control.model_source.load_model`, ``state``: the robot's
        current state for its one-step check) and use it from the next replan on; the
        loading runs outside the lock, so replans continue on the previous model
        meanwhile. Returns the model version.

        Raises:
            ModelError: refused (the previous model stays), or no ``mjcf`` and
                ``control_period`` to check it against.
        """
        from mbrl_ros.core.control.model_source import load_model
        if self.mjcf is None or self.control_period is None:
            raise ModelError("MPCController needs mjcf= and control_period= to load models")
        model, v = load_model(source, robot=self.mjcf, control_period=self.control_period,
                              expect=self.spec, checksum=checksum, version=version,
                              state=state)
        self.set_model(model, v)          # one reference swapped
        return v

    def set_model(self, model: DynamicsModel, version: int = 0) -> None:
        """Use ``model`` from the next replan on (ModelError if it is for other joints)."""
        with self._lock:
            self._set_model(model, version)

    def _set_model(self, model: DynamicsModel, version: int) -> None:
        if model.spec is None:
            raise ModelError("model has no spec (never fitted)")
        if self.spec is not None:
            self.spec.check_compatible(model.spec)
        joints_of(model.spec)
        if model.spec.nu != self.effort_limits.size:
            raise ModelError(f"model has {model.spec.nu} actions, the robot "
                             f"{self.effort_limits.size} command joints")
        # Fitted models take dt from median stamp intervals, which jitter on a real robot:
        # rebuild (losing the warm start) only for a real change of the step.
        if self._dt is None or abs(model.spec.dt - self._dt) > 1e-3 * self._dt:
            self._build_planners(model.spec.nx, model.spec.nu, model.spec.dt)
        self.spec = model.spec
        self.model = model
        self.model_version = version
        self._rebuild_cost()

    def set_target(self, q_target: np.ndarray) -> None:
        q_target = check_target(q_target, self.n_joints)
        self.target_q = q_target
        self._rebuild_cost()

    def set_cost_settings(self, s: CostSettings) -> None:
        self.cost_settings = s
        self._rebuild_cost()

    def set_deadline(self, seconds: float | None) -> None:
        """The wall-clock budget of a replan [s] (None: none), for every planner, now and
        after a rebuild (ValueError if not positive and finite)."""
        self.deadline = _check_deadline(seconds)
        for p in self.planners.values():
            p.set_deadline(self.deadline)

    def set_effort_scale(self, scale: float) -> None:
        """Plan within ``scale`` x the effort limits from now on (planners rebuilt,
        warm-started)."""
        with self._lock:
            self.effort_scale = float(scale)
            self.rebuild_planners()

    def set_effort_rate(self, rate: float) -> None:
        """Plan within this effort rate [per s] from the next replan on (0: none;
        ValueError if negative or not finite)."""
        rate = check_effort_rate(rate)
        with self._lock:
            self.effort_rate = rate
            for p in self.planners.values():
                p.set_effort_rate(rate or None)

    def reset_planners(self) -> None:
        """Every planner forgets its plan (a new episode)."""
        with self._lock:
            for p in self.planners.values():
                p.reset(self.horizon)

    def rebuild_planners(self) -> None:
        """Rebuild every planner (new settings or limits), warm-started from the current
        plan of the active one."""
        with self._lock:
            self._rebuild_planners()

    def _rebuild_planners(self) -> None:
        if self._dt is None:
            return
        nominal = self.planners[self.active].nominal if self.active in self.planners else None
        t0 = self.planners[self.active].nominal_time if nominal is not None else None
        self._build_planners(2 * self.position_limits.shape[0], self.effort_limits.size,
                             self._dt)
        if nominal is not None:
            self.planners[self.active].warm_start(nominal[1], t0=t0)

    def _build_planners(self, nx: int, nu: int, dt: float) -> None:
        u_max = self.effort_scale * self.effort_limits
        self.planners = {pid: self._factory(pid, nx, nu, -u_max, u_max, dt)
                         for pid in self.planner_ids}
        for p in self.planners.values():
            p.reset(self.horizon)
            p.set_deadline(self.deadline)
            p.set_effort_rate(self.effort_rate or None)
            if hasattr(p, "set_position_limits"):    # planners with state constraints
                p.set_position_limits(self.position_limits)
            if hasattr(p, "set_robot"):              # model-free planners: the joints
                if self.robot is None:
                    raise ValueError(f"planner {type(p).__name__} needs the robot's layout "
                                     "(MPCController robot=...)")
                p.set_robot(self.robot)
        self._dt = dt

    def explorer(self) -> str | None:
        """The model-free planner used while there is no model: the fallback planner if it
        plans without a model, else the active one if it does; None: hold until a model
        comes."""
        for pid in (self.fallback, self.active):
            p = self.planners.get(pid) if pid else None
            if p is not None and not p.needs_model:
                return pid
        return None

    def _rebuild_cost(self) -> None:
        if self.spec is None or self.target_q is None:
            return
        s = self.cost_settings
        cost: Cost = task_cost(s, self.target_q, self.effort_limits, self.continuous)
        finite = np.isfinite(self.position_limits).all(axis=1)
        if s.limit_weight > 0 and finite.any():
            idx = np.flatnonzero(finite)
            cost = cost + JointLimitBarrier(self.position_limits[idx, 0],
                                            self.position_limits[idx, 1], self.spec.nx,
                                            self.spec.nu, indices=idx, margin=s.limit_margin,
                                            weight=s.limit_weight)
        self.cost = cost

    # ------------------------------------------------------------------ planning
    @property
    def ready(self) -> bool:
        """A replan can run: a model and a target, or no model but a model-free planner
        (:meth:`explorer`)."""
        if self.model is None:
            return self.explorer() is not None
        return self.cost is not None

    def replan(self, x: np.ndarray, t: float, lookahead: float = 0.0,
               last: tuple[np.ndarray, float] | None = None) -> Policy:
        """Plan from state ``x`` at time ``t`` [s]; returns the new policy.

        Args:
            x: (nx,) measured state at time t.
            t: its time [s].
            lookahead: latency compensation [s]: the time until the new policy takes over
                from the current one (the expected solve time). The state is predicted
                that many model steps ahead (rounded, at most the horizon) under the
                current policy with the model's mean, and the plan starts there, so that
                its first actions are not ones the robot has already passed (0, no current
                policy, a time-varying model or a non-finite prediction: plan from x).
            last: (u (nu,), t_u [s]): the command last applied and the time of the state
                it was computed for; with :attr:`effort_rate` the planners plan their
                first actions within its reach. None: unknown (no rate bounds).
        """
        with self._lock:
            return self._replan(x, t, lookahead, last)

    def _replan(self, x: np.ndarray, t: float, lookahead: float,
                last: tuple[np.ndarray, float] | None = None) -> Policy:
        if not self.ready:
            raise ModelError("no model or no target yet")
        t_start = time.perf_counter()
        if last is not None and not np.all(np.isfinite(np.asarray(last[0], dtype=float))):
            last = None                   # a non-finite record bounds nothing
        x, t, ahead, last = self._predict_ahead(np.asarray(x, dtype=np.float64), float(t),
                                                lookahead, last)
        for p in self.planners.values():
            p.set_last_action(*(last if last is not None else (None, None)))
        switched = None
        if self._pending is not None:
            previous = self.planners[self.active]
            new = self.planners[self._pending]
            nominal = previous.nominal
            if nominal is not None:       # bumpless: continue the previous plan
                new.warm_start(nominal[1], t0=previous.nominal_time)
            switched = (self.active, self._pending)
            self.active, self._pending = self._pending, None
        pid = self.active
        if self.model is None:            # exploring until the first model
            pid = self.explorer()
            if pid is None:
                raise ModelError("no model yet and no model-free planner to explore with")
            self.policy = self.planners[pid].optimize(x, t, None, None)
            self.stats = {**self.planners[pid].stats, "planner": pid,
                          "fallback": pid != self.active, "exploring": True,
                          "uncertainty": float("inf"), "switched": switched,
                          "replan_seconds": time.perf_counter() - t_start,
                          "lookahead_steps": ahead, "model_version": 0}
            return self.policy
        policy = self.planners[pid].optimize(x, t, self.model, self.cost)
        fallback = False
        # A non-finite plan (a poor early model can make iLQR diverge) is a failed replan
        # -- or the fallback's turn -- never a policy for the robot (its NaN would latch).
        finite = finite_plan(policy, x, t)
        uncertainty = self._uncertainty(x, policy.action(x, t)) if finite else float("inf")
        if (self.fallback and self.fallback != pid
                and (not finite or (self.uncertainty_threshold > 0
                                    and uncertainty > self.uncertainty_threshold))):
            fb = self.planners[self.fallback]
            if fb.nominal is None and self.planners[pid].nominal is not None:
                fb.warm_start(self.planners[pid].nominal[1], t0=t)
            policy = fb.optimize(x, t, self.model, self.cost)
            fallback = True
        if not finite_plan(policy, x, t):
            raise ModelError(f"planner {self.fallback if fallback else pid!r} produced a "
                             "non-finite plan with this model")
        self.policy = policy
        used = self.planners[self.fallback if fallback else pid]
        self.stats = {**used.stats, "exploring": not used.needs_model,
                      "planner": self.fallback if fallback else pid, "fallback": fallback,
                      "uncertainty": uncertainty, "switched": switched,
                      "replan_seconds": time.perf_counter() - t_start,
                      "lookahead_steps": ahead, "model_version": self.model_version}
        return policy

    def _predict_ahead(self, x: np.ndarray, t: float, lookahead: float,
                       last: tuple[np.ndarray, float] | None = None
                       ) -> tuple[np.ndarray, float, int, tuple[np.ndarray, float] | None]:
        """(state, time, steps, last command) ``lookahead`` seconds ahead under the current
        policy. The commands it predicts are rate-limited from ``last`` as the command
        path limits them (with :attr:`effort_rate`), and the last of them is returned as
        the last command before the new plan takes over: the plan's first actions are then
        bounded from the command the robot will have, not from the one it had when the
        state was measured (that one bounds them only loosely -- the commands between move
        too -- and on arm7 behind 1000 N·m/s a one-step latency left iLQR oscillating
        around the target: BENCHMARKS.md, Session 8, "Planning within the effort rate",
        and "Figures moved out of docstrings (issue 13)")."""
        steps = int(round(lookahead / self._dt)) if lookahead > 0 and self._dt else 0
        steps = min(steps, self.horizon)
        if (steps == 0 or self.policy is None or self.model is None
                or getattr(self.model, "time_varying", False)):
            return x, t, 0, last
        xp, tp, lp = x, t, last
        with np.errstate(invalid="ignore", over="ignore"):
            for _ in range(steps):
                if lp is not None and lp[1] >= tp - 1e-9:
                    u = lp[0]          # the command for this state is sent already
                else:
                    u = np.asarray(self.policy.action(xp, tp), dtype=np.float64)
                    if lp is not None and self.effort_rate > 0:
                        reach = self.effort_rate * max(tp - lp[1], self._dt)
                        u = np.clip(u, lp[0] - reach, lp[0] + reach)
                lp = (u, tp) if last is not None else None
                xp = self.model.predict(xp, u)[0][0]
                tp += self._dt
        if not np.all(np.isfinite(xp)) or (lp is not None and not np.all(np.isfinite(lp[0]))):
            return x, t, 0, last
        return xp, tp, steps, lp

    def _uncertainty(self, x: np.ndarray, u: np.ndarray) -> float:
        if self.uncertainty_threshold <= 0:
            return 0.0
        _, var = self.model.predict(x[None], u[None])
        return 0.0 if var is None else float(np.mean(np.sqrt(np.maximum(var, 0.0))))

    def nominal_states(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(xs (T+1, nx), us (T, nu)) of the active planner's current plan, or None."""
        p = self.planners.get(self.active)
        return None if p is None else p.nominal
