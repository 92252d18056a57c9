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

The controller is configured so its safety layers pass exploratory commands unchanged (rate
limit 1e7 N·m/s, no joint-limit guard, states confirmed at once after a reset, wide
plausibility bounds); the commands it sent are what the sample records in any case.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbrl_ros.core.algorithms.sampler import (SampleBatch, SamplerError, consume_noise,
                                              first_invalid, noise_for_sample)
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.policies.lg_artifact import publish_lg_controller
from mbrl_ros.ros.compose import InProcessSystem
from mbrl_ros.ros.conversions import JointStateReader, command_values

__all__ = ["NodeSampler", "node_controller_params"]


def node_controller_params(robot: str, dt: float, target) -> dict[str, Any]:
    """Controller node parameters for executing GPS samples in lockstep."""
    return {
        "robot": robot, "model": "mujoco", "planner_plugins": ["lg_controller", "gps_policy"],
        "active_planner": "lg_controller", "control_mode": "on_state", "plan_mode": "sync",
        "replan_every": 1, "control_rate": 1.0 / dt, "diagnostics_rate": 0.0,
        "publish_plan": False, "state_timeout": 60.0,
        "target_joint_positions": [float(v) for v in target],
        "gps_policy.rollout_nominal": False, "gps_policy.reload": False,
        # safety layers that would change exploratory commands: off / wide
        "max_effort_rate": 1e7, "joint_limit_margin": 0.0, "limit_damping": 0.0,
        "state_confirm": 1, "implausible_latch": 0, "state_position_margin": 1e3,
        "state_max_velocity": [1e6], "state_max_acceleration": [1e9],
    }


class _Recorder:
    """The driver's node: keeps the joint states and commands of the current sample."""

    def __init__(self, system: InProcessSystem, joint_names, command_topic: str):
        from rclpy.node import Node

        self.node = Node("gps_driver", context=system.context)
        system.executor.add_node(self.node)
        system.nodes.append(self.node)
        self.reader = JointStateReader(joint_names)
        self.states: list[np.ndarray] = []
        self.commands: list[np.ndarray] = []
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointState, "joint_states", self._on_state, qos)
        self.node.create_subscription(Float64MultiArray, command_topic, self._on_command, qos)

    def _on_state(self, msg: JointState) -> None:
        q, qd = self.reader.read(msg)
        self.states.append(np.concatenate([q, qd]))

    def _on_command(self, msg: Float64MultiArray) -> None:
        self.commands.append(np.asarray(command_values(msg), dtype=np.float64).copy())

    def clear(self) -> None:
        self.states.clear()
        self.commands.clear()


class NodeSampler:
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
    sampling and ``samples`` the number of episodes run.
    """

    def __init__(self, env, targets, store_dir: str | Path, max_discarded: int = 20,
                 step_timeout: float = 30.0, domain_id: int | None = None,
                 bag_dir: str | Path | None = None):
        from mbrl_ros.ros.controller import Controller
        from mbrl_ros.ros.sim_node import SimNode

        self.env = env
        self.targets = np.asarray(targets, dtype=np.float64)
        self.store = Path(store_dir)
        self.max_discarded = int(max_discarded)
        self.step_timeout = float(step_timeout)
        self.u_min = np.asarray(env.u_min, dtype=np.float64)
        self.u_max = np.asarray(env.u_max, dtype=np.float64)
        self.dt = float(env.dt)
        self.seconds = 0.0
        self.samples = 0
        self.system = InProcessSystem(domain_id=domain_id)
        try:
            self.sim = self.system.add(SimNode, {
                "model": str(env.robot), "publish_rate": 1.0 / self.dt, "lockstep": True,
                "publish_clock": True, "initial_noise": 0.0, "diagnostics_rate": 0.0})
            self.sim.pause()
            self.controller = self.system.add(
                Controller, node_controller_params(str(env.robot), self.dt, self.targets[0]))
            self.recorder = _Recorder(self.system, self.sim.sim.joint_names,
                                      self.sim.command_sub.topic_name)
            self.bag_dir = None if bag_dir is None else Path(bag_dir)
            self.logger = None
            self.episodes: list[dict[str, Any]] = []
            if self.bag_dir is not None:
                from mbrl_ros.ros.data_logger import DataLogger
                self.logger = self.system.add(DataLogger, {
                    "output_dir": str(self.bag_dir), "bag_name": "gps",
                    "diagnostics_rate": 0.0})
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

    # ------------------------------------------------------------------ parameters
    def _set(self, **params) -> None:
        res = self.controller.set_parameters([Parameter(k.replace("__", "."), value=v)
                                              for k, v in params.items()])
        bad = [r.reason for r in res if not r.successful]
        if bad:
            raise SamplerError(f"gps driver: the controller refused parameters: {bad}")

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

    # ------------------------------------------------------------------ one episode
    def _episode(self, m: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        sim, rec, system = self.sim, self.recorder, self.system
        t_wall = time.perf_counter()
        sim.pause()
        system.spin_until(lambda: False, timeout=0.05)     # in-flight messages land
        q0, v0 = self.env.start_state(m)
        self.controller.reset_episode()
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
        self.seconds += time.perf_counter() - t_wall
        self.samples += 1
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
            if self.logger is not None:
                self.episodes.append({
                    "episode": self._episode_id, "condition": m, "noisy": bool(noisy),
                    "artifact": self._artifact, "steps": T,
                    "discarded": None if cut is None else f"step {cut[0]}: {cut[1]}"})
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

    def close(self) -> None:
        """Stop the nodes (the data logger closes its bag) and, with a bag, write the
        episode index."""
        self.system.close()
        if getattr(self, "logger", None) is not None:
            import json
            index = {"bags": [str(p) for p in self.logger.last_bag_paths],
                     "episodes": self.episodes}
            (self.bag_dir / "gps_episodes.json").write_text(json.dumps(index, indent=2))

    def __enter__(self) -> "NodeSampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
