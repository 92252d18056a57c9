"""MuJoCo simulation behind the topics a real arm driver uses.

Publishes ``joint_states`` (sensor_msgs/JointState) and, with ``publish_clock``,
``/clock``; takes effort commands on ``<controller_name>/commands``
(std_msgs/Float64MultiArray ordered as ``command_joints``, the ros2_controllers forward
command convention). Services: ``~/reset`` (std_srvs/Trigger) starts a new episode from
the initial state; ``~/set_state`` (topic, sensor_msgs/JointState) starts one from a
given state. Each episode start is announced on ``~/episode`` (std_msgs/UInt32).
``~/pause`` and ``~/resume`` (std_srvs/Trigger) stop and restart the stepping: a client in
another process (the GPS trainer, :mod:`mbrl_ros.ros.gps_trainer`) runs lockstep episodes
of an exact length with them and ``pause_after`` (see :meth:`SimNode.resume`).
Topic names are relative, so a namespace (``__ns:=/arm_a``) moves the simulated robot:
``/arm_a/joint_states``. ``/clock`` is absolute, as ROS time sources expect; a launch
with a namespace remaps it per robot (:mod:`mbrl_ros.bringup`).

Stepping modes:
- real time (``realtime_factor`` > 0): a physics thread advances one control period per
  tick at ``publish_rate * realtime_factor`` ticks per wall second, holding the latest
  command (zero after ``command_timeout`` without one, as a driver's watchdog does);
- as fast as possible (``realtime_factor`` = 0): the same without sleeping;
- ``lockstep``: exactly one control period per received command, then publish. This is
  deterministic for a seed and as fast as the controller, for tests and data collection.

Bad commands (wrong length, NaN/inf) are rejected, over-limit ones clamped; both with a
throttled warning and counters on ``/diagnostics``. The simulation never applies NaN.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, UInt32
from std_srvs.srv import Trigger

from mbrl_ros.core.settings import setting
from mbrl_ros.ros.conversions import (JointStateReader, MessageError, clock_msg,
                                      command_values, diagnostic_name, joint_state_msg,
                                      time_msg)
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings
from mbrl_ros.sim.env import CommandError, MujocoSim, Randomization

# s without an answer after which a lockstep simulator re-publishes its first state even to
# a controller that looked connected (a first answer comes within a control period or a
# plan; a controller slower than this on its first state would be answered twice)
LOCKSTEP_SILENCE = 3.0


@dataclass(frozen=True)
class SimSettings:
    model: str = setting("arm2", "shipped model name (arm2, arm7, cartpole) or an MJCF file path")
    joints: tuple[str, ...] = setting((), "joints published in /joint_states, in order "
                                          "(empty: all hinge/slide joints)")
    command_joints: tuple[str, ...] = setting((), "joints the effort command drives, in order "
                                                  "(empty: all actuated joints)")
    controller_name: str = setting("effort_controller", "forward command controller name: "
                                   "commands are read from <controller_name>/commands")
    publish_rate: float = setting(100.0, "control rate: joint states per simulated second "
                                  "(control period = 1/publish_rate)", unit="Hz",
                                  low=1.0, high=5000.0)
    timestep: float = setting(0.0, "physics timestep (0: the MJCF's, reduced if needed to "
                              "divide the control period); the control period must be a "
                              "multiple of it", unit="s", low=0.0, high=0.1)
    realtime_factor: float = setting(1.0, "simulated seconds per wall second (0: as fast "
                                     "as possible); ignored in lockstep", low=0.0, high=100.0)
    lockstep: bool = setting(False, "advance exactly one control period per received command")
    publish_clock: bool = setting(True, "publish /clock and stamp joint states with "
                                  "simulated time (consumers set use_sim_time)")
    command_timeout: float = setting(0.5, "apply zero effort when no command arrived for "
                                     "this long (real-time modes; 0 disables)", unit="s",
                                     low=0.0, high=60.0)
    initial_positions: tuple[float, ...] = setting((), "initial joint positions (empty: the "
                                                   "MJCF 'home' keyframe)", unit="rad|m",
                                                   dynamic=True)
    initial_velocities: tuple[float, ...] = setting((), "initial joint velocities (empty: "
                                                    "home keyframe)", unit="rad/s|m/s",
                                                    dynamic=True)
    initial_noise: float = setting(0.0, "std of Gaussian noise added to the initial state "
                                   "at each reset", unit="rad|m", low=0.0, high=10.0,
                                   dynamic=True)
    seed: int = setting(0, "random seed (initial noise, domain randomisation)", low=0)
    randomize_mass: float = setting(0.0, "relative spread of body masses, resampled per "
                                    "episode", low=0.0, high=0.9)
    randomize_damping: float = setting(0.0, "relative spread of joint damping", low=0.0,
                                       high=0.9)
    randomize_friction: float = setting(0.0, "max added joint friction loss", unit="N·m",
                                        low=0.0, high=100.0)
    diagnostics_rate: float = setting(1.0, "rate of /diagnostics status", unit="Hz",
                                      low=0.0, high=100.0)
    start_paused: bool = setting(False, "start paused: publish and step nothing until "
                                 "~/resume (a client that runs episodes itself)")
    pause_after: int = setting(0, "lockstep: pause by itself this many steps after a "
                               "~/resume (0: never); ~/resume is refused until the answer to "
                               "the last state arrived: no command lands on the next run",
                               low=0, high=10**9,
                               dynamic=True)


class SimNode(Node):
    """ROS adapter around :class:`mbrl_ros.sim.env.MujocoSim`."""

    def __init__(self, **kwargs):
        super().__init__("sim", **kwargs)
        self.settings = s = declare_settings(self, SimSettings, on_change=self._on_settings,
                                             validate=self._check_settings)
        self.sim = MujocoSim(
            s.model, joints=s.joints or None, command_joints=s.command_joints or None,
            control_period=1.0 / s.publish_rate, timestep=s.timestep or None, seed=s.seed,
            initial_positions=s.initial_positions or None,
            initial_velocities=s.initial_velocities or None, initial_noise=s.initial_noise,
            randomization=Randomization(s.randomize_mass, s.randomize_damping,
                                        s.randomize_friction))
        self._lock = threading.Lock()          # guards self.sim and the held command
        self._command = np.zeros(self.sim.n_commands)
        self._command_time = -np.inf           # wall time of the last accepted command
        self.counters = {"steps": 0, "commands": 0, "rejected_length": 0,
                         "rejected_nonfinite": 0, "clamped": 0, "command_timeouts": 0,
                         "overruns": 0, "resets": 0, "ignored_paused": 0, "errors": 0}
        self._paused = bool(s.start_paused)
        self._run_steps = 0                    # steps since the last resume
        self._owed = 0                         # answers owed to states published before
                                               # an automatic pause (lockstep)
        self._bootstrapping = False
        self._last_publish_connected = False
        self._last_publish_time = 0.0       # monotonic, of the last state until a command
        self._set_state_reader = JointStateReader(self.sim.joint_names)

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.state_pub = self.create_publisher(JointState, "joint_states", reliable)
        self.clock_pub = (self.create_publisher(Clock, "/clock", reliable)
                          if s.publish_clock else None)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.episode_pub = self.create_publisher(UInt32, "~/episode", latched)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        cmd_topic = f"{s.controller_name}/commands"
        group = MutuallyExclusiveCallbackGroup()
        self.command_sub = self.create_subscription(Float64MultiArray, cmd_topic, self._on_command,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
                                 callback_group=group)
        self.create_subscription(JointState, "~/set_state", self._on_set_state, 10,
                                 callback_group=group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=group)
        self.create_service(Trigger, "~/pause", self._on_pause, callback_group=group)
        self.create_service(Trigger, "~/resume", self._on_resume, callback_group=group)
        if s.diagnostics_rate > 0:
            self.create_timer(1.0 / s.diagnostics_rate, self._publish_diagnostics)

        self._stop = threading.Event()
        self._thread = None
        self._announce_episode()
        if not self._paused:
            self.publish_state()
        if s.lockstep:
            # A controller that starts after us still needs a first state to answer.
            self._bootstrapping = True
            self.create_timer(1.0, self._republish_if_idle, callback_group=group)
        else:
            self._thread = threading.Thread(target=self._run, name="physics", daemon=True)
            self._thread.start()
        self.get_logger().info(
            f"simulating {self.sim.model_path.name}: joints {list(self.sim.joint_names)}, "
            f"commands on {self.command_sub.topic_name} for {list(self.sim.command_names)}, "
            f"{s.publish_rate:g} Hz, "
            + ("lockstep" if s.lockstep else f"realtime_factor {s.realtime_factor:g}"))

    # ----------------------------------------------------------------- commands and state
    def _on_command(self, msg: Float64MultiArray) -> None:
        values = command_values(msg)
        try:
            effort, clamped = self.sim.sanitize_command(values)
        except CommandError as e:
            key = "rejected_nonfinite" if len(values) == self.sim.n_commands else "rejected_length"
            self.counters[key] += 1
            self.get_logger().warning(f"command rejected: {e}", throttle_duration_sec=1.0)
            return
        if clamped:
            self.counters["clamped"] += 1
            self.get_logger().warning(
                f"command {np.array2string(values, precision=3)} over the effort limits "
                f"{np.array2string(self.sim.effort_limits, precision=3)}: clamped",
                throttle_duration_sec=1.0)
        if self._paused:
            self.counters["ignored_paused"] += 1
            self._owed = max(0, self._owed - 1)
            return
        self.counters["commands"] += 1
        if self.settings.lockstep:
            with self._lock:
                self.sim.step(effort)
                self.counters["steps"] += 1
                self._run_steps += 1
                limit = self.settings.pause_after
                if limit and self._run_steps >= limit:
                    # the state published below is still answered: that answer is owed
                    self._paused, self._owed = True, 1
                    self._command = np.zeros(self.sim.n_commands)
            self._bootstrapping = False
            self.publish_state()
        else:
            with self._lock:
                self._command = effort
                self._command_time = time.monotonic()

    def _run(self) -> None:
        """Physics thread for the real-time and as-fast-as-possible modes."""
        s = self.settings
        period = (self.sim.control_period / s.realtime_factor) if s.realtime_factor > 0 else 0.0
        next_t = time.monotonic() + period
        while not self._stop.is_set() and rclpy.ok(context=self.context):
            try:
                self._tick(s)
            except Exception as e:   # the physics loop must outlive any single bad tick
                self.counters["errors"] += 1
                self.get_logger().error(f"physics tick failed: {e!r}",
                                        throttle_duration_sec=5.0)
            if period > 0:
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                    next_t += period
                else:
                    self.counters["overruns"] += 1
                    # Fell behind: resynchronise (simulated time falls behind the wall
                    # clock for a moment) instead of catching up in a burst -- back-to-back
                    # ticks publish the next state before the controller's answer to the
                    # last one arrived, and that answer then acts a period late (seen: an
                    # iLQR move at 20 Hz thrown off on a busy machine). A physical arm's
                    # time does not burst either.
                    next_t = time.monotonic() + period

    def _tick(self, s: SimSettings) -> None:
        now = time.monotonic()
        with self._lock:
            effort = self._command
            if s.command_timeout > 0 and now - self._command_time > s.command_timeout:
                if np.any(effort):
                    self.counters["command_timeouts"] += 1
                    self.get_logger().warning(f"no command for {s.command_timeout:g} s: "
                                              "applying zero effort",
                                              throttle_duration_sec=5.0)
                effort = self._command = np.zeros(self.sim.n_commands)
            self.sim.step(effort)
            self.counters["steps"] += 1
        self.publish_state()

    # ----------------------------------------------------------------- public API
    def sim_time(self) -> float:
        """Simulated time [s] since start."""
        return self.sim.time

    def command_subscription_count(self) -> int:
        return self.command_sub.get_publisher_count()

    def pause(self) -> None:
        """Ignore commands until :meth:`resume`: physics holds still in lockstep, and in
        real time the held command is zeroed."""
        with self._lock:
            self._paused = True
            self._command = np.zeros(self.sim.n_commands)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._run_steps = 0
        self.publish_state()

    @property
    def paused(self) -> bool:
        return self._paused

    def _on_pause(self, request, response):
        self.pause()
        response.success = True
        response.message = (f"paused at {self.sim.time:.6f} s, episode {self.sim.episode}, "
                            f"{self.counters['steps']} steps")
        return response

    def _on_resume(self, request, response):
        """Resume; refused (retry) while the answer to the state published at an automatic
        pause (``pause_after``) has not arrived: it would step the new run."""
        if self.settings.lockstep and self._paused and self._owed:
            response.success = False
            response.message = "the answer to the last state has not arrived yet: retry"
            return response
        self.resume()
        response.success = True
        response.message = f"resumed at {self.sim.time:.6f} s, episode {self.sim.episode}"
        return response

    def reset_episode(self, positions=None, velocities=None, publish: bool = True) -> None:
        """Start a new episode from the initial state (or the one given) and announce it.

        In lockstep every published state is answered by one command, so a caller that
        resets while paused passes ``publish=False`` and lets :meth:`resume` publish the
        start state once (two publications would start two command chains); a paused
        lockstep simulation never publishes here (``~/reset`` and ``~/set_state`` while
        paused: the following ``~/resume`` publishes the start state).
        """
        if self._paused and self.settings.lockstep:
            publish = False
        with self._lock:
            self.sim.reset(positions=positions, velocities=velocities)
            self._command = np.zeros(self.sim.n_commands)
            self.counters["resets"] += 1
            self._bootstrapping = True
        self._announce_episode()
        if publish:
            self.publish_state()

    def _controller_connected(self) -> bool:
        """A node that publishes our commands also subscribes to our states (counting the
        two topics apart, a fitter listening to the states and a controller whose state
        subscription is not discovered yet looked connected: the first state was lost and
        a lockstep bring-up under load never started)."""
        commanders = {(i.node_namespace, i.node_name) for i in
                      self.get_publishers_info_by_topic(self.command_sub.topic_name)}
        listeners = {(i.node_namespace, i.node_name) for i in
                     self.get_subscriptions_info_by_topic(self.state_pub.topic_name)}
        return bool(commanders & listeners)

    def publish_state(self) -> None:
        with self._lock:
            q, qd, tau = self.sim.positions(), self.sim.velocities(), self.sim.efforts()
            t_sim = self.sim.time
        if self.clock_pub is not None:
            stamp = time_msg(t_sim)
            self.clock_pub.publish(clock_msg(t_sim))
        else:
            stamp = self.get_clock().now().to_msg()
        if getattr(self, "_bootstrapping", True):   # graph queries: only until the first command
            self._last_publish_connected = self._controller_connected()
            self._last_publish_time = time.monotonic()
        self.state_pub.publish(joint_state_msg(self.sim.joint_names, q, qd, tau, stamp))

    def _republish_if_idle(self) -> None:
        # A re-published state that a controller also got the first time is answered twice
        # and starts a second lockstep chain. So re-publish only before the episode's first
        # command, and only if no controller was connected when the state last went out --
        # or if one was but nothing answered it for LOCKSTEP_SILENCE s: the state reached a
        # controller not yet active, or before its side of the match (seen in CI: a
        # connected controller, activated 0.2 s after the state went out, never answered
        # and the bring-up stood for 150 s).
        if not self._bootstrapping or self._paused:
            return
        silent = time.monotonic() - self._last_publish_time
        if not self._last_publish_connected or silent > LOCKSTEP_SILENCE:
            self.publish_state()   # same stamp: dataset conversion drops the duplicate

    # ----------------------------------------------------------------- episodes
    def _announce_episode(self) -> None:
        self.episode_pub.publish(UInt32(data=int(self.sim.episode)))

    def _on_reset(self, request, response):
        self.reset_episode()
        response.success = True
        response.message = f"episode {self.sim.episode} started"
        return response

    def _on_set_state(self, msg: JointState) -> None:
        try:
            q, qd = self._set_state_reader.read(msg)
        except MessageError as e:
            self.get_logger().error(f"~/set_state ignored: {e}")
            return
        self.reset_episode(positions=q, velocities=qd)

    def _check_settings(self, s: SimSettings) -> None:
        n, names = self.sim.n_joints, list(self.sim.joint_names)
        for key in ("initial_positions", "initial_velocities"):
            v = getattr(s, key)
            if v and len(v) != n:
                raise ValueError(f"{key} needs {n} values (for {names}), got {len(v)}")

    def _on_settings(self, s: SimSettings) -> None:
        with self._lock:
            self.sim.set_initial_state(s.initial_positions or None,
                                       s.initial_velocities or None, s.initial_noise)
        self.settings = s

    # ----------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        st = DiagnosticStatus(name=diagnostic_name(self), hardware_id=self.sim.model_path.name)
        bad = self.counters["rejected_length"] + self.counters["rejected_nonfinite"]
        st.level = DiagnosticStatus.WARN if bad or self.counters["overruns"] else DiagnosticStatus.OK
        st.message = "running" if not bad else f"{bad} command(s) rejected"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in self.counters.items()]
        st.values.append(KeyValue(key="sim_time", value=f"{self.sim.time:.6f}"))
        st.values.append(KeyValue(key="episode", value=str(self.sim.episode)))
        arr.status = [st]
        self.diag_pub.publish(arr)

    def destroy_node(self) -> None:
        if hasattr(self, "_stop"):      # construction may have failed half way
            self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=2.0)
        super().destroy_node()


def main(args=None) -> None:
    # One executor thread: the physics loop has its own, and rclpy's multi-threaded
    # executor's overhead per callback would bound lockstep to a few hundred Hz
    # (BENCHMARKS.md, "Issue 2", sim node).
    run_node(SimNode, args, threads=1)


if __name__ == "__main__":
    main()
