"""Guided policy search through node processes: :class:`RemoteSampler`, the sampler of the
``gps_trainer`` node (:mod:`mbrl_ros.ros.gps_trainer`; ``mbrl-ros bringup gps``,
``gps.launch.py``), whose samples are run by the simulator, controller and data logger
nodes of the launch.

The sample loop (exploration noise, the sample's controller or the global policy set on
the controller node, invalid samples discarded, the episode index) is
:class:`~mbrl_ros.ros.gps_sampling.NodeSamplerBase`'s, as for the in-process
:class:`~mbrl_ros.ros.gps_driver.NodeSampler`. Here every step goes through ROS interfaces
only: the controller's ``set_parameters`` service (as ``ros2 param set``), the simulator's
``~/set_state`` topic, ``~/resume`` service and ``pause_after`` parameter (it pauses itself
after the T-th step and refuses a resume until the answer to its last state arrived), and
the data logger's ``~/mark_episode`` service (one bag episode per sample; what follows a
sample -- the answer to its last state, an idle controller's holds -- and each move or
wake-up step get bag episodes of their own). The controller's counters are not visible
from here, so the commands recorded are checked against the sample's controller instead.

With ``reset: move`` (a real arm has no ``set_state``) the start of a sample is reached by
the controller itself: its ``move_planner`` (iLQR on the known model) drives the arm to the
condition's start until it settles within a tolerance, then the sample's controller takes
over from the settled state. The lockstep simulator is required either way (exact-length
samples need its ``pause_after`` and ``~/resume``); an arm that runs in real time (a
physical one) is sampled by :class:`~mbrl_ros.ros.gps_realtime.RealtimeSampler`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from mbrl_ros.core.algorithms.sampler import SamplerError, TruncatedSample
from mbrl_ros.core.planners.lg_controller.planner import ExecutedLG
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.ros.gps_sampling import NodeSamplerBase, SampleRecorder

__all__ = ["RemoteSampler"]


class RemoteSampler(NodeSamplerBase):
    """GPS samples through simulator, controller and data logger nodes running in other
    processes (see the module docstring), driven from ``node`` over ROS interfaces only.

    Args:
        env, targets, store_dir, max_discarded, step_timeout: as
            :class:`~mbrl_ros.ros.gps_driver.NodeSampler` (``store_dir`` must be readable
            by the controller's process: same machine or shared file system, as the model
            store).
        node: the caller's rclpy node (the GPS trainer); its context's ``executor`` is spun
            while waiting.
        executor: an executor holding ``node``.
        controller, sim, logger: node names (relative to ``node``'s namespace) of the
            controller, the lockstep simulator (required: exact-length samples need its
            ``pause_after`` and ``~/resume``; ``reset='move'`` does without its
            ``set_state``, as a real arm must) and the data logger (``''``: no recording).
        command_topic, state_topic: the arm's topics (relative).
        reset: ``sim`` (``~/set_state``: exactly the condition's start) or ``move``.
        move_planner, settle_tolerance, settle_velocity, move_chunk, move_steps: the move
            to the start: planner id, position [rad|m] and velocity [rad/s|m/s] tolerances,
            steps between checks, steps at most.
        bag_dir: where ``close`` writes ``gps_episodes.json`` (the data logger's
            ``output_dir``).
        service_timeout: wall seconds for a node to offer and answer a service.
        wake_after: idle wall seconds after which the controller is given a fresh state
            before the next sample (see :meth:`_wake_if_idle`); below its state_timeout.
    """
    needs_simulator = True      # the lockstep simulator's pause_after / resume / set_state

    def __init__(self, env, targets, store_dir: str | Path, node, executor, *,
                 controller: str = "controller", sim: str = "sim", logger: str = "",
                 command_topic: str = "effort_controller/commands",
                 state_topic: str = "joint_states", reset: str = "sim",
                 move_planner: str = "ilqr", settle_tolerance: float = 0.01,
                 settle_velocity: float = 0.05, move_chunk: int = 10, move_steps: int = 2000,
                 bag_dir: str | Path | None = None, max_discarded: int = 20,
                 step_timeout: float = 30.0, service_timeout: float = 30.0,
                 wake_after: float = 10.0):
        from rcl_interfaces.srv import SetParameters
        from std_msgs.msg import UInt32
        from std_srvs.srv import Trigger

        if reset not in ("sim", "move"):
            raise ValueError(f"reset must be 'sim' or 'move', got {reset!r}")
        if self.needs_simulator and not sim:
            raise ValueError("the remote sampler needs a lockstep simulator node (sim) for "
                             "exact-length samples; an arm that runs in real time: "
                             "RealtimeSampler (mbrl_ros.ros.gps_realtime, timing: realtime)")
        self._setup(env, targets, store_dir, max_discarded, step_timeout)
        self.node, self.executor = node, executor
        self.reset_mode = reset
        self.move_planner = move_planner
        self.settle_tolerance = float(settle_tolerance)
        self.settle_velocity = float(settle_velocity)
        self.move_chunk = int(move_chunk)
        self.move_steps = int(move_steps)
        self.service_timeout = float(service_timeout)
        self.bag_dir = None if bag_dir is None else Path(bag_dir)
        self._recording = bool(logger)
        self._names = {"controller": controller, "sim": sim, "logger": logger}
        self.recorder = SampleRecorder(None, env.sim.joint_names, command_topic, node=node,
                                       state_topic=state_topic)
        self._ctrl_params = node.create_client(SetParameters, f"{controller}/set_parameters")
        self._mark = node.create_client(Trigger, f"{logger}/mark_episode") if logger else None
        self._sim_episode = None
        if self.needs_simulator:
            self._sim_params = node.create_client(SetParameters, f"{sim}/set_parameters")
            self._resume = node.create_client(Trigger, f"{sim}/resume")
            self._set_state = node.create_publisher(
                JointState, f"{sim}/set_state",
                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            node.create_subscription(
                UInt32, f"{sim}/episode", self._on_sim_episode,
                QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._pause_after = None
        self._marker = -1
        self._expect = None
        self._last_run: float | None = None     # none yet: the controller never had a state
        # idle wall seconds after which the controller is woken before a sample; well
        # below the state_timeout the GPS launch gives it (60 s)
        self.wake_after = float(wake_after)
        self.other_episodes: list[dict[str, Any]] = []
        self._wait_ready(state_topic, command_topic)

    # ------------------------------------------------------------------ ROS plumbing
    def _on_sim_episode(self, msg) -> None:
        self._sim_episode = int(msg.data)

    def _spin_until(self, done, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise RuntimeError(f"gps trainer: {what} within {timeout:g} s")
            self.executor.spin_once(timeout_sec=0.05)

    def _spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.05, end - time.monotonic())))

    def _call(self, client, request, what: str):
        self._spin_until(client.service_is_ready, self.service_timeout,
                         f"no {client.srv_name} service ({what})")
        future = client.call_async(request)
        self._spin_until(future.done, self.service_timeout,
                         f"no answer from {client.srv_name} ({what})")
        return future.result()

    def _set_remote(self, client, who: str, params: dict) -> None:
        from rcl_interfaces.srv import SetParameters
        req = SetParameters.Request()
        req.parameters = [Parameter(k.replace("__", "."), value=v).to_parameter_msg()
                          for k, v in params.items()]
        res = self._call(client, req, "set parameters")
        bad = [f"{p.name}: {r.reason}" for p, r in zip(req.parameters, res.results)
               if not r.successful]
        if bad:
            raise SamplerError(f"gps trainer: the {who} refused parameters: {bad}")

    def _wait_ready(self, state_topic: str, command_topic: str) -> None:
        """The controller active, the simulator's services up, the data logger subscribed
        to both topics."""
        from lifecycle_msgs.srv import GetState

        node = self.node
        get_state = node.create_client(GetState, f"{self._names['controller']}/get_state")
        end = time.monotonic() + max(60.0, self.service_timeout)
        label = ""
        while label != "active":
            if time.monotonic() > end:
                raise RuntimeError(f"gps trainer: the controller is {label or 'not answering'}"
                                   ", not active")
            label = self._call(get_state, GetState.Request(), "lifecycle state"
                               ).current_state.label
            if label != "active":
                self._spin_for(0.2)
        node.destroy_client(get_state)
        if self.needs_simulator:
            self._spin_until(self._resume.service_is_ready, self.service_timeout,
                             f"no {self._resume.srv_name} service")
            self._spin_until(lambda: self._sim_episode is not None, self.service_timeout,
                             "no episode announcement from the simulator")
        if self._mark is not None:
            logger = self._names["logger"]

            def logging() -> bool:
                subs = [node.get_subscriptions_info_by_topic(node.resolve_topic_name(t))
                        for t in (state_topic, command_topic)]
                return all(any(i.node_name == logger for i in s) for s in subs)
            self._spin_until(logging, self.service_timeout,
                             f"the data logger {logger} did not subscribe to {state_topic} "
                             f"and {command_topic}")
            self._spin_until(self._mark.service_is_ready, self.service_timeout,
                             f"no {self._mark.srv_name} service")
        self._spin_until(lambda: self.recorder.node.count_publishers(
            self.recorder.node.resolve_topic_name(command_topic)) >= 1, self.service_timeout,
            f"nobody publishes {command_topic}")

    def _use_lg(self, controller: LinearGaussianPolicy, noise, m: int) -> None:
        self._expect = (controller, noise)
        super()._use_lg(controller, noise, m)

    def _use_policy(self, policy, m: int) -> None:
        self._expect = None
        super()._use_policy(policy, m)

    def _expected_command(self):
        """The sample controller's command at step t and state x, ``f(t, x) -> (nu,)`` --
        the lg_controller planner's own arithmetic (:class:`ExecutedLG`: its mean plus the
        sample's noise, clipped) -- NaN (not compared) on a joint beyond its position limit,
        where the controller's guard removes effort pushing further (joint_limit_margin 0
        still guards the limit itself). None: no linear-Gaussian sample is set."""
        if self._expect is None:
            return None
        c, eps = self._expect
        run = ExecutedLG(c, eps, self.u_min, self.u_max)
        lo, hi = np.asarray(self.env.sim.position_limits, dtype=np.float64).T
        n = len(lo)

        def expected(t: int, x: np.ndarray) -> np.ndarray:
            u = run.action(x, c.t0 + t * c.dt).copy()
            if len(u) == n:                  # one command per joint
                u[(x[:n] > hi) | (x[:n] < lo)] = np.nan
            return u
        return expected

    def _check_executed(self, X: np.ndarray, U: np.ndarray) -> None:
        """The commands recorded are the sample's controller's (:meth:`_expected_command`):
        not a safe hold or the answer of a planner that failed to load the sample -- the
        controller node's counters are not visible from here, its commands are."""
        expected = self._expected_command()
        if expected is None:
            return
        for t in range(len(U)):
            u = expected(t, X[t])
            free = ~np.isnan(u)
            if not np.allclose(U[t][free], u[free], rtol=1e-9, atol=1e-9):
                raise TruncatedSample(
                    f"gps trainer: the controller did not execute the sample: its command at "
                    f"step {t} is {np.round(U[t], 6).tolist()}, the sample's controller gives "
                    f"{np.round(u, 6).tolist()} (a failed replan or a safe hold? see the "
                    "controller's log)", t)

    def _set(self, **params) -> None:
        if self.reset_mode == "move":
            self._pending = params        # applied once the arm is at the start
        else:
            self._wake_if_idle()          # under the previous parameters
            self._set_remote(self._ctrl_params, "controller", params)

    def _sim_pause_after(self, steps: int) -> None:
        if self._pause_after != steps:
            self._set_remote(self._sim_params, "simulator", {"pause_after": int(steps)})
            self._pause_after = steps

    def _run(self, steps: int, strict: bool = True) -> None:
        """Resume the (paused) lockstep simulator for ``steps`` steps and wait for the
        steps+1 states and commands (the last command answers the final state; the
        simulator, paused again, ignores it). ``strict``: any other command is an error
        (a sample); else more commands are accepted (a move, a wake-up)."""
        from std_srvs.srv import Trigger
        rec = self.recorder
        self._sim_pause_after(steps)
        rec.clear()
        end = time.monotonic() + self.service_timeout
        while not self._call(self._resume, Trigger.Request(), "resume").success:
            if time.monotonic() > end:       # the answer to the last state never came
                raise RuntimeError("gps trainer: the simulator refuses to resume: the answer "
                                   "to its last state did not arrive")
            self.executor.spin_once(timeout_sec=0.01)
        progress = [time.monotonic(), 0]

        def done() -> bool:
            n = len(rec.states)
            if n != progress[1]:
                progress[:] = [time.monotonic(), n]
            return ((n >= steps + 1 and len(rec.commands) >= steps + 1)
                    or time.monotonic() - progress[0] > self.step_timeout)
        while not done():
            self.executor.spin_once(timeout_sec=0.05)
        self._last_run = time.monotonic()
        if len(rec.states) != steps + 1 or len(rec.commands) < steps + 1 or (
                strict and len(rec.commands) != steps + 1):
            raise TruncatedSample(f"gps trainer: sample stalled or mixed ({len(rec.states)} "
                                  f"states and {len(rec.commands)} commands received for "
                                  f"{steps} steps)", min(len(rec.commands), steps))

    def _quiet(self, seconds: float = 0.3) -> None:
        """Spin until no command arrived for ``seconds`` (the controller's holds stopped and
        the ones in flight landed while the simulator is paused)."""
        rec = self.recorder
        last = [len(rec.commands), time.monotonic()]

        def quiet() -> bool:
            if len(rec.commands) != last[0]:
                last[:] = [len(rec.commands), time.monotonic()]
            return time.monotonic() - last[1] > seconds
        self._spin_until(quiet, self.service_timeout, "the controller's commands did not stop")

    def _wake_if_idle(self) -> None:
        """After a long pause (the dynamics fit, C- and S-step) the controller has had no
        state for longer than its state_timeout and its watchdog publishes safe holds;
        a hold still in flight when the simulator resumes would step the sample. So one
        throw-away step first (its own bag episode), under the previous parameters: the
        controller gets a fresh state and stops holding; then its commands die down while
        the simulator is paused."""
        if self._last_run is None or time.monotonic() - self._last_run < self.wake_after:
            return
        marker = self._mark_episode()
        if marker is not None:
            self.other_episodes.append({"episode": marker, "kind": "wake"})
        self._run(1, strict=False)
        self._quiet()

    def _move_to(self, q0: np.ndarray) -> None:
        """Drive the arm to ``q0`` with the move planner until it is settled."""
        self._set_remote(self._ctrl_params, "controller", {
            "target_joint_positions": [float(v) for v in q0],
            "active_planner": self.move_planner})
        n = len(q0)
        steps = 0
        while True:
            self._run(self.move_chunk, strict=False)
            steps += self.move_chunk
            x = self.recorder.states[-1]
            err = float(np.max(np.abs(x[:n] - q0)))
            vel = float(np.max(np.abs(x[n:])))
            if err <= self.settle_tolerance and vel <= self.settle_velocity:
                self._quiet()         # holds of a controller woken by the move died down
                return
            if steps >= self.move_steps:
                raise RuntimeError(f"gps trainer: the move to the start {np.round(q0, 4)} did "
                                   f"not settle within {self.move_steps} steps (position error "
                                   f"{err:.4g}, speed {vel:.4g})")

    def _mark_episode(self) -> int | None:
        """A bag episode starts here (the data logger's ``~/mark_episode``, answered before
        the simulator resumes, so the marker precedes the episode's first state); returns
        the marker's number (None without a logger)."""
        import re

        from std_srvs.srv import Trigger
        if self._mark is None:
            return None
        res = self._call(self._mark, Trigger.Request(), "episode marker")
        if not res.success:
            raise RuntimeError(f"gps trainer: the data logger wrote no episode marker: "
                               f"{res.message}")
        found = re.search(r"marker (\d+)", res.message)
        self._marker = int(found.group(1)) if found else self._marker + 1
        return self._marker

    # ------------------------------------------------------------------ one episode
    def _episode(self, m: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        t_wall = time.perf_counter()
        q0, v0 = self.env.start_state(m)
        if self.reset_mode == "sim":
            before = self._sim_episode
            msg = JointState(name=list(self.env.sim.joint_names),
                             position=[float(v) for v in q0], velocity=[float(v) for v in v0])
            self._set_state.publish(msg)
            self._spin_until(lambda: self._sim_episode != before, self.service_timeout,
                             "the simulator did not start the episode (set_state)")
            self._episode_id = self._sim_episode
        else:
            marker = self._mark_episode()     # the move is an episode of the bag of its own
            if marker is not None:
                self.other_episodes.append({"episode": marker, "kind": "move"})
            self._move_to(q0)
            self._set_remote(self._ctrl_params, "controller", self._pending)
        marker = self._mark_episode()
        if marker is not None:
            self._episode_id = marker
        self._run(horizon)
        # what follows (the answer to x_T, safe holds of a controller idle during the
        # S-step) is not the sample's: a bag episode of its own
        marker = self._mark_episode()
        if marker is not None:
            self.other_episodes.append({"episode": marker, "kind": "idle"})
        self._stats["seconds"] += time.perf_counter() - t_wall
        self._stats["samples"] += 1
        X = np.array(self.recorder.states[:horizon + 1])
        U = np.array(self.recorder.commands[:horizon])
        x0 = np.concatenate([q0, v0])
        if self.reset_mode == "sim" and not np.array_equal(X[0], x0):
            raise TruncatedSample("gps trainer: the first state received is not the start "
                                  "state", horizon)
        self._check_executed(X, U)
        return X, U

    def close(self) -> None:
        """Write the episode index (the data logger's bags are under ``bag_dir``)."""
        if self._recording and self.bag_dir is not None:
            # the logger closes its bag (metadata.yaml) when it stops, after this
            bags = sorted(p for p in self.bag_dir.iterdir() if p.is_dir()) \
                if self.bag_dir.is_dir() else []
            self._write_index(self.bag_dir, bags)
