"""Real-time MPC controller (lifecycle node ``controller``).

Lifecycle, as ros2_controllers' controllers: *configure* reads the robot (MJCF), builds
every planner in ``planner_plugins`` and loads the initial model; *activate* starts
commanding; *deactivate* sends the safe hold and stops; ``autostart`` does configure +
activate at start (launch files and ``mbrl-ros`` bring it to active).

Plan / act split: the replan loop (``plan_rate`` Hz on a planning thread of its own, or
every ``replan_every`` states in ``plan_mode: sync``) produces an immutable policy; the
control step evaluates it on the newest state (on every joint state with
``control_mode: on_state``, or at ``control_rate`` with ``timer``) and publishes the effort
command on ``<controller_name>/commands`` (std_msgs/Float64MultiArray; topic names are
relative, so a namespace moves the whole robot).

What runs the timer-mode control step (``control_loop``): ``thread`` (default) is a control
thread of its own, running only while the node is active: it sleeps to absolute deadlines
of the monotonic clock (the last 0.3 ms by yielding), asks for SCHED_FIFO
(``control_priority``; without the permission it stays at normal priority, shown in
/diagnostics as ``control_sched``) and shortens Python's GIL switch interval
(``gil_switch_interval``) so the executor's callbacks cannot delay it by more than that.
A step that overruns the next deadline makes that step start late; further missed
deadlines are skipped, never made up in a burst (``control_overruns``). ``executor`` is
an rclpy timer on the node's executor; with ``use_sim_time`` the executor timer is always
used, because only it follows /clock. Both call the same control step (safety filter,
watchdog hold, NaN latch).

Where the solver runs (``planning``, plan_mode timer): ``process`` (default) runs the
MPCController in a worker process (:mod:`mbrl_ros.core.control.plan_process`); the node's
planning thread only sends the newest state and waits, without the GIL, for the policy, so
solves never delay the control timer; the worker runs at a lower priority (``plan_nice``).
``thread`` solves in the node (a solve holds the GIL for milliseconds: the timer period
jitters by as much). The worker runs while the node is active (stopped on deactivate,
cleanup and SIGINT/SIGTERM); if it dies or does not answer a replan within
``plan_timeout`` the node drops its plan at once (safe hold, as with no plan), counts it
(``plan_process_failures``) and starts a new one at the next replan.
``plan_mode: sync`` always plans in the node.

Runtime changes: ``active_planner`` (dynamic parameter, or a std_msgs/String on
``~/switch_planner``): an unknown id is rejected with the valid ones; the switch happens at
the next replan, warm-started from the current plan, and the command rate limit keeps it
continuous. Targets: ``target_joint_positions`` (dynamic) or ``~/target_joints``
(Float64MultiArray). Models: ``model: mujoco`` (the known model of ``robot``), an artifact
path, or announcements on ``model_topic`` (loaded in their own callback group while the
controller keeps running on the previous model). Before the first model, a model-free
planner in ``planner_plugins`` (``excitation``) that is the fallback or the active planner
explores instead of the controller holding, through the same control step and safety
layers (the launches set it up so for learned models: live learning).

Safety (see :mod:`mbrl_ros.core.control.safety`): clamp and rate limit, joint-limit guard,
watchdog (no fresh state for ``state_timeout`` -> safe hold), NaN/inf in the state or the
policy -> safe hold with a latched error cleared by ``~/clear_error`` (std_srvs/Trigger),
deadline-miss counter, uncertainty fallback. Joint states pass a plausibility check first
(:mod:`mbrl_ros.core.control.plausibility`: range plus ``state_position_margin``, speed,
reach from the last accepted state): a rejected state never reaches a planner or the
policy, the control step holds until states are plausible again, and ``implausible_latch``
rejections in a row (or within ``implausible_window``) latch the error. The decisions of a
control step (holds, latch, plan hand-over) live in
:class:`mbrl_ros.core.control.actuator.Actuator`; this node feeds it and publishes.

Publishes ``/diagnostics`` (level: ERROR when latched, when the model is unusable --
``replan_failure_limit`` replans failed in a row -- or when the planning worker failed more
than ``worker_failure_limit`` times within ``worker_failure_window``; WARN when any control
step since the last report held for a reason other than having no target; see
:func:`mbrl_ros.core.control.health.controller_health`) and the plan
(``~/planned_trajectory``, trajectory_msgs/JointTrajectory; ``~/planned_path``,
visualization_msgs/MarkerArray of the end effector).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections import deque
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.timer import TimerInfo
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from mbrl_ros.core import registry, store
from mbrl_ros.core.control.actuator import Actuator
from mbrl_ros.core.control.health import RecentEvents, controller_health
from mbrl_ros.core.control.mpc import MPCController
from mbrl_ros.core.control.plan_process import PlanProcess, PlanProcessError, load_model
from mbrl_ros.core.control.plausibility import StatePlausibility, default_limits
from mbrl_ros.core.control.safety import SafetyFilter, SafetySettings
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.planners.base import RobotLayout
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import SettingsError, setting
from mbrl_ros.ros.conversions import (JointStateReader, MessageError, NonFiniteState,
                                      command_msg, time_to_ns)
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class ControllerSettings:
    robot: str = setting("arm2", "MJCF (shipped name or path) with the robot's joints, "
                         "limits and end effector")
    controller_name: str = setting("effort_controller", "commands go to "
                                   "<controller_name>/commands (in the node's namespace)")
    state_topic: str = setting("joint_states", "sensor_msgs/JointState input")
    model: str = setting("mujoco", "initial model: 'mujoco' (known model of robot), an "
                         "artifact directory, or '' to wait for model_topic")
    model_topic: str = setting("model_fitter/model", "model announcements (std_msgs/String "
                               "JSON); '' to ignore")
    artifact_topic: str = setting("", "packed artifacts (std_msgs/UInt8MultiArray, the "
                                  "fitter's ~/artifact with serve_artifact) for hosts without a "
                                  "shared file system; '' to load announced paths directly")
    artifact_cache: str = setting("~/.cache/mbrl_ros/models", "where received artifacts are "
                                  "unpacked")
    planner_plugins: tuple[str, ...] = setting(("ilqr",), "planner ids; each has its "
                                               "parameters under '<id>.' and its type in "
                                               "'<id>.plugin' (default: the id)")
    active_planner: str = setting("ilqr", "planner in use (switch at run time)", dynamic=True)
    fallback_planner: str = setting("", "planner used while the model is too uncertain "
                                    "('': none)", dynamic=True)
    uncertainty_threshold: float = setting(0.0, "mean predicted std of the next state above "
                                           "which the fallback planner is used (0: off)",
                                           low=0.0, high=1e6, dynamic=True)
    horizon: int = setting(30, "plan length of every planner (overrides '<id>.horizon', so a "
                           "switch hands over plans of equal length)", unit="model steps",
                           low=2, high=10000)
    control_mode: str = setting("on_state", "'on_state': one command per joint state; "
                                "'timer': commands at control_rate",
                                choices=("on_state", "timer"))
    control_rate: float = setting(100.0, "control rate: commands per second in timer mode; "
                                  "in on_state mode the robot's joint-state rate (the known "
                                  "model's step and the rate limit use 1/control_rate)",
                                  unit="Hz", low=1.0, high=5000.0)
    control_loop: str = setting("thread", "timer mode: what runs the control step: 'thread' (a "
                                "thread of its own, absolute deadlines) or 'executor' (an rclpy "
                                "timer on the node's executor; always so with use_sim_time)",
                                choices=("thread", "executor"))
    control_priority: int = setting(50, "control thread: SCHED_FIFO priority it asks for "
                                    "(0: normal scheduling); refused without the permission "
                                    "(CAP_SYS_NICE or an rtprio limit) it runs at normal "
                                    "priority (/diagnostics: control_sched)", low=0, high=99)
    gil_switch_interval: float = setting(0.0005, "control thread: Python's GIL switch "
                                         "interval (sys.setswitchinterval) while it runs, so "
                                         "it gets the GIL soon after waking (0: Python's "
                                         "5 ms)", unit="s", low=0.0, high=0.1)
    plan_mode: str = setting("timer", "'timer': replan at plan_rate in the background; "
                             "'sync': replan every replan_every states before acting "
                             "(deterministic, for lockstep simulation)",
                             choices=("timer", "sync"))
    plan_rate: float = setting(50.0, "replanning rate in timer mode", unit="Hz", low=0.1,
                               high=2000.0)
    replan_every: int = setting(1, "states between replans in sync mode", low=1, high=10000)
    planning: str = setting("process", "where timer-mode replans are solved: 'process' (a worker "
                            "process: solves cannot hold the node's GIL) or 'thread' (in the "
                            "node: each solve can delay the control timer)",
                            choices=("process", "thread"))
    latency_compensation: bool = setting(
        True, "timer mode: plan from the state predicted for when the new plan takes over (state "
        "time + median of the last 10 plan latencies), not the measured one; docs/CONTROLLER.md",
        dynamic=True)
    plan_timeout: float = setting(10.0, "planning process: a replan unanswered for this long "
                                  "means it hangs; it is killed and restarted (the controller "
                                  "holds safely meanwhile)", unit="s", low=0.05, high=3600.0)
    plan_nice: int = setting(5, "planning process: niceness added to it, so that on a busy "
                             "machine the scheduler runs the control loop before the solver "
                             "(0: the node's priority)", low=0, high=19)
    target_joint_positions: tuple[float, ...] = setting((), "target joint positions (empty: "
                                                        "hold the first measured position)",
                                                        unit="rad|m", dynamic=True)
    autostart: bool = setting(False, "configure and activate at start (no lifecycle manager)")
    publish_plan: bool = setting(True, "publish ~/planned_trajectory and ~/planned_path")
    diagnostics_rate: float = setting(2.0, "rate of /diagnostics status", unit="Hz",
                                      low=0.0, high=100.0)
    replan_failure_limit: int = setting(20, "/diagnostics ERROR 'model unusable' after this "
                                        "many replans failed in a row (a successful replan "
                                        "clears it)", low=1, high=1_000_000, dynamic=True)
    worker_failure_limit: int = setting(3, "/diagnostics ERROR when the planning worker "
                                        "failed (died, hung, could not start) more than this "
                                        "many times within worker_failure_window",
                                        low=0, high=1_000_000, dynamic=True)
    worker_failure_window: float = setting(60.0, "window of worker_failure_limit", unit="s",
                                           low=0.1, high=1e6, dynamic=True)


class Controller(LifecycleNode):
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
        self.mpc: MPCController | None = None
        # The control step's decisions (accepted state, holds, latch, hand-over): built at
        # configure, when the robot is known.
        self.actuator: Actuator | None = None
        self.active = False
        # Replanning has a thread of its own (as mujoco_mpc's planning thread): in an
        # executor callback a 10 ms solve competed with the executor loop for the GIL and
        # took 300 ms. Models load on another thread, so a slow load never delays states.
        self._mpc_lock = threading.RLock()        # guards self.mpc across those threads
        self._plan_stop = threading.Event()
        self._plan_thread: threading.Thread | None = None
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
            n = self.robot.n_joints
            cmd_index = np.asarray(self.robot.command_index)
            min_inertia = self.robot.min_effective_inertia()
            self.safety = SafetyFilter(self.safety_settings, self.robot.effort_limits,
                                       self.robot.position_limits[cmd_index], cmd_index, n,
                                       min_inertia, self._model_period())
            v_max, a_max = default_limits(self.robot.linear, self.robot.effort_limits,
                                          min_inertia)
            self.actuator = Actuator(self.safety, StatePlausibility(
                self.safety_settings, self.robot.position_limits, self.robot.continuous,
                v_max, a_max, names=self.robot.joint_names))
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
            deadline = 1.0 / s.plan_rate if s.plan_mode == "timer" else None
            if self._in_process():
                self.mpc = PlanProcess(s.robot, self._model_period(), self.robot.joint_names,
                                       lambda: self._planner_settings, *args,
                                       continuous=self.robot.continuous, layout=layout,
                                       plan_timeout=s.plan_timeout, nice=s.plan_nice,
                                       deadline=deadline,
                                       log=self._log_planning, on_lost=self._on_plan_lost)
            else:
                self.mpc = MPCController(self._make_planner, *args,
                                         continuous=self.robot.continuous, robot=layout,
                                         control_period=self._model_period(),
                                         deadline=deadline)
            self.mpc.effort_scale = self.safety_settings.effort_scale
            if isinstance(self.mpc, MPCController):      # built with the unscaled limits
                self.mpc.rebuild_planners()
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
        if self.settings.plan_mode == "timer":
            if isinstance(self.mpc, PlanProcess):
                self.mpc.start()            # ready in the background; no plan: safe hold
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
        if isinstance(self.mpc, PlanProcess):
            self.mpc.stop()                 # also ends a replan the thread waits for
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
        if isinstance(self.mpc, PlanProcess):
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
        if self.active:
            self.active = False
            self._stop_control_thread()
            self._stop_planning()
            self._release()

    def destroy_node(self) -> None:
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
        if isinstance(self.mpc, PlanProcess):
            self.mpc.reset_planners()
        elif self.mpc is not None:
            for p in self.mpc.planners.values():
                p.reset(self.mpc.horizon)
        self._states_since_plan = 0

    # ================================================================== models, planners
    def _make_planner(self, pid: str, nx: int, nu: int, u_min, u_max, dt: float):
        kind, settings = self._planner_settings[pid]
        return registry.lookup("planner", kind)(settings, nx, nu, u_min, u_max, dt)

    def _in_process(self) -> bool:
        """Replans solved by a planning process (else: in this node)."""
        return self.settings.planning == "process" and self.settings.plan_mode == "timer"

    def _mpc_guard(self):
        """The lock around the in-node MPCController (the process proxy needs none: a
        replan waiting for the process must not block parameter callbacks)."""
        return contextlib.nullcontext() if isinstance(self.mpc, PlanProcess) \
            else self._mpc_lock

    def _use_model(self, source: str, version: int | None = None,
                   checksum: str | None = None) -> int:
        """Load, verify and use a model ('mujoco' or an artifact); returns its version.
        With a planning process, the process loads it (or, inactive, it is verified here)."""
        # The one-step check predicts from the newest accepted state (None: home keyframe).
        state = self.actuator.latest[0] if self.actuator is not None else None
        if isinstance(self.mpc, PlanProcess):
            return self.mpc.load_model(source, version, checksum, state=state)
        model, v = load_model(source, robot=self.settings.robot,
                              control_period=self._model_period(),
                              joint_names=self.robot.joint_names,
                              expect=self.mpc.spec,
                              checksum=checksum, version=version, state=state)
        with self._mpc_guard():
            self.mpc.set_model(model, v)        # one reference swapped
        return v

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
            self.counters["model_rejects"] += 1
            self.get_logger().error(f"model announcement rejected, keeping model "
                                    f"v{self.mpc.model_version if self.mpc else 0}: {e}")
            return
        self.counters["model_loads"] += 1
        self.get_logger().info(f"using {info.kind} model v{info.version}")

    # ================================================================== inputs
    def _on_state(self, msg: JointState) -> None:
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
                    self._replan()
                self._states_since_plan += 1
        if self.settings.control_mode == "on_state":
            self._control_tick()            # a rejected state is answered by the hold

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
        """Replan at plan_rate until deactivated (its own thread)."""
        period = 1.0 / self.settings.plan_rate
        next_t = time.monotonic()
        while not self._plan_stop.is_set():
            if self.active and self.actuator.latest[0] is not None and self.fault is None:
                try:
                    self._replan()
                except Exception as e:   # the loop must survive anything a model does
                    self.counters["replan_failures"] += 1
                    self.get_logger().error(f"replan raised {e!r}", throttle_duration_sec=1.0)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:                       # overran: start the next plan now
                next_t = time.monotonic()
                delay = 0.0
            self._plan_stop.wait(delay)

    def _lookahead(self) -> float:
        """Latency compensation [s]: the median of the last 10 plan latencies (from the
        state's arrival to its policy taking over; timer mode)."""
        if (not self.settings.latency_compensation or self.settings.plan_mode != "timer"
                or not self._plan_latency):
            return 0.0
        return float(np.median(self._plan_latency))

    def _replan(self) -> None:
        x, t, x_wall = self.actuator.latest
        if x is None or self.mpc is None or not self.mpc.ready:
            return
        try:
            with self._mpc_guard():
                policy = self.mpc.replan(x, t, self._lookahead())
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
        if self.settings.plan_mode == "timer" and \
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

    def _on_control_timer(self, info: TimerInfo) -> None:
        """The control timer: note how late this call started against its schedule."""
        late = self.get_clock().now().nanoseconds - info.expected_call_time.nanoseconds
        if self.active:
            self._late.append(late * 1e-9)
        self._control_tick()

    # ------------------------------------------------------------ control thread
    def _choose_control_clock(self) -> str:
        """What runs the control step: 'on_state', 'thread' or 'executor' (+ why).

        A control thread sleeps on the monotonic clock; with use_sim_time the control
        period is simulated time, which only the executor timer follows (it waits for
        /clock), so sim time keeps the executor timer."""
        s = self.settings
        if s.control_mode != "timer":
            return "on_state"
        if s.control_loop == "executor":
            return "executor"
        if self.get_parameter("use_sim_time").value:
            self.get_logger().info("use_sim_time: the control step runs on the executor "
                                   "timer (it follows /clock), not on a control thread")
            return "executor (use_sim_time)"
        return "thread"

    def _start_control_thread(self) -> None:
        if self._control_clock != "thread" or self._control_thread is not None:
            return
        if self.settings.gil_switch_interval > 0:   # process-wide: restored on stop
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self.settings.gil_switch_interval,
                                      self._saved_switch_interval))
        self._control_stop.clear()
        self._control_thread = threading.Thread(target=self._control_loop,
                                                name="mbrl_control", daemon=True)
        self._control_thread.start()

    def _stop_control_thread(self) -> None:
        self._control_stop.set()
        thread, self._control_thread = self._control_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None

    # The last stretch before a deadline (at most a tenth of the period) is waited by
    # yielding, not sleeping: a sleep wakes up to ~0.1 ms late (timer slack, wake-up).
    _SPIN_S = 0.0003

    def _control_loop(self) -> None:
        """The control thread: a control step at every deadline k / control_rate (monotonic
        clock), as long as the node is active. When a step overruns the next deadline,
        that step runs at once (late) and any further deadlines passed are skipped, never
        made up in a burst (as rcl timers do); control_overruns counts the deadlines a step
        overran."""
        self._control_sched = self._raise_priority()
        _set_thread_name(b"mbrl_control")
        period = 1.0 / self.settings.control_rate
        spin = min(self._SPIN_S, 0.1 * period)
        stop = self._control_stop
        deadline = time.monotonic() + period
        while not stop.is_set():
            wait = deadline - time.monotonic() - spin
            if wait > 0 and stop.wait(wait):
                break
            while time.monotonic() < deadline:
                os.sched_yield()                   # releases the GIL
            if stop.is_set():
                break
            start = time.monotonic()
            if self.active:
                self._late.append(start - deadline)
            try:
                self._control_tick()
            except Exception as e:       # the loop must outlive a failing publish
                self.get_logger().error(f"control step raised {e!r}",
                                        throttle_duration_sec=1.0)
            deadline += period
            behind = time.monotonic() - deadline
            if behind > 0:                          # next deadline passed: skip the rest
                missed = int(behind // period)
                deadline += missed * period
                self.counters["control_overruns"] += missed + 1

    def _raise_priority(self) -> str:
        """Ask for SCHED_FIFO for the calling thread (Linux applies it per thread);
        without the permission, stay at normal priority and say so."""
        prio = self.settings.control_priority
        if prio <= 0 or not hasattr(os, "SCHED_FIFO"):
            return "SCHED_OTHER"
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        except OSError as e:
            return f"SCHED_OTHER (SCHED_FIFO {prio} refused: {e.strerror})"
        return f"SCHED_FIFO {prio}"

    def _control_tick(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if self._last_cmd_wall is not None:
            period = now - self._last_cmd_wall
            self._periods.append(period)
            if self.settings.control_mode == "timer" and \
                    period > 1.5 / self.settings.control_rate:
                self.counters["deadline_misses"] += 1
        self._last_cmd_wall = now
        step = self.actuator.step(now, self._step_dt())
        if step.latched:
            self.get_logger().error(f"{self.actuator.fault}: safe hold until ~/clear_error")
        self._send(step.command)

    def _step_dt(self) -> float:
        """Time the rate limit may spread a change over: the robot time between the last
        two states (on_state; capped at one control period) or the control period."""
        nominal = 1.0 / self.settings.control_rate
        state_dt = self.actuator.state_dt
        if self.settings.control_mode == "on_state" and state_dt > 0:
            return min(state_dt, nominal)
        return nominal

    def _watchdog(self) -> None:
        """Stale state: in on_state mode nothing else would command the robot."""
        now = time.monotonic()
        if not self.active or self.actuator.latest[0] is None:
            return
        if self.actuator.stale(now):
            self.counters["stale"] += 1
            self.get_logger().warning(f"no joint state for more than "
                                      f"{self.safety_settings.state_timeout:g} s: safe hold",
                                      throttle_duration_sec=2.0)
            if self.settings.control_mode == "on_state":   # timer mode holds in its tick
                # One control period's change at most, like every other command: two
                # consecutive commands never differ by more than max_effort_rate/control_rate.
                self._send(self.actuator.step(now, min(self._watchdog_period,
                                                       1.0 / self.settings.control_rate)).command)

    def _send(self, u: np.ndarray) -> None:
        """Publish a command (the actuator made it finite and safe)."""
        self.counters["commands"] += 1
        self.cmd_pub.publish(command_msg(u))

    @property
    def fault(self) -> str | None:
        """The latched error, or None."""
        return self.actuator.fault if self.actuator is not None else None

    def _release(self) -> None:
        """Stop commanding cleanly: ramp to zero effort within the rate limit (at most
        0.2 s) and end on an explicit zero, because a forward command controller keeps
        applying the last command it received."""
        if not hasattr(self, "cmd_pub"):
            return
        dt = 1.0 / self.settings.control_rate
        for _ in range(int(0.2 * self.settings.control_rate)):
            if not np.any(self.safety.last):
                break
            self._send(self.actuator.release_step(dt))
            time.sleep(dt)
        self._send(np.zeros_like(self.safety.last))
        self.safety.reset()

    def _srv_clear(self, request, response):
        previous = self.actuator.clear_fault()      # plans afresh from the current state
        response.success = True
        response.message = f"cleared: {previous}" if previous else "no error latched"
        return response

    # ================================================================== parameters
    def _check_settings(self, s: ControllerSettings) -> None:
        if s.active_planner not in s.planner_plugins:
            raise ValueError(f"unknown planner {s.active_planner!r}; valid: "
                             f"{', '.join(s.planner_plugins)}")
        if s.fallback_planner and s.fallback_planner not in s.planner_plugins:
            raise ValueError(f"unknown fallback planner {s.fallback_planner!r}; valid: "
                             f"{', '.join(s.planner_plugins)}")
        if not np.all(np.isfinite(s.target_joint_positions)):
            raise ValueError("target_joint_positions must be finite")
        if s.target_joint_positions and self.mpc is not None:
            n = self.robot.n_joints
            if len(s.target_joint_positions) != n:
                raise ValueError(f"target_joint_positions needs {n} values "
                                 f"({list(self.robot.joint_names)})")

    def _on_settings(self, s: ControllerSettings) -> None:
        old = self.settings
        self.settings = s
        self._worker_failures.window = s.worker_failure_window
        if self.mpc is None:
            return
        if s.active_planner != old.active_planner:
            self.mpc.select(s.active_planner)
        self.mpc.fallback = s.fallback_planner
        self.mpc.uncertainty_threshold = s.uncertainty_threshold
        if s.target_joint_positions != old.target_joint_positions and s.target_joint_positions:
            self.mpc.set_target(np.asarray(s.target_joint_positions))

    def _on_planner_settings(self, pid: str, new) -> None:
        kind, _ = self._planner_settings[pid]
        self._planner_settings[pid] = (kind, new)
        if self.mpc is not None:
            with self._mpc_guard():       # planners rebuilt with the new settings
                self.mpc.rebuild_planners()

    def _on_safety(self, s: SafetySettings) -> None:
        old, self.safety_settings = self.safety_settings, s
        if self.mpc is not None:
            self.safety.settings = s            # the plausibility fields are static
            if s.effort_scale != old.effort_scale:   # planners plan within the new limits
                with self._mpc_guard():
                    self.mpc.effort_scale = s.effort_scale
                    self.mpc.rebuild_planners()

    def _on_cost(self, s: CostSettings) -> None:
        self.cost_settings = s
        if self.mpc is not None:
            self.mpc.set_cost_settings(s)

    # ================================================================== outputs
    def _publish_plan(self, t0: float) -> None:
        nominal = self.mpc.nominal_states()
        if nominal is None:
            return
        xs, us = nominal
        n = self.robot.n_joints
        dt = self.mpc.spec.dt
        traj = JointTrajectory()
        traj.header.stamp = self.get_clock().now().to_msg()
        traj.joint_names = list(self.robot.joint_names)
        for k in range(len(us)):
            tk = (k + 1) * dt
            pt = JointTrajectoryPoint(positions=xs[k + 1, :n].tolist(),
                                      velocities=xs[k + 1, n:].tolist(),
                                      effort=us[k].tolist())
            pt.time_from_start = Duration(sec=int(tk), nanosec=int((tk % 1) * 1e9))
            traj.points.append(pt)
        self.plan_pub.publish(traj)
        if self.robot.has_ee and self.path_pub.get_subscription_count() > 0:
            marker = Marker(type=Marker.LINE_STRIP, action=Marker.ADD, ns="planned_path", id=0)
            marker.header.frame_id = "world"
            marker.scale.x = 0.005
            marker.color.r, marker.color.g, marker.color.a = 0.1, 0.8, 1.0
            for x in xs:
                p = self.robot.ee_position(x[:n])
                marker.points.append(Point(x=float(p[0]), y=float(p[1]), z=float(p[2])))
            self.path_pub.publish(MarkerArray(markers=[marker]))

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        process = self.mpc if isinstance(self.mpc, PlanProcess) else None
        now = time.monotonic()
        if process is not None:
            failures = process.counters["failures"]
            self._worker_failures.add(now, failures - self._worker_failures_seen)
            self._worker_failures_seen = failures
        # What happened since the last report: holds by reason, commands sent.
        act = self.actuator
        holds, commands = dict(act.holds), self.counters["commands"]
        seen_holds, seen_commands = self._reported
        self._reported = (holds, commands)
        s = self.settings
        level, message = controller_health(
            active=self.active, fault=act.fault,
            model_ready=self.mpc is not None and self.mpc.spec is not None,
            exploring=self.mpc is not None and self.mpc.explorer() is not None,
            has_target=self.mpc is not None and self.mpc.target_q is not None,
            holds={k: n - seen_holds.get(k, 0) for k, n in holds.items()},
            steps=commands - seen_commands,
            replan_failures_in_row=self._replan_failures_in_row,
            last_replan_error=self._last_replan_error,
            worker_failures=self._worker_failures.count(now),
            replan_failure_limit=s.replan_failure_limit,
            worker_failure_limit=s.worker_failure_limit,
            worker_failure_window=s.worker_failure_window)
        st = DiagnosticStatus(name="mbrl_ros/controller", level=bytes([level]),
                              message=message)
        periods = np.asarray(self._periods) * 1e3
        dev = np.abs(periods - 1e3 / self.settings.control_rate)
        late = np.asarray(self._late) * 1e3
        # list(deque) copies under the GIL: the planning thread appends concurrently.
        solves = np.asarray(list(self._solve_times)) * 1e3
        latency = list(self._plan_latency)
        vals = dict(self.counters)
        vals.update(act.counters)           # bad_states, holds, nonfinite_blocked
        plausibility = act.plausibility.counters
        vals.update({
            "implausible_states": plausibility["implausible"],
            "reanchors": plausibility["reanchors"],
            "replan_failures_in_row": self._replan_failures_in_row,
            "plan_process_failures_recent": self._worker_failures.count(now)})
        vals.update({
            "planning": "sync" if self.settings.plan_mode == "sync"
            else self.settings.planning,
            "plan_process_pid": (process.pid or 0) if process else 0,
            "plan_process_starts": process.counters["starts"] if process else 0,
            "plan_process_failures": process.counters["failures"] if process else 0,
            # what runs the control step; the control thread's scheduling policy
            "control_loop": self._control_clock,
            "control_sched": self._control_sched if self._control_clock == "thread" else "",
            "gil_switch_interval_ms": f"{sys.getswitchinterval() * 1e3:g}"})
        vals.update({
            "active_planner": self.mpc.active if self.mpc else "",
            "model_version": self.mpc.model_version if self.mpc else 0,
            "solve_ms_median": f"{np.median(solves):.3f}" if solves.size else "",
            "solve_ms_p99": f"{np.percentile(solves, 99):.3f}" if solves.size else "",
            # latency compensation: plan latency (state arrival -> policy in use) and the
            # model steps the last plan was started ahead of its state
            "plan_latency_ms_median": f"{np.median(latency) * 1e3:.3f}" if latency else "",
            "lookahead_steps": self._lookahead_steps,
            "period_ms_median": f"{np.median(periods):.3f}" if periods.size else "",
            "period_ms_p99": f"{np.percentile(periods, 99):.3f}" if periods.size else "",
            # timer mode: |period - 1/control_rate| and step start - its deadline
            "period_dev_ms_median": f"{np.median(dev):.3f}" if dev.size else "",
            "period_dev_ms_p99": f"{np.percentile(dev, 99):.3f}" if dev.size else "",
            "timer_late_ms_median": f"{np.median(late):.3f}" if late.size else "",
            "timer_late_ms_p99": f"{np.percentile(late, 99):.3f}" if late.size else "",
            "fault": self.fault or ""})
        if self.mpc is not None and self.mpc.stats:
            vals["uncertainty"] = f"{self.mpc.stats.get('uncertainty', 0.0):.4g}"
            vals["fallback"] = str(self.mpc.stats.get("fallback", False))
            vals["exploring"] = str(self.mpc.stats.get("exploring", False))
            vals["planned_model_version"] = self.mpc.stats.get("model_version", "")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr.status = [st]
        self.diag_pub.publish(arr)


def _set_thread_name(name: bytes) -> None:
    """Name the calling OS thread (top -H, ps -L, /proc/<pid>/task/*/comm)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name[:15], 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


# rclpy passes TimerInfo to a timer callback whose parameter is annotated with the class
# itself; this module's annotations are strings (from __future__ import annotations).
Controller._on_control_timer.__annotations__["info"] = TimerInfo


def main(args=None) -> None:
    # One executor thread for the control path; planning and model loading have their own.
    run_node(Controller, args, threads=1)


if __name__ == "__main__":
    main()
