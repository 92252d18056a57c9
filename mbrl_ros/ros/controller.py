"""Real-time MPC controller (lifecycle node ``controller``).

Replans (planning thread, or a worker process: :mod:`mbrl_ros.core.control.plan_process`)
produce an immutable policy; the control step (:mod:`~mbrl_ros.ros.control_step`) evaluates
it on the newest joint state, passes the command through the safety layers
(:mod:`mbrl_ros.core.control.safety`) and publishes it. The walk-through -- lifecycle,
plan / act split, runtime changes, safety, diagnostics -- is docs/CONTROLLER.md.

Interface (topic names relative, so a namespace moves the whole robot):

* in: ``state_topic`` (sensor_msgs/JointState); ``~/target_joints`` (Float64MultiArray);
  ``~/switch_planner`` (String); models on ``model_topic`` (String) or ``artifact_topic``
  (UInt8MultiArray); service ``~/clear_error`` (std_srvs/Trigger) clears a latched error.
* out: ``<controller_name>/commands`` (Float64MultiArray, efforts); ``~/planned_trajectory``
  (trajectory_msgs/JointTrajectory); ``~/planned_path`` (visualization_msgs/MarkerArray of
  the end effector); ``/diagnostics``.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from mbrl_ros.core import registry, store
from mbrl_ros.core.control.actuator import Actuator
from mbrl_ros.core.control.health import RecentEvents
from mbrl_ros.core.control.mpc import MPCController
from mbrl_ros.core.control.plan_process import PlanProcess
from mbrl_ros.core.control.plan_wire import PlanProcessError
from mbrl_ros.core.control.planning import Planning
from mbrl_ros.core.control.plausibility import StatePlausibility
from mbrl_ros.core.control.safety import SafetyFilter, SafetySettings
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.planners.base import RobotLayout
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import SettingsError
from mbrl_ros.ros.control_step import ControlStep
from mbrl_ros.ros.controller_outputs import ControllerOutputs
from mbrl_ros.ros.controller_params import ControllerSettings, ParameterCallbacks
from mbrl_ros.ros.conversions import JointStateReader, MessageError, NonFiniteState, time_to_ns
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings

__all__ = ["Controller", "ControllerSettings", "SafetySettings", "CostSettings", "main"]

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Controller(ControlStep, ControllerOutputs, ParameterCallbacks, LifecycleNode):
    """The controller node (module docstring; docs/CONTROLLER.md). Its parts: lifecycle, models,
    inputs and the plan loop here; the control step and what runs it in
    :mod:`~mbrl_ros.ros.control_step`; the plan and diagnostics publishing in
    :mod:`~mbrl_ros.ros.controller_outputs`; the parameter schema and callbacks in
    :mod:`~mbrl_ros.ros.controller_params`."""

    def __init__(self, **kwargs):
        super().__init__("controller", **kwargs)
        self.settings = declare_settings(self, ControllerSettings,
                                         on_change=self._on_settings,
                                         validate=self._check_settings)
        self.safety_settings = declare_settings(self, SafetySettings,
                                                on_change=self._on_safety)
        self.cost_settings = declare_settings(self, CostSettings, on_change=self._on_cost)
        # `ros2 param describe` lists the valid planner ids (known only now).
        for name in ("active_planner", "fallback_planner"):
            d = self.describe_parameter(name)
            d.additional_constraints = "one of: " + ", ".join(
                self.settings.planner_plugins) + (" (or '' for none)" if name[0] == "f" else "")
            self.set_descriptor(name, d)
        self._planner_settings: dict[str, tuple[str, object]] = {}
        for pid in self.settings.planner_plugins:
            kind = self.declare_parameter(f"{pid}.plugin", pid).value
            try:
                cls = registry.lookup("planner", kind)
            except KeyError as e:
                raise SettingsError(f"planner_plugins: {pid}: {e}") from e
            self._planner_settings[pid] = (kind, declare_settings(
                self, cls.Settings, prefix=f"{pid}.",
                on_change=lambda new, pid=pid: self._on_planner_settings(pid, new)))
        # Planners + model + cost (in this process or a worker: the same interface).
        self.mpc: Planning | None = None
        # The control step's decisions (accepted state, holds, latch, hand-over): built at
        # configure, when the robot is known.
        self.actuator: Actuator | None = None
        self.active = False
        # Replanning has a thread of its own (as mujoco_mpc's planning thread): in an
        # executor callback a solve competes with the executor loop for the GIL and takes
        # many times longer (BENCHMARKS.md, "Figures moved out of docstrings (issue 13)").
        # Models load on another thread, so a slow load never delays states.
        self._plan_stop = threading.Event()
        self._plan_thread: threading.Thread | None = None
        self._new_state = threading.Event()     # plan_mode on_state: a state was accepted
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model_load")
        # Timer mode with control_loop 'thread': the control step runs on a thread of its
        # own while active (an executor timer's period jitters by the executor's work and
        # by every GIL hand-off with subscription callbacks).
        self._control_stop = threading.Event()
        self._control_thread: threading.Thread | None = None
        self._control_clock = "on_state"        # what runs the control step (configure)
        self._control_sched = ""                # the control thread's scheduling
        self._saved_switch_interval: float | None = None
        self._states_since_plan = 0
        self._last_cmd_wall: float | None = None
        self._periods: deque = deque(maxlen=1000)   # between control-step starts [s]
        self._late: deque = deque(maxlen=1000)      # control step start - its deadline [s]
        self._solve_times: deque = deque(maxlen=200)
        self._plan_latency: deque = deque(maxlen=10)    # s, state arrival -> policy in use
        self._lookahead_steps = 0
        self.counters = {"commands": 0, "stale": 0, "deadline_misses": 0, "replans": 0,
                         "late_states_unplanned": 0,
                         "replan_failures": 0, "fallbacks": 0, "model_loads": 0,
                         "model_rejects": 0, "switches": 0, "control_overruns": 0}
        # Health: replans failed since the last success, planning-worker failures in a
        # window, and what the previous diagnostics report had seen (holds, commands).
        self._replan_failures_in_row = 0
        self._last_replan_error = ""
        self._worker_failures = RecentEvents(self.settings.worker_failure_window)
        self._worker_failures_seen = 0
        self._reported: tuple[dict, int] = ({}, 0)
        self.get_logger().info("unconfigured; "
                               + ("autostart: configuring" if self.settings.autostart
                                  else "waiting for configure"))
        if self.settings.autostart:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ================================================================== lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        s = self.settings
        try:
            self.robot = RobotDescription.load(s.robot)
            if not np.all(np.isfinite(self.robot.effort_limits)):
                raise ValueError(f"{self.robot.model_path.name}: every command joint needs a "
                                 "finite effort limit (ctrlrange or forcerange) for the "
                                 f"controller; got {self.robot.effort_limits.tolist()}")
            cmd_index = np.asarray(self.robot.command_index)
            min_inertia = self.robot.min_effective_inertia()
            self.safety = SafetyFilter.for_robot(self.safety_settings, self.robot,
                                                 self._model_period(), min_inertia)
            self.actuator = Actuator(self.safety, StatePlausibility.for_robot(
                self.safety_settings, self.robot, min_inertia))
            self._reported = ({}, self.counters["commands"])    # a new actuator's holds
            self._worker_failures_seen = 0                       # and a new worker's
            args = (list(s.planner_plugins), s.active_planner, s.horizon,
                    self.robot.effort_limits, self.robot.position_limits, self.cost_settings,
                    s.fallback_planner, s.uncertainty_threshold)
            # Model-free planners (exploration before the first model) need the joints.
            layout = RobotLayout(self.robot.position_limits, cmd_index,
                                 self.robot.effective_inertia())
            # Real-time replanning: a replan's budget is the replan period (planners
            # adapt their work to it); sync mode is deterministic, without one.
            deadline = 1.0 / s.plan_rate if s.plan_mode != "sync" else None
            scale, rate = self.safety_settings.effort_scale, self._planned_rate()
            if self._planning_in_worker():
                self.mpc = PlanProcess(s.robot, self._model_period(), self.robot.joint_names,
                                       lambda: self._planner_settings, *args,
                                       continuous=self.robot.continuous, layout=layout,
                                       plan_timeout=s.plan_timeout, nice=s.plan_nice,
                                       deadline=deadline, effort_scale=scale,
                                       effort_rate=rate, log=self._log_planning,
                                       on_lost=self._on_plan_lost)
            else:
                self.mpc = MPCController(self._make_planner, *args,
                                         continuous=self.robot.continuous, robot=layout,
                                         control_period=self._model_period(),
                                         deadline=deadline, effort_scale=scale,
                                         effort_rate=rate, mjcf=s.robot)
            if s.target_joint_positions:
                self.mpc.set_target(np.asarray(s.target_joint_positions))
            if s.model:
                self._load_initial_model(s.model)
        except (ValueError, ModelError, FileNotFoundError) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self.reader = JointStateReader(self.robot.joint_names)
        before = self._entities()
        self.cmd_pub = self.create_lifecycle_publisher(
            Float64MultiArray, f"{s.controller_name}/commands", RELIABLE)
        self.plan_pub = self.create_publisher(JointTrajectory, "~/planned_trajectory", 10)
        self.path_pub = self.create_publisher(MarkerArray, "~/planned_path", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._plan_group = MutuallyExclusiveCallbackGroup()
        self._model_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(JointState, s.state_topic, self._on_state, RELIABLE,
                                 callback_group=self._control_group)
        self.create_subscription(Float64MultiArray, "~/target_joints", self._on_target, 10,
                                 callback_group=self._plan_group)
        self.create_subscription(String, "~/switch_planner", self._on_switch, 10,
                                 callback_group=self._plan_group)
        if s.artifact_topic:
            self.create_subscription(
                UInt8MultiArray, s.artifact_topic,
                lambda m: self._loader.submit(self._on_artifact, m), LATCHED,
                callback_group=self._model_group)
        elif s.model_topic:
            self.create_subscription(
                String, s.model_topic,
                lambda m: self._loader.submit(self._on_model_announcement, m), LATCHED,
                callback_group=self._model_group)
        self.create_service(Trigger, "~/clear_error", self._srv_clear,
                            callback_group=self._plan_group)
        self._control_clock = self._choose_control_clock()
        if self._control_clock.startswith("executor"):
            self.create_timer(1.0 / s.control_rate, self._on_control_timer,
                              callback_group=self._control_group)
        self._watchdog_period = min(0.02, self.safety_settings.state_timeout / 2)
        self.create_timer(self._watchdog_period, self._watchdog,
                          callback_group=self._control_group)
        if s.diagnostics_rate > 0:
            self.create_timer(1.0 / s.diagnostics_rate, self._publish_diagnostics,
                              callback_group=self._model_group)
        # Everything configure created is destroyed by cleanup (a second configure must
        # not double every subscription and timer).
        self._configured = {k: [e for e in v if e not in before[k]]
                            for k, v in self._entities().items()}
        self.get_logger().info(
            f"configured for {self.robot.model_path.name}: planners "
            f"{list(s.planner_plugins)} (active {s.active_planner}), model "
            f"{s.model or 'from ' + s.model_topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.safety.reset()
        self.actuator.clear_policy()
        self._last_cmd_wall = None          # no period across an inactive stretch
        self.active = True
        self._start_control_thread()
        if self.settings.plan_mode != "sync":
            self.mpc.start()                # a worker: ready in the background; no
                                            # plan meanwhile: safe hold
            self._plan_stop.clear()
            self._plan_thread = threading.Thread(target=self._plan_loop, name="planner",
                                                 daemon=True)
            self._plan_thread.start()
        self.get_logger().info("active: commanding " + self.cmd_pub.topic_name)
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        self._stop_control_thread()         # before the release: one publisher at a time
        self._stop_planning()
        self._release()
        self.actuator.clear_policy()
        return super().on_deactivate(state)

    def _stop_planning(self) -> None:
        self._plan_stop.set()
        if self.mpc is not None:
            self.mpc.stop()                 # a worker's: also ends a replan waited for
        if self._plan_thread is not None:
            self._plan_thread.join(timeout=5.0)
            self._plan_thread = None

    def _entities(self) -> dict[str, list]:
        return {"sub": list(self.subscriptions), "timer": list(self.timers),
                "srv": list(self.services), "pub": list(self.publishers)}

    def _destroy_configured(self) -> None:
        made = getattr(self, "_configured", None)
        if not made:
            return
        for sub in made["sub"]:
            self.destroy_subscription(sub)
        for timer in made["timer"]:
            self.destroy_timer(timer)
        for srv in made["srv"]:
            self.destroy_service(srv)
        for pub in made["pub"]:
            if pub is self.cmd_pub:
                self.destroy_lifecycle_publisher(pub)
            else:
                self.destroy_publisher(pub)
        self._configured = None

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._stop_control_thread()
        self._destroy_configured()
        if self.mpc is not None:
            self.mpc.stop()
        self.mpc = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        was_active, self.active = self.active, False
        self._stop_control_thread()
        self._stop_planning()
        if was_active:
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def finish(self, executor) -> None:
        """SIGINT/SIGTERM (run_node): leave the arm with zero effort, not the last one."""
        self._stopping = True
        if self.active:
            self.active = False
            self._stop_control_thread()
            self._stop_planning()
            self._release()

    def destroy_node(self) -> None:
        self._stopping = True
        self.active = False
        if hasattr(self, "_control_stop"):
            self._stop_control_thread()
        if hasattr(self, "_plan_stop"):
            self._stop_planning()
            self._loader.shutdown(wait=True, cancel_futures=True)
        super().destroy_node()

    def reset_episode(self) -> None:
        """Forget the current plan, the last command and the last state (a new episode
        starts elsewhere): planners restart cold, the rate limit starts from zero, and
        the state check confirms the new episode's first states instead of rejecting
        them as a jump."""
        self.actuator.reset()
        if self.mpc is not None:
            self.mpc.reset_planners()
        self._states_since_plan = 0

    # ================================================================== models, planners
    def _make_planner(self, pid: str, nx: int, nu: int, u_min, u_max, dt: float):
        kind, settings = self._planner_settings[pid]
        return registry.lookup("planner", kind)(settings, nx, nu, u_min, u_max, dt)

    def _planned_rate(self) -> float:
        """The effort rate the planners plan within: the safety filter's max_effort_rate
        (0 with plan_within_rate false: none)."""
        return self.safety_settings.max_effort_rate if self.settings.plan_within_rate else 0.0

    def _planning_in_worker(self) -> bool:
        """True if replans are solved by a planning worker process (else: in this node)."""
        return self.settings.planning == "process" and self.settings.plan_mode != "sync"

    def _use_model(self, source: str, version: int | None = None,
                   checksum: str | None = None) -> int:
        """Load, verify and use a model ('mujoco' or an artifact); returns its version.
        With a planning process, the process loads it (or, inactive, it is verified here)."""
        # The one-step check predicts from the newest accepted state (None: home keyframe).
        state = self.actuator.latest[0] if self.actuator is not None else None
        return self.mpc.load_model(source, version, checksum, state=state)

    def _load_initial_model(self, source: str) -> None:
        self._use_model(source)
        self.counters["model_loads"] += 1

    def _model_period(self) -> float:
        """The robot's control period [s]: the known model's step and the rate limit's dt."""
        return 1.0 / self.settings.control_rate

    def _log_planning(self, level: str, text: str) -> None:
        log = self.get_logger()
        {"error": log.error, "warning": log.warning}.get(level, log.info)(text)

    def _on_plan_lost(self, reason: str) -> None:
        """The planning process died or hung: its last plan is not followed any further
        (safe hold until a new process plans again)."""
        self.actuator.clear_policy()

    def _on_artifact(self, msg: UInt8MultiArray) -> None:
        """A packed artifact from another host: unpack locally, then load as announced."""
        import os
        try:
            header = json.loads(msg.layout.dim[0].label)
            path = store.unpack(bytes(msg.data), os.path.expanduser(self.settings.artifact_cache),
                                header["name"], int(header["version"]), header.get("checksum"))
            header["uri"] = str(path)
        except (ModelError, ValueError, KeyError, IndexError, OSError) as e:
            self.counters["model_rejects"] += 1
            self.get_logger().error(f"received artifact rejected: {e}")
            return
        self._on_model_announcement(String(data=json.dumps(header)))

    def _on_model_announcement(self, msg: String) -> None:
        try:
            info = store.ArtifactInfo.from_json(msg.data)
            if self.mpc is None:
                raise ModelError("not configured")
            self._use_model(info.uri, info.version, info.checksum)
        except (ModelError, ValueError, KeyError, OSError) as e:
            if getattr(self, "_stopping", False):   # Ctrl-C stopped the planning process
                self.get_logger().info(f"model announcement not loaded: shutting down ({e})")
                return
            self.counters["model_rejects"] += 1
            self.get_logger().error(f"model announcement rejected, keeping model "
                                    f"v{self.mpc.model_version if self.mpc else 0}: {e}")
            return
        self.counters["model_loads"] += 1
        self.get_logger().info(f"using {info.kind} model v{info.version}")

    # ================================================================== inputs
    def _on_state(self, msg: JointState, info) -> None:
        act = self.actuator
        had_fault = act.fault is not None
        try:
            q, qd = self.reader.read(msg)
        except NonFiniteState as e:
            act.unreadable(str(e), nonfinite=True)
            accepted = False
        except MessageError as e:           # e.g. another driver's joints: not ours
            act.unreadable(str(e))
            self.get_logger().warning(f"joint state ignored: {e}", throttle_duration_sec=1.0)
            return
        else:
            verdict = act.receive(q, qd, time_to_ns(msg.header.stamp) * 1e-9,
                                  time.monotonic())
            accepted = verdict.accepted
            if verdict.implausible:
                self.get_logger().warning(f"joint state rejected: {verdict.reason}",
                                          throttle_duration_sec=1.0)
            elif verdict.reason and accepted:
                self.get_logger().warning(f"joint state {verdict.reason}")
        if act.fault is not None and not had_fault:
            self.get_logger().error(f"{act.fault}: safe hold until ~/clear_error")
        if accepted:
            if self.mpc is not None and self.mpc.target_q is None:
                self.mpc.set_target(q)          # no target given: hold where we are
            if self.settings.plan_mode == "sync" and self.active:
                if self._states_since_plan % self.settings.replan_every == 0:
                    if self._queued_too_long(info):     # queued behind a slow solve: act, catch up
                        self.counters["late_states_unplanned"] += 1
                    else:
                        self._replan()
                self._states_since_plan += 1
            elif self.settings.plan_mode == "on_state":
                self._new_state.set()           # the planning thread takes the newest
        if self.settings.control_mode == "on_state":
            self._control_tick()            # a rejected state is answered by the hold

    def _queued_too_long(self, info) -> bool:
        """The state waited in the queue longer than ``sync_max_state_age`` (its reception
        time by the middleware, system clock, against now)."""
        limit = self.settings.sync_max_state_age
        received = info.get("received_timestamp", 0) if limit > 0 else 0
        return bool(received) and time.time_ns() - received > limit * 1e9

    def _on_target(self, msg: Float64MultiArray) -> None:
        if self.mpc is None:
            self.get_logger().warning("target ignored: not configured")
            return
        try:
            self.mpc.set_target(np.asarray(msg.data, dtype=float))
        except ValueError as e:
            self.get_logger().error(f"target rejected: {e}")

    def _on_switch(self, msg: String) -> None:
        from rclpy.parameter import Parameter
        result = self.set_parameters([Parameter("active_planner", value=msg.data)])[0]
        if not result.successful:
            self.get_logger().error(f"planner switch rejected: {result.reason}")

    # ================================================================== plan / act
    def _plan_loop(self) -> None:
        """Replan at plan_rate until deactivated (its own thread); with plan_mode on_state
        each replan first waits for a state accepted since the previous one and plans from
        the newest (states that arrive during a solve are not queued), its start at least
        one plan period after the previous start."""
        period = 1.0 / self.settings.plan_rate
        on_state = self.settings.plan_mode == "on_state"
        next_t = time.monotonic()
        while not self._plan_stop.is_set():
            if on_state:
                # wake at least every period to see a stop; no new state: no replan
                if not self._new_state.wait(period):
                    continue
                delay = next_t - time.monotonic()
                if delay > 0 and self._plan_stop.wait(delay):
                    break
                self._new_state.clear()
                next_t = time.monotonic() + period
            self._replan_guarded()
            if on_state:
                continue
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:                       # overran: start the next plan now
                next_t = time.monotonic()
                delay = 0.0
            self._plan_stop.wait(delay)

    def _replan_guarded(self) -> None:
        if self.active and self.actuator.latest[0] is not None and self.fault is None:
            try:
                self._replan()
            except Exception as e:   # the loop must survive anything a model does
                self.counters["replan_failures"] += 1
                self.get_logger().error(f"replan raised {e!r}", throttle_duration_sec=1.0)

    def _lookahead(self) -> float:
        """Latency compensation [s]: the median of the last 10 plan latencies (from the
        state's arrival to its policy taking over; timer and on_state modes)."""
        if (not self.settings.latency_compensation or self.settings.plan_mode == "sync"
                or not self._plan_latency):
            return 0.0
        return float(np.median(self._plan_latency))

    def _replan(self) -> None:
        x, t, x_wall = self.actuator.latest
        if x is None or self.mpc is None or not self.mpc.ready:
            return
        try:
            policy = self.mpc.replan(x, t, self._lookahead(), self.actuator.last_command)
            st = dict(self.mpc.stats)
        except PlanProcessError as e:   # no process (lost, restarting, stopped): hold
            self.actuator.clear_policy()
            if not self._plan_stop.is_set():
                # The worker's health is judged by its failures (worker_failure_limit),
                # not as a model that cannot be planned with.
                self.counters["replan_failures"] += 1
                self.get_logger().error(f"replan failed: {e}", throttle_duration_sec=1.0)
            return
        except Exception as e:      # any planner/model failure: keep the previous plan
            self._replan_failed(e)
            self.get_logger().error(f"replan failed, keeping the previous plan: {e}",
                                    throttle_duration_sec=1.0)
            return
        self.counters["replans"] += 1
        self._replan_failures_in_row = 0
        self._solve_times.append(st["replan_seconds"])
        if st.get("fallback"):
            self.counters["fallbacks"] += 1
        if st.get("switched"):
            self.counters["switches"] += 1
            self.get_logger().info(f"planner switched {st['switched'][0]} -> "
                                   f"{st['switched'][1]}")
        if self.settings.plan_mode != "sync" and \
                st["replan_seconds"] > 1.0 / self.settings.plan_rate:
            self.counters["deadline_misses"] += 1
        # A plan started ahead of its state (latency compensation) takes over at its t0.
        warm = self.actuator.offer(policy, ahead=st.get("lookahead_steps", 0) > 0)
        if warm:          # a cold plan's latency (first solve, process start) is no guide
            self._plan_latency.append(time.monotonic() - x_wall)
        self._lookahead_steps = int(st.get("lookahead_steps", 0))
        if self.settings.publish_plan:
            self._publish_plan(t)

    def _replan_failed(self, e: Exception) -> None:
        """A planner or model failure (the model may be unusable)."""
        self.counters["replan_failures"] += 1
        self._replan_failures_in_row += 1
        self._last_replan_error = str(e) or type(e).__name__

    def _srv_clear(self, request, response):
        previous = self.actuator.clear_fault()      # plans afresh from the current state
        response.success = True
        response.message = f"cleared: {previous}" if previous else "no error latched"
        return response


def main(args=None) -> None:
    # One executor thread for the control path; planning and model loading have their own.
    run_node(Controller, args, threads=1)


if __name__ == "__main__":
    main()
