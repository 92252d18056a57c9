"""Closed-loop MPC on the MuJoCo simulator without ROS: the same plan/act loop the
controller node runs, for benchmarks and tests (timing each replan and each policy
evaluation)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.control.mpc import MPCController
from mbrl_ros.core.control.safety import SafetyFilter
from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings
from mbrl_ros.core.types import TransitionBatch
from mbrl_ros.sim.env import MujocoSim


@dataclass
class EpisodeResult:
    xs: np.ndarray              # (N+1, nx) states
    us: np.ndarray              # (N, nu) commands
    replan_s: np.ndarray        # (R,) wall time of each replan
    action_s: np.ndarray        # (N,) wall time of each policy evaluation
    planners: list[str]         # planner that produced each replan

    def final_joint_error(self, target_q: np.ndarray) -> float:
        n = target_q.size
        return float(np.max(np.abs(self.xs[-1, :n] - target_q)))


def run_episode(sim: MujocoSim, mpc: MPCController, steps: int, replan_every: int = 1,
                switch_at: int | None = None, switch_to: str | None = None,
                plan_delay: int = 0, compensate: bool = False,
                safety: SafetyFilter | None = None) -> EpisodeResult:
    """Run ``steps`` control periods of ``sim`` under ``mpc`` from the sim's current state.

    The sim's control period must equal the model's step. Optionally switch the planner
    to ``switch_to`` before step ``switch_at``.

    ``plan_delay`` emulates the solve time of a real-time controller: a plan from the
    state at step k takes over at step k + plan_delay (the previous policy runs
    meanwhile; the first plan is used at once), and no new plan starts while one is
    pending. ``compensate`` passes that delay to :meth:`MPCController.replan` as its
    ``lookahead`` (what the node's ``latency_compensation`` does with measured latencies).

    ``safety``: send every command through this filter (clamp, joint-limit guard, rate
    limit), as the node's command path does, and give every replan the last command sent
    (the node's ``Actuator.last_command``; the filter's previous output counts as sent one
    period before the first step). None: the commands are only clipped to the limits.
    """
    x = sim.state()
    t = sim.time
    dt = sim.control_period
    last = None if safety is None else (safety.last.copy(), t - dt)
    xs, us, replans, actions, planners = [x.copy()], [], [], [], []
    policy = None
    pending: tuple[int, object] | None = None
    for k in range(steps):
        if switch_at is not None and k == switch_at:
            mpc.select(switch_to)
        if pending is not None and k >= pending[0]:
            policy, pending = pending[1], None
        if pending is None and (k % replan_every == 0 or policy is None):
            t0 = time.perf_counter()
            new = mpc.replan(x, t, plan_delay * dt if compensate else 0.0, last)
            replans.append(time.perf_counter() - t0)
            planners.append(mpc.stats["planner"])
            if policy is None or plan_delay <= 0:
                policy = new
            else:
                pending = (k + plan_delay, new)
        t0 = time.perf_counter()
        u = policy.action(x, t)
        actions.append(time.perf_counter() - t0)
        if safety is None:
            u = np.clip(u, -sim.effort_limits, sim.effort_limits)
        else:
            u = safety(u, x, dt)
            last = (u.copy(), t)
        sim.step(u)
        x, t = sim.state(), sim.time
        xs.append(x.copy())
        us.append(u)
    return EpisodeResult(np.asarray(xs), np.asarray(us), np.asarray(replans),
                         np.asarray(actions), planners)


def simulate_excitation(robot: str, seconds: float, episodes: int = 1, seed: int = 0,
                        initial_noise: float = 0.1,
                        settings: ExcitationSettings = ExcitationSettings()) -> TransitionBatch:
    """Excitation data simulated directly (no ROS, no bag): the same transitions
    ``mbrl-ros record`` + ``dataset`` produce in lockstep, named as the dataset converter
    names them, ``seconds`` in total over ``episodes`` resets."""
    sim = MujocoSim(robot, seed=seed, initial_noise=initial_noise)
    pol = ExcitationPolicy(settings, sim.position_limits[sim.command_index], sim.effort_limits,
                           sim.command_index, sim.n_joints, sim.effective_inertia(),
                           seed=seed, dt=sim.control_period)
    steps = int(round(seconds / episodes / sim.control_period))
    n = steps * episodes
    X = np.empty((n, 2 * sim.n_joints))
    U = np.empty((n, sim.n_commands))
    Xn = np.empty_like(X)
    for e in range(episodes):
        sim.reset()
        for k in range(e * steps, (e + 1) * steps):
            X[k] = sim.state()
            U[k] = pol.action(X[k], sim.time)
            sim.step(U[k])
            Xn[k] = sim.state()
    names = [f"{j}/position" for j in sim.joint_names] + [f"{j}/velocity"
                                                          for j in sim.joint_names]
    return TransitionBatch(X, U, Xn, np.full(n, sim.control_period),
                           np.arange(n) * sim.control_period, np.repeat(np.arange(episodes), steps),
                           names, list(sim.command_names),
                           {"robot": robot, "continuous_joints": [
                               j for j, c in zip(sim.joint_names, sim.continuous) if c]})
