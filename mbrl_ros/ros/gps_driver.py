"""Guided policy search through the ROS nodes in one process: :class:`NodeSampler`, the
sampler of ``mbrl-ros gps --through-nodes``, whose samples are run by the simulator node
and the controller node composed like :mod:`mbrl_ros.ros.demo` with
:class:`~mbrl_ros.ros.compose.InProcessSystem`, the simulator in lockstep.

The sample loop (exploration noise, the sample's controller or the global policy set on
the controller node, invalid samples discarded, the episode index) is
:class:`~mbrl_ros.ros.gps_sampling.NodeSamplerBase`'s. One episode here:

1. the simulator is paused (its lockstep chain stops) and the controller forgets its plan
   and last state (``reset_episode``), so no safe hold of an idle controller steps the
   sample; the messages in flight land while the simulator is paused;
2. the simulator is reset to the condition's start (``SimNode.reset_episode``, what
   ``~/set_state`` does; the topic itself would publish the start state at once, which a
   paused lockstep chain cannot take), then resumes and publishes the start state;
3. T steps run in lockstep and the simulator pauses after the T-th; the episode ends when
   the controller's answer to the last state arrived too (the paused simulator ignores
   it), so no command of one sample lands on the next (a short drain did not suffice at
   load 10: a late answer stepped the next sample once);
4. a sample with a failed replan or a safe hold among its commands is refused (an error):
   it is not a sample of the controller.

With ``bag_dir`` the data logger node runs too and records every episode (each sample is
one episode of the bag, between the simulator's episode markers).

The same with the nodes as separate processes, over ROS interfaces only:
:mod:`mbrl_ros.ros.gps_remote`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rclpy.parameter import Parameter

from mbrl_ros.bringup import gps_controller_params
from mbrl_ros.core.algorithms.sampler import SamplerError, TruncatedSample
from mbrl_ros.ros.compose import InProcessSystem
from mbrl_ros.ros.gps_sampling import NodeSamplerBase, SampleRecorder

__all__ = ["NodeSampler"]


class NodeSampler(NodeSamplerBase):
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
            self.recorder = SampleRecorder(self.system, self.sim.sim.joint_names,
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
            raise TruncatedSample(f"gps driver: sample stalled or mixed ({steps}/{horizon} "
                                  f"steps, {len(rec.states)} states, {len(rec.commands)} "
                                  f"commands received; controller holds: "
                                  f"{self.controller.actuator.holds})", steps)
        # A sample whose commands did not all come from the planner (a failed replan, a
        # safe hold) is not a sample of the controller: refuse it rather than learn from it.
        failed = ctrl.counters["replan_failures"] - failures0
        if failed or (holds_in_episode and holds_in_episode[0]):
            raise TruncatedSample(
                f"gps driver: the controller did not execute the sample ({failed} failed "
                f"replans, last: {getattr(ctrl, '_last_replan_error', '')!r}; safe holds: "
                f"{holds_in_episode[0] if holds_in_episode else {}})", steps)
        X = np.array(rec.states[:horizon + 1])
        U = np.array(rec.commands[:horizon])
        if not np.array_equal(X[0], np.concatenate([q0, v0])):
            raise TruncatedSample("gps driver: the first state received is not the start "
                                  "state", steps)
        return X, U

    def close(self) -> None:
        """Stop the nodes (the data logger closes its bag) and, with a bag, write the
        episode index."""
        self.system.close()
        if getattr(self, "logger", None) is not None:
            self._write_index(self.bag_dir, self.logger.last_bag_paths)
