"""The controller node's parameters: the schema (:class:`ControllerSettings`, declared as
typed ROS parameters by :func:`mbrl_ros.ros.params.declare_settings`; docs/PARAMETERS.md is
generated from it) and what a change does at run time (:class:`ParameterCallbacks`, part
of :class:`mbrl_ros.ros.controller.Controller`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.control.safety import SafetySettings
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.settings import setting

__all__ = ["ControllerSettings", "ParameterCallbacks"]


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
                             "'on_state': in the background on each new state, at most "
                             "plan_rate; 'sync': every replan_every states before acting "
                             "(deterministic); docs/CONTROLLER.md",
                             choices=("timer", "on_state", "sync"))
    plan_rate: float = setting(50.0, "replanning rate in timer mode (on_state: the most)",
                               unit="Hz", low=0.1, high=2000.0)
    replan_every: int = setting(1, "states between replans in sync mode", low=1, high=10000)
    sync_max_state_age: float = setting(
        0.0, "sync mode: a state that waited longer than this for its callback (queued behind "
        "a slow solve) is acted on with the current plan, not planned from (0: no limit); "
        "docs/CONTROLLER.md", unit="s", low=0.0, high=10.0, dynamic=True)
    planning: str = setting("process", "where timer-mode replans are solved: 'process' (a worker "
                            "process: solves cannot hold the node's GIL) or 'thread' (in the "
                            "node: each solve can delay the control timer)",
                            choices=("process", "thread"))
    latency_compensation: bool = setting(
        True, "timer mode: plan from the state predicted for when the new plan takes over (state "
        "time + median of the last 10 plan latencies), not the measured one; docs/CONTROLLER.md",
        dynamic=True)
    plan_within_rate: bool = setting(
        True, "planners plan their first actions within max_effort_rate's reach of the last "
        "command (false: they plan as if efforts could jump; the rate limit then delays "
        "their plan; docs/CONTROLLER.md)", dynamic=True)
    plan_timeout: float = setting(10.0, "planning process: a replan unanswered for this long "
                                  "means it hangs; it is killed and restarted (the controller "
                                  "holds safely meanwhile)", unit="s", low=0.05, high=3600.0)
    plan_nice: int = setting(0, "planning process: niceness added to it (0: the node's "
                             "priority; > 0 lets busy processes at the default priority "
                             "starve the planner; docs/CONTROLLER.md)",
                             low=0, high=19)
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


class ParameterCallbacks:
    """Validation and run-time effects of the controller's parameters (a part of
    :class:`~mbrl_ros.ros.controller.Controller`: uses its ``settings``, ``mpc``,
    ``robot``, ``safety`` and ``_planner_settings``)."""

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
        if s.plan_within_rate != old.plan_within_rate:
            self.mpc.set_effort_rate(self._planned_rate())
        if s.target_joint_positions != old.target_joint_positions and s.target_joint_positions:
            self.mpc.set_target(np.asarray(s.target_joint_positions))

    def _on_planner_settings(self, pid: str, new) -> None:
        kind, _ = self._planner_settings[pid]
        self._planner_settings[pid] = (kind, new)
        if self.mpc is not None:          # planners rebuilt with the new settings
            self.mpc.rebuild_planners()

    def _on_safety(self, s: SafetySettings) -> None:
        old, self.safety_settings = self.safety_settings, s
        if self.mpc is not None:
            self.safety.settings = s            # the plausibility fields are static
            if s.effort_scale != old.effort_scale:   # planners plan within the new limits
                self.mpc.set_effort_scale(s.effort_scale)
            if s.max_effort_rate != old.max_effort_rate:
                self.mpc.set_effort_rate(self._planned_rate())

    def _on_cost(self, s: CostSettings) -> None:
        self.cost_settings = s
        if self.mpc is not None:
            self.mpc.set_cost_settings(s)
