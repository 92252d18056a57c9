"""Guided policy search on an arm that runs in real time: :class:`RealtimeSampler`.

A physical arm has no lockstep and no ``set_state``: it keeps running while the trainer
fits, and its joint states arrive on their own clock. So a sample here is cut out of the
stream (:func:`~mbrl_ros.core.algorithms.sampler.cut_timed_sample`) instead of counted
out of a paused simulator:

1. the controller's ``move_planner`` drives the arm to the condition's start and holds it
   there until it has been within ``settle_tolerance`` / ``settle_velocity`` for
   ``settle_time`` seconds;
2. the sample's controller is switched in (``lg_controller``, as on the lockstep path): the
   controller starts its step 0 at the first state it plans from, and answers every state
   with one command (``control_mode: on_state``, ``plan_mode: sync``);
3. after ``horizon`` control periods (of the states' stamps) the move planner holds the
   arm where the sample ended, while the trainer fits and optimises;
4. the sample is the first command that is its controller's step 0 and the ``horizon``
   states and commands after it; every command must be the sample controller's at its
   state and the states one control period apart. A sample that is not -- a state dropped,
   a safe hold, a command the safety filter changed (the controller keeps the robot's
   safety layers here) -- is a :class:`~mbrl_ros.core.algorithms.sampler.TruncatedSample`:
   dropped with a warning and redrawn.

The arm's joint states must arrive once per GPS control period (``control_period`` of the
GPS configuration; checked at start): the linear-Gaussian controller's step holds for one
state, as the dynamics it was fitted on. Everything else is :class:`~mbrl_ros.ros.
gps_remote.RemoteSampler`'s (exploration noise, artifacts, the data logger's episodes, the
global policy swapped into the controller for its evaluations). In simulation,
``mbrl-ros bringup gps timing:=realtime`` runs it against the simulator in real time.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mbrl_ros.core.algorithms.sampler import cut_timed_sample
from mbrl_ros.ros.gps_remote import RemoteSampler

__all__ = ["RealtimeSampler"]


class RealtimeSampler(RemoteSampler):
    """GPS samples on an arm that runs in real time (see the module docstring).

    Args:
        env, targets, store_dir, node, executor: as :class:`RemoteSampler`.
        settle_time: seconds the arm must stay settled at a sample's start [s].
        rate_tolerance: largest relative difference between the joint states' period and
            the GPS control period (checked on the first states).
        policy_atol: tolerance of the global policy's commands against its network run here
            (the controller runs the same network; float rounding only).
        **kwargs: :class:`RemoteSampler`'s keywords; ``reset`` must be ``move`` and no
            simulator node is used (``sim`` is ignored).
    """
    needs_simulator = False

    def __init__(self, env, targets, store_dir: str | Path, node, executor, *,
                 settle_time: float = 0.5, rate_tolerance: float = 0.1,
                 policy_atol: float = 1e-6, **kwargs):
        if kwargs.get("reset", "move") != "move":
            raise ValueError("real-time samples reach their start with the controller: "
                             "reset must be 'move' (an arm has no set_state)")
        kwargs.update(reset="move", sim="")
        self.settle_time = float(settle_time)
        self.rate_tolerance = float(rate_tolerance)
        self.policy_atol = float(policy_atol)
        self._policy_expect = None
        super().__init__(env, targets, store_dir, node, executor, **kwargs)
        self._check_state_period()

    # ------------------------------------------------------------------ set-up
    def _check_state_period(self) -> None:
        rec = self.recorder
        n0 = len(rec.stamps)
        self._spin_until(lambda: len(rec.stamps) >= n0 + 8, self.service_timeout,
                         "no joint states arriving")
        period = float(np.median(np.diff(rec.stamps[n0:])))
        if abs(period - self.dt) > self.rate_tolerance * self.dt:
            raise ValueError(f"real-time GPS samples need one joint state per control period "
                             f"({self.dt:g} s, the GPS configuration's control_period); the "
                             f"states arrive every {period:.4g} s")
        rec.clear()

    def _wake_if_idle(self) -> None:
        """The arm never pauses: the controller always has fresh states."""

    # ------------------------------------------------------------------ the samples
    def _use_lg(self, controller, noise, m: int) -> None:
        self._policy_expect = None
        super()._use_lg(controller, noise, m)

    def _use_policy(self, policy, m: int) -> None:
        super()._use_policy(policy, m)
        task = getattr(policy, "task", None)
        bound = policy if task is not None or not getattr(policy, "n_task", 0) else \
            policy.with_task(self.targets[m])
        self._policy_expect = bound

    def _expected(self):
        """The command the sample's controller gives at step t and state x: the linear-
        Gaussian one's as the lockstep path checks it, else the global policy's."""
        expected = self._expected_command()
        if expected is not None:
            return expected
        pol, lo, hi = self._policy_expect, self.u_min, self.u_max
        return lambda t, x: np.clip(pol.action(x, t * self.dt), lo, hi)

    def _move_to(self, q0: np.ndarray) -> None:
        """Drive the arm to ``q0`` with the move planner until it has stayed settled for
        ``settle_time`` (the arm's own clock: the states' stamps)."""
        self._set_remote(self._ctrl_params, "controller", {
            "target_joint_positions": [float(v) for v in q0],
            "active_planner": self.move_planner})
        rec, n = self.recorder, len(q0)
        rec.clear()
        since = [None]
        limit = time.monotonic() + max(self.move_steps * self.dt, 1.0) + self.service_timeout

        def settled() -> bool:
            if not rec.states:
                return False
            x, stamp = rec.states[-1], rec.stamps[-1]
            ok = (float(np.max(np.abs(x[:n] - q0))) <= self.settle_tolerance
                  and float(np.max(np.abs(x[n:]))) <= self.settle_velocity)
            if not ok:
                since[0] = None
            elif since[0] is None:
                since[0] = stamp
            return ok and stamp - since[0] >= self.settle_time
        while not settled():
            if time.monotonic() > limit:
                x = rec.states[-1] if rec.states else np.full(2 * n, np.nan)
                raise RuntimeError(
                    f"gps trainer: the move to the start {np.round(q0, 4)} did not settle "
                    f"(position error {np.max(np.abs(x[:n] - q0)):.4g}, speed "
                    f"{np.max(np.abs(x[n:])):.4g}; tolerances {self.settle_tolerance:g}, "
                    f"{self.settle_velocity:g})")
            self.executor.spin_once(timeout_sec=0.02)

    def _hold(self) -> None:
        """The move planner holds the arm where it is (between samples: fits and updates)."""
        rec = self.recorder
        if rec.states:
            n = len(self.env.sim.joint_names)
            self._set_remote(self._ctrl_params, "controller", {
                "target_joint_positions": [float(v) for v in rec.states[-1][:n]],
                "active_planner": self.move_planner})

    def _episode(self, m: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        t_wall = time.perf_counter()
        q0, _ = self.env.start_state(m)
        marker = self._mark_episode()           # the move is an episode of the bag of its own
        if marker is not None:
            self.other_episodes.append({"episode": marker, "kind": "move"})
        self._move_to(q0)
        marker = self._mark_episode()           # the sample's episode (with a data logger)
        if marker is not None:
            self._episode_id = marker
        expected = self._expected()
        rec = self.recorder
        # not cleared here: the controller may take the switch at a state the recorder has
        # already received (it was cleared at the move's start)
        self._set_remote(self._ctrl_params, "controller", self._pending)
        # the switch takes effect at the controller's next state: the sample spans the
        # horizon + 1 states after the last one received by now (its clock), plus one
        first = len(rec.stamps)
        need = (horizon + 2) * self.dt
        progress = [time.monotonic(), first]

        def done() -> bool:
            n = len(rec.stamps)
            if n != progress[1]:
                progress[:] = [time.monotonic(), n]
            return ((n > first and rec.stamps[-1] - rec.stamps[max(first - 1, 0)] >= need)
                    or time.monotonic() - progress[0] > self.step_timeout)
        try:
            while not done():
                self.executor.spin_once(timeout_sec=0.01)
        finally:
            self._hold()
        marker = self._mark_episode()           # the hold after it: an episode of its own
        if marker is not None:
            self.other_episodes.append({"episode": marker, "kind": "idle"})
        self._stats["seconds"] += time.perf_counter() - t_wall
        self._stats["samples"] += 1
        atol = 1e-9 if self._expect is not None else self.policy_atol
        return cut_timed_sample(np.array(rec.states), np.array(rec.stamps),
                                np.array(rec.commands), list(rec.answers), horizon, self.dt,
                                expected, atol=atol, rtol=atol)
