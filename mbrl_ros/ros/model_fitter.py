"""Fits dynamics models from live topics and/or recorded bags and hands them to controllers.

Data: with ``live`` the node keeps the joint states, effort commands and episode starts it
receives (DDS receive times, as the logger does) and turns them into transitions with the
same alignment as ``mbrl-ros dataset``; ``bags`` adds recorded data.

Fitting runs on a worker thread, so the node keeps answering while a model trains: every
``fit_every`` new commands, or on request (``~/fit``, std_srvs/Trigger, which answers with
the result). A new model is validated on held-out episodes and published only if its
rollout error is not worse than ``reject_factor`` times the last good model's on the same
held-out episodes (the last good model is re-scored on the new fit's); otherwise,
or if the fit fails, the last good model stays and the reply says why. A model is never
published if it could not control the robot: fitted on data without excitation (an arm at
rest: no action or no state varies), with a NaN/inf weight, a non-finite one-step
prediction, or (when ``robot`` is an MJCF this machine loads) other joints or command
joints than the robot's (see :func:`mbrl_ros.core.fitting.fit_model`).

Publication: the artifact is written atomically into ``<store_dir>/<artifact_name>/vNNNN``
(see :mod:`mbrl_ros.core.store`; temporary folders a killed fitter left there are removed
at start-up) and announced on ``~/model`` (std_msgs/String holding JSON:
uri, kind, version, checksum, metrics; reliable, transient local, depth 1, so a controller
that starts later still gets the latest). With ``serve_artifact`` the packed artifact is
also published on ``~/artifact`` (std_msgs/UInt8MultiArray, transient local; the JSON
announcement in the layout's first dimension label) for controllers on hosts without a
shared file system.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String, UInt8MultiArray, UInt32
from std_srvs.srv import Trigger

from mbrl_ros.core import registry, store
from mbrl_ros.core.data.alignment import (AlignmentConfig, align, bag_to_dataset,
                                          commands_from_efforts, live_episode_marks)
from mbrl_ros.core.data.bag import BagError
from mbrl_ros.core.fitting import (FitCancelled, FitSettings, accept, fit_model, rescore,
                                  warm_up)
from mbrl_ros.core.models.base import DynamicsModel, FitReport, ModelError, ModelSpec
from mbrl_ros.core.settings import as_dict, setting
from mbrl_ros.core.types import TransitionBatch
from mbrl_ros.ros.conversions import command_values, diagnostic_name, time_to_ns
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class _TooFewTransitions(ModelError):
    """Fewer transitions than min_transitions: the fitter waits for data (not a failure)."""


@dataclass(frozen=True)
class FitterSettings:
    model: str = setting("linear", "model family to fit", choices=registry.names("model"))
    robot: str = setting("", "robot label stored with the model; the MJCF for model 'mujoco'")
    store_dir: str = setting("models", "artifact store root (created)")
    artifact_name: str = setting("", "artifact name under store_dir (empty: the model family)")
    bags: tuple[str, ...] = setting((), "recorded bags (directories or .mcap) to fit on")
    live: bool = setting(True, "also fit on the joint states and commands received live")
    state_topic: str = setting("joint_states", "joint state topic (live data; relative "
                               "names resolve in the node's namespace, as do bag topics)")
    command_topic: str = setting("effort_controller/commands", "effort command topic")
    episode_topic: str = setting("sim/episode", "std_msgs/UInt32 episode starts (live data)")
    action_source: str = setting(
        "commands", "live data: the action of x_k -> x_k+1 is the command received between the "
        "two states ('commands') or the effort state k+1 reports as applied ('state_effort'); "
        "docs/MODELS.md", choices=("commands", "state_effort"))
    joints: tuple[str, ...] = setting((), "state joint order (empty: the first message's)")
    continuous_joints: tuple[str, ...] = setting(
        (), "joints whose position is a wrapping angle (URDF 'continuous'): learned models "
        "see its sin and cos; empty: the robot's MJCF says (robot)")
    fit_on_start: bool = setting(False, "fit once as soon as the node is up (offline replay)")
    # Live learning: the first model after ~2 s of exploration at 100 Hz, refits every
    # ~2 s of new data (a fit runs on its worker thread; new data meanwhile waits).
    fit_every: int = setting(200, "fit after this many new live commands of non-zero "
                             "effort (0: only on request)", low=0, dynamic=True)
    min_transitions: int = setting(200, "do not fit on fewer transitions", low=1,
                                   dynamic=True)
    max_messages: int = setting(500000, "live messages kept per topic (oldest dropped)",
                                low=100)
    val_fraction: float = setting(0.2, "fraction of episodes held out for validation",
                                  low=0.0, high=0.9, dynamic=True)
    horizon: int = setting(20, "validation rollout length", unit="steps", low=1, high=10000,
                           dynamic=True)
    reject_factor: float = setting(2.0, "keep the last good model if the new one's rollout "
                                   "error is worse than this factor times the last good model's error on the "
                                   "same held-out data",
                                   low=1.0, high=1e6, dynamic=True)
    seed: int = setting(0, "random seed of the split and the fit", low=0)
    min_excitation: float = setting(
        1e-6, "do not fit on data in which every action, or every state, varies less than "
        "this (standard deviation in the data's units: N·m or N; rad, m, rad/s, m/s): an "
        "arm at rest identifies no model", low=0.0, high=1e6, dynamic=True)
    warm_up: bool = setting(True, "live: at start-up, fit a throwaway model on synthetic "
                            "data on the fit thread, so the first real fit does not pay for "
                            "one-time initialisation (arm2's first GP fit: 2.9 -> 0.5 s)")
    serve_artifact: bool = setting(False, "also publish packed artifacts on ~/artifact")
    diagnostics_rate: float = setting(1.0, "rate of /diagnostics status", unit="Hz",
                                      low=0.0, high=100.0)


class ModelFitter(Node):
    def __init__(self, **kwargs):
        super().__init__("model_fitter", **kwargs)
        self.settings = s = declare_settings(self, FitterSettings, on_change=self._on_change)
        cls = registry.lookup("model", s.model)
        self.model_settings = declare_settings(self, cls.Settings, prefix=f"{s.model}.")
        self.name = s.artifact_name or s.model
        try:        # also removes what a fitter killed while publishing left behind
            store.open_store(s.store_dir, self.name)
        except (ModelError, OSError) as e:
            raise ValueError(f"store_dir {s.store_dir!r} / artifact_name {self.name!r}: {e}"
                             ) from e
        self._lock = threading.Lock()              # guards the live buffers
        self._states: deque = deque(maxlen=s.max_messages)
        self._efforts: deque = deque(maxlen=s.max_messages)    # of each state, same order
        self._commands: deque = deque(maxlen=s.max_messages)
        self._marks: deque = deque(maxlen=10000)
        self._new_commands = 0
        self._robot_commands: list[str] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit")
        self._running: Future | None = None
        self._stopping = threading.Event()          # set by destroy_node: cancel the fit
        self.last_good: FitReport | None = None
        self.last_model: DynamicsModel | None = None
        self.last_info: store.ArtifactInfo | None = None
        self.spec: ModelSpec | None = None
        self.fits = {"ok": 0, "rejected": 0, "failed": 0}
        self.last_message = "no fit yet"
        self._bag_batch: TransitionBatch | None = None
        # Bags hold fully qualified names: a relative setting names this robot's topic.
        self._align = AlignmentConfig(state_topic=self.resolve_topic_name(s.state_topic),
                                      command_topic=self.resolve_topic_name(s.command_topic),
                                      joint_names=s.joints or None)

        self.announce_pub = self.create_publisher(String, "~/model", LATCHED)
        self.artifact_pub = (self.create_publisher(UInt8MultiArray, "~/artifact", LATCHED)
                             if s.serve_artifact else None)
        data_group = MutuallyExclusiveCallbackGroup()
        if s.live:
            qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(JointState, s.state_topic, self._on_state, qos,
                                     callback_group=data_group)
            self.create_subscription(Float64MultiArray, s.command_topic, self._on_command, qos,
                                     callback_group=data_group)
            if s.episode_topic:
                self.create_subscription(UInt32, s.episode_topic, self._on_episode,
                                         QoSProfile(depth=10, reliability=ReliabilityPolicy
                                                    .RELIABLE, durability=DurabilityPolicy
                                                    .TRANSIENT_LOCAL),
                                         callback_group=data_group)
        # The service waits for the fit it started; a reentrant group keeps the executor's
        # other threads free meanwhile.
        self.create_service(Trigger, "~/fit", self._srv_fit,
                            callback_group=ReentrantCallbackGroup())
        # A cheap check, often: a fit starts soon after fit_every commands came.
        self.create_timer(0.2, self._maybe_fit, callback_group=data_group)
        if s.diagnostics_rate > 0:
            self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(1.0 / s.diagnostics_rate, self._publish_diagnostics,
                              callback_group=data_group)
        if s.bags:
            self._load_bags()   # raises a clear error at start-up if a bag is unusable
        if s.live and s.warm_up and s.model != "mujoco":
            # First in the fit thread's queue: a fit requested meanwhile runs after it.
            self._worker.submit(self._warm_up)
        if s.fit_on_start:
            self.request_fit("start")
        self.get_logger().info(
            f"fitting '{s.model}' models into {s.store_dir}/{self.name} from "
            + " and ".join(x for x in (f"{len(s.bags)} bag(s)" if s.bags else "",
                                       "live topics" if s.live else "") if x))

    # ----------------------------------------------------------------- data
    def _load_bags(self) -> None:
        try:
            batch, report, bag_report = bag_to_dataset(list(self.settings.bags), self._align)
        except BagError as e:
            raise ValueError(str(e)) from e
        for damage in bag_report.damage:
            self.get_logger().warning(f"bag damaged, read up to the damage: {damage}")
        self._bag_batch = batch
        self.get_logger().info(f"{len(batch)} transitions from {len(self.settings.bags)} bag(s)")

    def _on_state(self, msg: JointState, info) -> None:
        with self._lock:
            self._states.append((int(info["received_timestamp"]), time_to_ns(msg.header.stamp),
                                 list(msg.name), list(msg.position), list(msg.velocity)))
            self._efforts.append(list(msg.effort))

    def _on_command(self, msg: Float64MultiArray, info) -> None:
        values = command_values(msg)
        with self._lock:
            self._commands.append((int(info["received_timestamp"]), values))
            # fit_every counts informative commands: zero effort (an idle arm, a
            # controller holding before its first plan) teaches nothing about efforts.
            if np.any(values != 0.0):
                self._new_commands += 1

    def _on_episode(self, msg: UInt32, info) -> None:
        # Kept with the episode number: the latched marker of the running episode may
        # arrive after its first data (see live_episode_marks).
        with self._lock:
            self._marks.append((int(info["received_timestamp"]), int(msg.data)))

    def dataset(self) -> TransitionBatch | None:
        """Everything available now: bag data plus the aligned live data."""
        parts = [self._bag_batch] if self._bag_batch is not None and len(self._bag_batch) else []
        with self._lock:
            states, commands, marks = list(self._states), list(self._commands), list(self._marks)
            efforts = list(self._efforts)
        if states and commands and self.settings.action_source == "state_effort":
            # the commands only tell which joints are commanded (their count)
            commands = commands_from_efforts(states, efforts, self._command_names(
                states[0][2], len(commands[-1][1])))
        if states and commands:
            live, _ = align(states, commands, live_episode_marks(marks), self._align)
            if len(live):
                parts.append(live)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else TransitionBatch.concat(parts)

    def _command_names(self, state_names: list[str], n_cmd: int) -> list[str]:
        """The command joints: the robot's (MJCF), else the first n_cmd state joints."""
        if self._robot_commands is None:
            self._robot_commands = []
            if self.settings.robot:
                try:
                    from mbrl_ros.core.robot import RobotDescription
                    self._robot_commands = list(
                        RobotDescription.load(self.settings.robot).command_names)
                except Exception:       # noqa: BLE001 -- a label, not an MJCF
                    pass
        names = self._robot_commands or list(self.settings.joints or state_names)[:n_cmd]
        return names

    # ----------------------------------------------------------------- fitting
    def _maybe_fit(self) -> None:
        s = self.settings
        if s.fit_every and self._new_commands >= s.fit_every and not self.busy():
            self.request_fit("new data")

    def busy(self) -> bool:
        return self._running is not None and not self._running.done()

    def request_fit(self, reason: str) -> Future | None:
        """Start a fit on the worker thread (None if one is running already)."""
        if self.busy():
            return None
        self._new_commands = 0
        self._running = self._worker.submit(self._fit, reason)
        return self._running

    def _warm_up(self) -> None:
        s = self.settings
        nx, nu = 4, 2
        if s.robot:
            try:
                from mbrl_ros.core.robot import RobotDescription
                robot = RobotDescription.load(s.robot)
                nx, nu = 2 * robot.n_joints, robot.n_commands
            except Exception:           # noqa: BLE001 -- any size warms up the libraries
                pass
        try:
            seconds = warm_up(s.model, as_dict(self.model_settings), nx, nu, seed=s.seed)
        except Exception as e:          # noqa: BLE001 -- a warm-up only saves time
            self.get_logger().warning(f"warm-up fit failed ({e}); the first fit pays for "
                                      "the initialisation")
            return
        self.get_logger().info(f"warmed up the {s.model} fit in {seconds:.2f} s")

    def _fit(self, reason: str) -> tuple[bool, str]:
        s = self.settings
        try:
            batch = self.dataset()
            n = 0 if batch is None else len(batch)
            if n < s.min_transitions:
                raise _TooFewTransitions(f"{n} transitions available, min_transitions is "
                                         f"{s.min_transitions}")
            fs = FitSettings(model=s.model, val_fraction=s.val_fraction, horizon=s.horizon,
                             reject_factor=s.reject_factor, seed=s.seed,
                             min_excitation=s.min_excitation,
                             continuous_joints=tuple(s.continuous_joints))
            model_settings = as_dict(self.model_settings)
            if s.model == "mujoco":      # the known model: the robot's MJCF at the data's rate
                if s.robot:
                    model_settings["mjcf"] = s.robot
                model_settings["control_period"] = float(np.median(batch.dt))
            # Later models must describe the same joints as the first one published.
            result = fit_model(batch, fs, model_settings, robot=s.robot, expect=self.spec,
                               previous=self.last_model, should_stop=self._stopping.is_set)
        except FitCancelled as e:   # the node is shutting down: nothing to keep or say
            self.last_message = str(e)
            return False, str(e)
        except _TooFewTransitions as e:   # waiting for data is not an error
            msg = f"no fit yet ({reason}): {e}; " + self._keeping()
            # (two call sites: rclpy refuses one call site logging at two severities)
            if reason == "requested":
                self.get_logger().warning(msg)
            else:                    # a fit is tried every fit_every commands: throttled
                self.get_logger().info(msg, throttle_duration_sec=10.0)
            self.last_message = msg
            return False, msg
        except Exception as e:      # any failure keeps the last good model and says why
            self.fits["failed"] += 1
            msg = f"fit failed ({reason}): {e}; " + self._keeping()
            self.get_logger().error(msg)
            self.last_message = msg
            return False, msg
        if self._stopping.is_set():     # stopped as the fit ended: judge and publish nothing
            return False, "fit cancelled: the node is shutting down"
        previous = self.last_good
        if self.last_model is not None:
            try:    # compare both models on the same (new) held-out data
                previous = rescore(self.last_model, result, s.horizon)
            except Exception as e:      # noqa: BLE001 -- fall back to the stored report
                self.get_logger().warning(f"could not rescore the last good model on the new "
                                          f"validation data ({e}); comparing with its own")
        if self._stopping.is_set():     # stopped while rescoring: judge and publish nothing
            return False, "fit cancelled: the node is shutting down"
        ok, why = accept(result.report, previous, s.reject_factor)
        if not ok:
            self.fits["rejected"] += 1
            msg = f"new model rejected: {why}"
            self.get_logger().warning(msg)
            self.last_message = msg
            return False, msg
        try:
            info = store.publish(result.model, s.store_dir, self.name, result.report)
        except (OSError, ModelError) as e:      # ModelError: a weight is NaN/inf
            self.fits["failed"] += 1
            msg = f"could not write the model ({e}); " + self._keeping()
            self.get_logger().error(msg)
            self.last_message = msg
            return False, msg
        self.last_good, self.last_info, self.spec = result.report, info, result.model.spec
        self.last_model = result.model
        self.fits["ok"] += 1
        self._announce(info)
        m = result.report.metrics
        msg = (f"published {info.kind} v{info.version} ({result.report.n_train} train / "
               f"{result.report.n_val} val transitions, fit {result.report.fit_seconds:.2f} s, "
               f"one-step RMSE {m['one_step_rmse']:.4g}, {s.horizon}-step RMSE "
               f"{m['rollout_rmse']:.4g}): {info.uri}")
        self.get_logger().info(msg)
        self.last_message = msg
        return True, msg

    def _keeping(self) -> str:
        return (f"keeping v{self.last_info.version}" if self.last_info is not None
                else "no model published yet")

    def _announce(self, info: store.ArtifactInfo) -> None:
        self.announce_pub.publish(String(data=info.to_json()))
        if self.artifact_pub is not None:
            blob = store.pack(info.uri)
            msg = UInt8MultiArray()
            msg.layout.dim = [MultiArrayDimension(label=json.dumps(
                {"name": self.name, **json.loads(info.to_json())}), size=len(blob),
                stride=len(blob))]
            msg.data = blob
            self.artifact_pub.publish(msg)

    def _srv_fit(self, request, response):
        future = self.request_fit("requested")
        if future is None:
            response.success, response.message = False, "a fit is running already; try later"
            return response
        while not future.done():
            time.sleep(0.05)
        response.success, response.message = future.result()
        return response

    def _on_change(self, s: FitterSettings) -> None:
        self.settings = s

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        level = DiagnosticStatus.OK if self.fits["failed"] == 0 else DiagnosticStatus.WARN
        st = DiagnosticStatus(name=diagnostic_name(self), level=level,
                              message=self.last_message[:200])
        with self._lock:
            n_states, n_cmds = len(self._states), len(self._commands)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in self.fits.items()]
        st.values += [KeyValue(key="live states", value=str(n_states)),
                      KeyValue(key="live commands", value=str(n_cmds)),
                      KeyValue(key="fitting", value=str(self.busy())),
                      KeyValue(key="version", value=str(self.last_info.version
                                                         if self.last_info else 0))]
        arr.status = [st]
        self.diag_pub.publish(arr)

    def finish(self, executor) -> None:
        """On SIGINT/SIGTERM, before the executor waits for its callbacks (a ``~/fit``
        call waits for its fit): a running fit stops at its next progress report (an
        epoch, an optimiser step) and publishes nothing, so Ctrl-C does not wait for a
        whole training run."""
        self._stopping.set()

    def destroy_node(self) -> None:
        if hasattr(self, "_stopping"):
            self._stopping.set()
        if hasattr(self, "_worker"):
            self._worker.shutdown(wait=True, cancel_futures=True)
        super().destroy_node()


def main(args=None) -> None:
    run_node(ModelFitter, args, threads=3)


if __name__ == "__main__":
    main()
