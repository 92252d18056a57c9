"""Closed-loop MPC on the MuJoCo simulator without ROS: the same plan/act loop the
controller node runs, for benchmarks and tests (timing each replan and each policy
evaluation)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.control.mpc import MPCController
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
                switch_at: int | None = None, switch_to: str | None = None) -> EpisodeResult:
    """Run ``steps`` control periods of ``sim`` under ``mpc`` from the sim's current state.

    The sim's control period must equal the model's step. Optionally switch the planner
    to ``switch_to`` before step ``switch_at``.
    """
    x = sim.state()
    t = sim.time
    xs, us, replans, actions, planners = [x.copy()], [], [], [], []
    policy = None
    for k in range(steps):
        if switch_at is not None and k == switch_at:
            mpc.select(switch_to)
        if k % replan_every == 0 or policy is None:
            t0 = time.perf_counter()
            policy = mpc.replan(x, t)
            replans.append(time.perf_counter() - t0)
            planners.append(mpc.stats["planner"])
        t0 = time.perf_counter()
        u = policy.action(x, t)
        actions.append(time.perf_counter() - t0)
        sim.step(np.clip(u, -sim.effort_limits, sim.effort_limits))
        x, t = sim.state(), sim.time
        xs.append(x.copy())
        us.append(u)
    return EpisodeResult(np.asarray(xs), np.asarray(us), np.asarray(replans),
                         np.asarray(actions), planners)
