"""The sample loop both GPS node samplers share: a :class:`~mbrl_ros.core.algorithms.
sampler.Sampler` whose samples are run by the simulator node and the controller node --
:class:`~mbrl_ros.ros.gps_driver.NodeSampler` with the nodes composed in one process,
:class:`~mbrl_ros.ros.gps_remote.RemoteSampler` with the nodes as separate processes. The
loop lives here once; each sampler's module says how it runs one episode.

For each sample of a condition, :meth:`NodeSamplerBase.sample`:

1. draws the sample's exploration noise from the GPS generator
   (:func:`~mbrl_ros.core.algorithms.sampler.noise_for_sample`), publishes the condition's
   linear-Gaussian controller with it as an ``lg_controller`` artifact and points the
   controller node's ``lg_controller.artifact`` parameter at that version, with
   ``active_planner: lg_controller`` and the condition's target (``ros2 param set`` style:
   the sampler's ``_set``);
2. runs one episode from the condition's start state (the sampler's ``_episode``): T steps
   of the lockstep simulator, the controller answering every joint state with the command
   of the ``lg_controller`` planner, no command of one sample landing on the next;
3. reads the sample back from the ``joint_states`` and ``<controller>/commands`` messages
   a recorder node received (:class:`SampleRecorder`: states [q, qd] in the robot's joint
   order, commands as sent).

A sample that left the valid region (``env.check``) is discarded after the fact and its
unused noise given back, so the generator ends where the in-process sampler leaves it. A
sample whose episode did not run whole (``_episode`` raises
:class:`~mbrl_ros.core.algorithms.sampler.TruncatedSample`: the simulator stalled, a state
or command went missing, the controller held instead of executing it) is dropped with a
warning, counted with the discarded ones (reason ``truncated: ...``) and redrawn.
Deterministic rollouts of the global policy (``MDGPS.evaluate``, right after each S-step)
swap that policy into the running controller: it is published as a ``gps_policy``
artifact, ``gps_policy.artifact`` points at it and ``active_planner: gps_policy``; the
controller binds the condition's target to it.

When the data logger node records, every sample is one episode of its bag and
``gps_episodes.json`` (beside the bags) says which episode is which sample (condition,
executed artifact, kept or discarded, training or held-out set), so every sample can be
replayed.

The controller is configured (:func:`~mbrl_ros.bringup.gps_controller_params`) so its
safety layers pass exploratory commands unchanged (rate limit 1e7 N·m/s, no joint-limit
guard, states confirmed at once after a reset, wide plausibility bounds); the commands it
sent are what the sample records in any case.
"""
from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbrl_ros.core.algorithms.sampler import (SampleBatch, SamplerError, TruncatedSample,
                                              consume_noise, first_invalid, noise_for_sample)
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.policies.lg_artifact import publish_lg_controller
from mbrl_ros.ros.compose import InProcessSystem
from mbrl_ros.ros.conversions import JointStateReader, command_values

__all__ = ["NodeSamplerBase", "SampleRecorder"]


class SampleRecorder:
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
        self.stamps: list[float] = []        # of the states [s]
        # per command, the index of the last state received before it (-1: none): the
        # state it answers when the controller answers every state (real-time samples)
        self.answers: list[int] = []
        self._last_stamp: tuple[int, int] | None = None     # of the last state recorded
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointState, state_topic, self._on_state, qos)
        self.node.create_subscription(Float64MultiArray, command_topic, self._on_command, qos)

    def _on_state(self, msg: JointState) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        # The simulator republishes its paused state on ~/resume: when the state it
        # published at the pause arrives only after clear() (a busy machine), the run
        # would start with it twice (a CI run: "14 states ... for 12 steps").
        if self.states and stamp == self._last_stamp:
            return
        q, qd = self.reader.read(msg)
        self.states.append(np.concatenate([q, qd]))
        self.stamps.append(stamp[0] + 1e-9 * stamp[1])
        self._last_stamp = stamp

    def _on_command(self, msg: Float64MultiArray) -> None:
        self.commands.append(np.asarray(command_values(msg), dtype=np.float64).copy())
        self.answers.append(len(self.states) - 1)

    def clear(self) -> None:
        self.states.clear()
        self.commands.clear()
        self.stamps.clear()
        self.answers.clear()


class NodeSamplerBase(ABC):
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
            try:
                Xi, Ui = self._episode(m, T)
                cut = first_invalid(check, Xi)
            except TruncatedSample as e:
                # not a sample of the controller: dropped with a warning and redrawn
                cut = (min(e.steps, T), f"truncated: {e}")
                warnings.warn(f"gps: sample of condition {m} dropped: {e}", RuntimeWarning,
                              stacklevel=2)
            if self._recording:
                self.episodes.append({
                    "episode": self._episode_id, "condition": m, "noisy": bool(noisy),
                    "artifact": self._artifact, "steps": T,
                    "discarded": None if cut is None else f"step {cut[0]}: {cut[1]}",
                    **({} if self.label == "train" else {"set": self.label})})
            if cut is not None:
                t, why = cut
                if before is not None:     # a noiseless rollout (an evaluation) draws none
                    consume_noise(rng, before, t, nu)
                why = f"condition {m}, step {t}: {why}"
                out.lost += t * self.dt
                out.discarded += 1
                out.reasons.append(why)
                bad += 1
                if bad > self.max_discarded:
                    hint = ("the episodes do not run whole -- see the simulator's and the "
                            "controller's logs" if "truncated: " in why else
                            "the controller leaves the valid region -- lower the exploration "
                            "or the KL step")
                    raise SamplerError(f"{bad} invalid samples for condition {m} in one "
                                       f"iteration (last: {why}); {hint}")
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
    """:meth:`NodeSamplerBase.with_conditions`: a sampler's nodes with other conditions."""

    def __init__(self, base: NodeSamplerBase, env, targets, label: str = "heldout"):
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
