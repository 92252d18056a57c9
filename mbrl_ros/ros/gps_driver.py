"""Guided policy search through the ROS nodes: a :class:`~mbrl_ros.core.algorithms.sampler.
Sampler` whose samples are run by the simulator node and the controller node.

For each sample of a condition the driver (in one process, composed like
:mod:`mbrl_ros.ros.demo` with :class:`~mbrl_ros.ros.compose.InProcessSystem`, the
simulator in lockstep):

1. draws the sample's exploration noise from the GPS generator
   (:func:`~mbrl_ros.core.algorithms.sampler.noise_for_sample`), publishes the condition's
   linear-Gaussian controller with it as an ``lg_controller`` artifact and points the
   controller node's ``lg_controller.artifact`` parameter at that version, with
   ``active_planner: lg_controller`` and the condition's target (``ros2 param set`` style:
   ``set_parameters`` on the node);
2. starts the episode at the condition's start state: the simulator is paused (its
   lockstep chain stops), reset to the start (``SimNode.reset_episode``, what ``~/set_state``
   does; the topic itself would publish the start state at once, which a paused lockstep
   chain cannot take) and the controller forgets its plan (``reset_episode``), then the
   simulator resumes and publishes the start state;
3. runs T steps in lockstep -- the controller answers every joint state with the command
   of the ``lg_controller`` planner -- and pauses the simulator after the T-th step; the
   episode ends when the controller's answer to the last state arrived too (the paused
   simulator ignores it), so no command of one sample lands on the next (a short drain
   did not suffice at load 10: a late answer stepped the next sample once);
4. reads the sample back from the ``joint_states`` and ``<controller>/commands`` messages
   a recorder node received (states [q, qd] in the robot's joint order, commands as sent).

With ``bag_dir`` the data logger node records every episode too (each sample is one episode
of the bag, between the simulator's episode markers), and ``gps_episodes.json`` says which
episode is which sample, so every sample can be replayed.

A sample that left the valid region (``env.check``) is discarded after the fact and its
unused noise given back, so the generator ends where the in-process sampler leaves it.
Deterministic rollouts of the global policy (``MDGPS.evaluate``, right after each S-step)
swap that policy into the running controller: it is published as a ``gps_policy``
artifact, ``gps_policy.artifact`` points at it and ``active_planner: gps_policy``; the
controller binds the condition's target to it.

:class:`RemoteSampler` does the same with the nodes as separate processes (``mbrl-ros
bringup gps``, ``gps.launch.py``; the ``gps_trainer`` node, :mod:`mbrl_ros.ros.gps_trainer`),
through ROS interfaces only: the controller's ``set_parameters`` service (as ``ros2 param
set``), the simulator's ``~/set_state`` topic, ``~/resume`` service and ``pause_after``
parameter (it pauses itself after the T-th step and refuses a resume until the answer to
its last state arrived), and the data logger's ``~/mark_episode`` service (one bag episode
per sample). With ``reset: move`` (a real arm has no ``set_state``) the start of a sample
is reached by the controller itself: its ``move_planner`` (iLQR on the known model) drives
the arm to the condition's start until it settles within a tolerance, then the sample's
controller takes over from the settled state.

The controller is configured so its safety layers pass exploratory commands unchanged (rate
limit 1e7 N·m/s, no joint-limit guard, states confirmed at once after a reset, wide
plausibility bounds); the commands it sent are what the sample records in any case.
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbrl_ros.bringup import gps_controller_params
from mbrl_ros.core.algorithms.sampler import (SampleBatch, SamplerError, consume_noise,
                                              first_invalid, noise_for_sample)
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.policies.lg_artifact import publish_lg_controller
from mbrl_ros.ros.compose import InProcessSystem
from mbrl_ros.ros.conversions import JointStateReader, command_values

__all__ = ["NodeSampler", "RemoteSampler"]


class _Recorder:
    """Keeps the joint states and commands of the current sample (on the driver's node,
    or on ``node``)."""

    def __init__(self, system: InProcessSystem | None, joint_names, command_topic: str,
                 node=None, state_topic: str = "joint_states"):
        if node is None:
            from rclpy.node import Node

            node = Node("gps_driver", context=system.context)
            system.executor.add_node(node)
            system.nodes.append(node)
        self.node = node
        self.reader = JointStateReader(joint_names)
        self.states: list[np.ndarray] = []
        self.commands: list[np.ndarray] = []
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointState, state_topic, self._on_state, qos)
        self.node.create_subscription(Float64MultiArray, command_topic, self._on_command, qos)

    def _on_state(self, msg: JointState) -> None:
        q, qd = self.reader.read(msg)
        self.states.append(np.concatenate([q, qd]))

    def _on_command(self, msg: Float64MultiArray) -> None:
        self.commands.append(np.asarray(command_values(msg), dtype=np.float64).copy())

    def clear(self) -> None:
        self.states.clear()
        self.commands.clear()


class _NodeSamplerBase(ABC):
    """The sample loop both node samplers share: exploration noise from the GPS generator,
    each sample's controller (or the global policy) published as an artifact and set on the
    controller node, invalid samples discarded with their unused noise given back, and the
    index of recorded episodes. Subclasses run the episode (:meth:`_episode`) and set the
    controller's parameters (:meth:`_set`)."""

    def _setup(self, env, targets, store_dir, max_discarded: int, step_timeout: float) -> None:
        self.env = env
        self.targets = np.asarray(targets, dtype=np.float64)
        self.store = Path(store_dir)
        self.max_discarded = int(max_discarded)
        self.step_timeout = float(step_timeout)
        self.u_min = np.asarray(env.u_min, dtype=np.float64)
        self.u_max = np.asarray(env.u_max, dtype=np.float64)
        self.dt = float(env.dt)
        self.label = "train"
        self._stats = {"seconds": 0.0, "samples": 0}
        self.episodes: list[dict[str, Any]] = []
        self._recording = False

    @property
    def seconds(self) -> float:
        """Wall seconds spent running episodes."""
        return self._stats["seconds"]

    @property
    def samples(self) -> int:
        """Episodes run."""
        return self._stats["samples"]

    def with_conditions(self, env, targets) -> "_OtherConditions":
        """The same nodes sampling other conditions (held-out evaluation): an object with
        ``sample`` that runs this sampler with ``env`` and ``targets`` in place of its own
        (the episode index marks those episodes ``"set": "heldout"``)."""
        return _OtherConditions(self, env, targets)

    # ------------------------------------------------------------------ parameters
    @abstractmethod
    def _set(self, **params) -> None:
        """Set the controller node's parameters (``a__b`` for ``a.b``)."""

    @abstractmethod
    def _episode(self, m: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Run one episode of condition m: (X (T+1, nx) states, U (T, nu) commands)."""

    @abstractmethod
    def close(self) -> None:
        """Release the nodes; write the episode index when recording."""

    def _use_lg(self, controller: LinearGaussianPolicy, noise, m: int) -> None:
        info = publish_lg_controller(controller, self.store, "gps_samples", self.env.spec,
                                     noise)
        self._artifact = info.uri
        self._set(lg_controller__artifact=info.uri, lg_controller__noise=noise is not None,
                  target_joint_positions=[float(v) for v in self.targets[m]],
                  active_planner="lg_controller")

    def _use_policy(self, policy, m: int) -> None:
        """Swap the global policy into the running controller (gps_policy planner)."""
        from mbrl_ros.core.policies.neural import publish_policy

        task = getattr(policy, "task", None)
        if task is not None and not np.array_equal(task, self.targets[m]):
            raise SamplerError("gps driver: the policy's task is not condition "
                               f"{m}'s target")
        unbound = policy if task is None else dataclasses.replace(policy, task=None)
        info = publish_policy(unbound, self.store, "gps_policy", self.env.spec)
        self.policy_uri = self._artifact = info.uri
        self._set(gps_policy__artifact=info.uri,
                  target_joint_positions=[float(v) for v in self.targets[m]],
                  active_planner="gps_policy")

    # ------------------------------------------------------------------ Sampler
    def sample(self, condition: int, controller, n: int, horizon: int,
               rng: np.random.Generator, noisy: bool = True) -> SampleBatch:
        m, T, nu = int(condition), int(horizon), len(self.u_min)
        X = np.empty((n, T + 1, self.env.nx))
        U = np.empty((n, T, nu))
        out = SampleBatch(X, U)
        check = getattr(self.env, "check", None) if noisy else None
        i = bad = 0
        while i < n:
            before = None
            if noisy:
                eps, before = noise_for_sample(rng, T, nu)
                self._use_lg(controller, eps, m)
            elif isinstance(controller, LinearGaussianPolicy):
                self._use_lg(controller, None, m)
            else:
                self._use_policy(controller, m)
            Xi, Ui = self._episode(m, T)
            cut = first_invalid(check, Xi)
            if self._recording:
                self.episodes.append({
                    "episode": self._episode_id, "condition": m, "noisy": bool(noisy),
                    "artifact": self._artifact, "steps": T,
                    "discarded": None if cut is None else f"step {cut[0]}: {cut[1]}",
                    **({} if self.label == "train" else {"set": self.label})})
            if cut is not None:
                t, why = cut
                consume_noise(rng, before, t, nu)
                why = f"condition {m}, step {t}: {why}"
                out.lost += t * self.dt
                out.discarded += 1
                out.reasons.append(why)
                bad += 1
                if bad > self.max_discarded:
                    raise SamplerError(f"{bad} invalid samples for condition {m} in one "
                                       f"iteration (last: {why}); the controller leaves the "
                                       "valid region -- lower the exploration or the KL step")
                continue
            X[i], U[i] = Xi, Ui
            i += 1
        return out

    def _write_index(self, bag_dir: Path, bags) -> None:
        import json
        index = {"bags": [str(p) for p in bags], "episodes": self.episodes,
                 "other_episodes": getattr(self, "other_episodes", [])}
        bag_dir.mkdir(parents=True, exist_ok=True)
        (bag_dir / "gps_episodes.json").write_text(json.dumps(index, indent=2))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OtherConditions:
    """:meth:`_NodeSamplerBase.with_conditions`: a sampler's nodes with other conditions."""

    def __init__(self, base: _NodeSamplerBase, env, targets, label: str = "heldout"):
        self.base, self.env, self.label = base, env, label
        self.targets = np.asarray(targets, dtype=np.float64)

    def sample(self, *args, **kwargs) -> SampleBatch:
        b = self.base
        saved = b.env, b.targets, b.label
        b.env, b.targets, b.label = self.env, self.targets, self.label
        try:
            return b.sample(*args, **kwargs)
        finally:
            b.env, b.targets, b.label = saved


class NodeSampler(_NodeSamplerBase):
    """GPS samples through the simulator and controller nodes (see the module docstring).

    Args:
        env: the GPS environment of the run (:class:`~mbrl_ros.core.algorithms.sim_env.
            MujocoEnv`): its conditions (start states), ``check``, ``spec`` and limits;
            it is not stepped.
        targets: (M, n_joints) target joint positions of the conditions (the controller's
            target while sampling, the task a target-conditioned policy is bound to).
        store_dir: where the per-sample lg_controller and the gps_policy artifacts go.
        max_discarded: invalid samples redrawn per condition and call before giving up.
        step_timeout: wall seconds without a simulated step before a sample is declared
            stalled (RuntimeError).
        bag_dir: also run the data logger node, recording every episode (joint states,
            commands, the simulator's episode markers) to a bag under this directory;
            ``close`` writes ``bag_dir/gps_episodes.json``: which episode is which sample
            (condition, executed artifact, kept or discarded) and the bag paths.

    Use as a context manager (it owns the nodes); ``seconds`` holds the wall time spent
    sampling and ``samples`` the number of episodes run. :meth:`with_conditions` samples
    other conditions (held-out) on the same nodes.
    """

    def __init__(self, env, targets, store_dir: str | Path, max_discarded: int = 20,
                 step_timeout: float = 30.0, domain_id: int | None = None,
                 bag_dir: str | Path | None = None):
        from mbrl_ros.ros.controller import Controller
        from mbrl_ros.ros.sim_node import SimNode

        self._setup(env, targets, store_dir, max_discarded, step_timeout)
        self.system = InProcessSystem(domain_id=domain_id)
        try:
            self.sim = self.system.add(SimNode, {
                "model": str(env.robot), "publish_rate": 1.0 / self.dt, "lockstep": True,
                "publish_clock": True, "initial_noise": 0.0, "diagnostics_rate": 0.0})
            self.sim.pause()
            self.controller = self.system.add(
                Controller, gps_controller_params(str(env.robot), self.dt, self.targets[0]))
            self.recorder = _Recorder(self.system, self.sim.sim.joint_names,
                                      self.sim.command_sub.topic_name)
            self.bag_dir = None if bag_dir is None else Path(bag_dir)
            self.logger = None
            if self.bag_dir is not None:
                from mbrl_ros.ros.data_logger import DataLogger
                self.logger = self.system.add(DataLogger, {
                    "output_dir": str(self.bag_dir), "bag_name": "gps",
                    "diagnostics_rate": 0.0})
                self._recording = True
            if not self.controller.trigger_configure() or self.controller.mpc is None:
                raise RuntimeError("gps driver: the controller did not configure")
            self.controller.trigger_activate()
            lg = self.logger
            ok = self.system.spin_until(
                lambda: self.sim.state_pub.get_subscription_count() >= (2 if lg is None else 3)
                and self.sim.command_subscription_count() >= 1
                and (lg is None or (not lg.pending_topics() and lg.markers_written >= 1)),
                timeout=20.0)
            if not ok:
                raise RuntimeError("gps driver: the simulator, controller and driver nodes "
                                   "did not connect within 20 s")
        except BaseException:
            self.system.close()
            raise

    def _set(self, **params) -> None:
        res = self.controller.set_parameters([Parameter(k.replace("__", "."), value=v)
                                              for k, v in params.items()])
        bad = [r.reason for r in res if not r.successful]
        if bad:
            raise SamplerError(f"gps driver: the controller refused parameters: {bad}")

    # ------------------------------------------------------------------ one episode
    def _episode(self, m: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        sim, rec, system = self.sim, self.recorder, self.system
        t_wall = time.perf_counter()
        sim.pause()
        # The controller forgets its last state first: idle for longer than its
        # state_timeout (the S-step on a busy machine), its watchdog would go on publishing
        # safe holds, and one still queued when the simulator resumes would step the
        # sample (seen: the first policy evaluation after an S-step differed at load 27).
        # Then the messages in flight land while the simulator is paused.
        self.controller.reset_episode()
        n_cmd = [len(rec.commands), time.monotonic()]

        def quiet() -> bool:
            if len(rec.commands) != n_cmd[0]:
                n_cmd[:] = [len(rec.commands), time.monotonic()]
            return time.monotonic() - n_cmd[1] > 0.05
        system.spin_until(quiet, timeout=5.0)
        q0, v0 = self.env.start_state(m)
        sim.reset_episode(positions=q0, velocities=v0, publish=False)
        self._episode_id = int(sim.sim.episode)
        rec.clear()
        start = sim.counters["steps"]
        progress = [time.monotonic(), start]
        ctrl = self.controller
        failures0 = ctrl.counters["replan_failures"]
        holds0 = dict(ctrl.actuator.holds)
        holds_in_episode: list[dict] = []

        def tick() -> None:
            n = sim.counters["steps"]
            if n - start >= horizon:
                sim.pause()            # the controller's answer to x_T is not applied
                if not holds_in_episode:   # the T commands that were applied
                    holds_in_episode.append({k: v - holds0.get(k, 0) for k, v in
                                             ctrl.actuator.holds.items()
                                             if v != holds0.get(k, 0)})
            if n != progress[1]:
                progress[:] = [time.monotonic(), n]

        # Done when the controller's answer to x_T came too (the paused simulator ignores
        # it): every state answered, nothing of this episode still in flight to land on
        # the next one.
        def done() -> bool:
            return ((sim.counters["steps"] - start >= horizon and len(rec.states) >= horizon + 1
                     and len(rec.commands) >= horizon + 1)
                    or time.monotonic() - progress[0] > self.step_timeout)
        sim.resume()                   # publishes the start state once: the chain starts
        system.spin_until(done, timeout=float("inf"), tick=tick)
        sim.pause()
        self._stats["seconds"] += time.perf_counter() - t_wall
        self._stats["samples"] += 1
        steps = sim.counters["steps"] - start
        if steps != horizon or len(rec.states) != horizon + 1 or \
                len(rec.commands) != horizon + 1:
            raise RuntimeError(f"gps driver: sample stalled or mixed ({steps}/{horizon} steps, "
                               f"{len(rec.states)} states, {len(rec.commands)} commands "
                               f"received; controller holds: {self.controller.actuator.holds})")
        # A sample whose commands did not all come from the planner (a failed replan, a
        # safe hold) is not a sample of the controller: refuse it rather than learn from it.
        failed = ctrl.counters["replan_failures"] - failures0
        if failed or (holds_in_episode and holds_in_episode[0]):
            raise RuntimeError(
                f"gps driver: the controller did not execute the sample ({failed} failed "
                f"replans, last: {getattr(ctrl, '_last_replan_error', '')!r}; safe holds: "
                f"{holds_in_episode[0] if holds_in_episode else {}})")
        X = np.array(rec.states[:horizon + 1])
        U = np.array(rec.commands[:horizon])
        if not np.array_equal(X[0], np.concatenate([q0, v0])):
            raise RuntimeError("gps driver: the first state received is not the start state")
        return X, U

    def close(self) -> None:
        """Stop the nodes (the data logger closes its bag) and, with a bag, write the
        episode index."""
        self.system.close()
        if getattr(self, "logger", None) is not None:
            self._write_index(self.bag_dir, self.logger.last_bag_paths)


class RemoteSampler(_NodeSamplerBase):
    """GPS samples through simulator, controller and data logger nodes running in other
    processes (see the module docstring), driven from ``node`` over ROS interfaces only.

    Args:
        env, targets, store_dir, max_discarded, step_timeout: as :class:`NodeSampler`
            (``store_dir`` must be readable by the controller's process: same machine or
            shared file system, as the model store).
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
        if not sim:
            raise ValueError("the remote sampler needs a lockstep simulator node (sim) for "
                             "exact-length samples; a real-time arm is not supported yet")
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
        self.recorder = _Recorder(None, env.sim.joint_names, command_topic, node=node,
                                  state_topic=state_topic)
        self._ctrl_params = node.create_client(SetParameters, f"{controller}/set_parameters")
        self._sim_params = node.create_client(SetParameters, f"{sim}/set_parameters")
        self._resume = node.create_client(Trigger, f"{sim}/resume")
        self._mark = node.create_client(Trigger, f"{logger}/mark_episode") if logger else None
        self._set_state = node.create_publisher(JointState, f"{sim}/set_state",
                                                QoSProfile(depth=10,
                                                           reliability=ReliabilityPolicy.RELIABLE))
        self._sim_episode = None
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

    def _check_executed(self, X: np.ndarray, U: np.ndarray) -> None:
        """The commands recorded are the sample's controller's (its mean plus the sample's
        noise, clipped, at the recorded states): not a safe hold or the answer of a planner
        that failed to load the sample -- the controller node's counters are not visible
        from here, its commands are. Same arithmetic as the lg_controller planner."""
        if self._expect is None:
            return
        c, eps = self._expect
        lo, hi = np.asarray(self.env.sim.position_limits, dtype=np.float64).T
        n = len(lo)
        for t in range(len(U)):
            u = c.K[t] @ X[t] + c.k_gps[t]
            if eps is not None:
                u = u + c._chol[t] @ eps[t]
            u = np.minimum(np.maximum(u, self.u_min), self.u_max)
            # beyond a joint limit the controller's guard removes effort pushing further
            # (joint_limit_margin 0 still guards the limit itself): not compared there
            free = ~((X[t, :n] > hi) | (X[t, :n] < lo))
            if len(free) != len(u):          # not one command per joint: compare all
                free = np.ones(len(u), dtype=bool)
            if not np.allclose(U[t][free], u[free], rtol=1e-9, atol=1e-9):
                raise RuntimeError(
                    f"gps trainer: the controller did not execute the sample: its command at "
                    f"step {t} is {np.round(U[t], 6).tolist()}, the sample's controller gives "
                    f"{np.round(u, 6).tolist()} (a failed replan or a safe hold? see the "
                    "controller's log)")

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
            raise RuntimeError(f"gps trainer: sample stalled or mixed ({len(rec.states)} "
                               f"states and {len(rec.commands)} commands received for "
                               f"{steps} steps)")

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
            raise RuntimeError("gps trainer: the first state received is not the start state")
        self._check_executed(X, U)
        return X, U

    def close(self) -> None:
        """Write the episode index (the data logger's bags are under ``bag_dir``)."""
        if self._recording and self.bag_dir is not None:
            # the logger closes its bag (metadata.yaml) when it stops, after this
            bags = sorted(p for p in self.bag_dir.iterdir() if p.is_dir()) \
                if self.bag_dir.is_dir() else []
            self._write_index(self.bag_dir, bags)
