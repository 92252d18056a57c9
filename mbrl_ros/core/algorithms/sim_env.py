"""MuJoCo adapter of the GPS :class:`~mbrl_ros.core.algorithms.gps.Environment` protocol,
and the joint-space reaching task that the ``mbrl-ros gps`` command, the benchmark and the
tests run.

States are [joint positions, joint velocities] of the simulator's state joints (rad, rad/s
or m, m/s), named ``<joint>/position`` and ``<joint>/velocity`` as the dataset converter
names them, and actions are the command joints' efforts [N·m or N], so a policy trained
here has the same spec as a model fitted on recorded bags of the same robot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mbrl_ros.core.control.mpc import CostSettings
from mbrl_ros.core.costs.quadratic import QuadraticCost
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["MujocoEnv", "ReachTask", "reach_task", "DEFAULT_STARTS", "DEFAULT_TARGETS"]

# Start positions [rad] of the reaching conditions and a target for each shipped arm;
# arm2 moves in the horizontal plane, so any of these is an equilibrium at zero effort.
DEFAULT_STARTS = {"arm2": ((0.0, 0.0), (1.2, -0.4), (-0.3, 1.3), (0.9, 1.2))}
DEFAULT_TARGETS = {"arm2": (0.5, 0.6)}


class MujocoEnv:
    """GPS environment over :class:`~mbrl_ros.sim.env.MujocoSim`.

    Args:
        robot: shipped model name or MJCF path.
        initial_positions: one start position vector (n_joints,) per condition [rad|m].
        initial_velocities: one per condition (default zeros) [rad/s|m/s].
        control_period: seconds per step (zero-order hold on the efforts).
        x0_noise: std of Gaussian noise added to the start positions at each reset.
        seed: seed of that noise.

    Efforts outside the limits are clamped (``MujocoSim.sanitize_command``) before they
    reach the simulation; GPS records the actions after its own clipping to
    ``u_min``/``u_max`` = -/+ the effort limits, which is the same thing.
    """

    def __init__(self, robot: str, initial_positions: Sequence[Sequence[float]],
                 initial_velocities: Sequence[Sequence[float]] | None = None,
                 control_period: float = 0.05, x0_noise: float = 0.0, seed: int = 0):
        from mbrl_ros.sim.env import MujocoSim

        self.robot = robot
        self.sim = MujocoSim(robot, control_period=control_period, seed=seed)
        n = self.sim.n_joints
        self.q0 = np.asarray(initial_positions, dtype=np.float64)
        if self.q0.ndim != 2 or self.q0.shape[1] != n or len(self.q0) < 1:
            raise ValueError(f"initial_positions must be (conditions, {n}), got "
                             f"{self.q0.shape}")
        self.v0 = (np.zeros_like(self.q0) if initial_velocities is None
                   else np.asarray(initial_velocities, dtype=np.float64))
        if self.v0.shape != self.q0.shape:
            raise ValueError(f"initial_velocities must be {self.q0.shape}, got {self.v0.shape}")
        self.n_conditions = len(self.q0)
        self.nx = 2 * n
        self.nu = self.sim.n_commands
        self.dt = float(self.sim.control_period)
        self.u_max = np.asarray(self.sim.effort_limits, dtype=np.float64).copy()
        self.u_min = -self.u_max
        self.x0_noise = float(x0_noise)
        self._rng = np.random.default_rng(seed)
        self.steps = 0

    @property
    def spec(self) -> ModelSpec:
        """State/action names, dimensions, step and robot (the artifact's spec)."""
        j = self.sim.joint_names
        return ModelSpec(self.nx, self.nu, tuple(f"{n}/position" for n in j)
                         + tuple(f"{n}/velocity" for n in j), tuple(self.sim.command_names),
                         self.dt, str(self.robot))

    def reset(self, condition: int) -> np.ndarray:
        q = self.q0[condition]
        if self.x0_noise > 0:
            lo, hi = self.sim.position_limits.T
            q = np.clip(q + self.x0_noise * self._rng.standard_normal(q.shape), lo, hi)
        self.sim.reset(positions=q, velocities=self.v0[condition])
        return self.sim.state()

    def step(self, u: np.ndarray) -> np.ndarray:
        effort, _ = self.sim.sanitize_command(u)
        self.sim.step(effort)
        self.steps += 1
        return self.sim.state()


@dataclass(frozen=True)
class ReachTask:
    """A joint-space reaching task: environment, cost, metric and initial controllers.

    Attributes:
        env: the :class:`MujocoEnv` (one condition per start position).
        cost: quadratic cost toward ``x_target`` (weights as the MPC controller's
            :class:`~mbrl_ros.core.control.mpc.CostSettings`).
        x_target: (nx,) target state [q*, 0].
        initial_controllers: damped exploration controllers, one per condition.
    """
    env: MujocoEnv
    cost: QuadraticCost
    x_target: np.ndarray
    initial_controllers: list[LinearGaussianPolicy]

    @property
    def target_q(self) -> np.ndarray:
        return self.x_target[: self.env.nx // 2]

    def final_joint_error(self, x: np.ndarray) -> float:
        """max_j |q_j - q*_j| of a state x (nx,) [rad|m]."""
        n = self.env.nx // 2
        return float(np.max(np.abs(np.asarray(x)[:n] - self.target_q)))


def reach_task(robot: str = "arm2", conditions: int = 3, horizon: int = 40,
               target: Sequence[float] | None = None,
               starts: Sequence[Sequence[float]] | None = None,
               control_period: float = 0.05, cost: CostSettings | None = None,
               init_std: float = 0.5, init_damping: float = 0.5, x0_noise: float = 0.0,
               seed: int = 0) -> ReachTask:
    """Build the reaching task used by ``mbrl-ros gps``, ``bench/gps.py`` and the tests.

    Args:
        robot: shipped model (``arm2`` has default starts and target) or MJCF path.
        conditions: number of start positions used (the first ones of ``starts``).
        horizon: steps T of the initial controllers.
        target: target joint positions (n_joints,) [rad|m].
        starts: start joint positions, one (n_joints,) per condition.
        control_period: seconds per step.
        cost: position/velocity/effort/terminal weights (MPC controller defaults).
        init_std: exploration std of the initial controllers as a fraction of each
            joint's effort limit.
        init_damping: velocity feedback of the initial controllers [N·m·s/rad], keeps
            the exploration from drifting into the joint limits.
        x0_noise: std of start-position noise [rad|m].
    """
    if starts is None:
        if robot not in DEFAULT_STARTS:
            raise ValueError(f"no default start positions for {robot!r}: pass starts "
                             f"(known: {', '.join(DEFAULT_STARTS)})")
        starts = DEFAULT_STARTS[robot]
    if conditions < 1 or conditions > len(starts):
        raise ValueError(f"conditions must be 1..{len(starts)}, got {conditions}")
    env = MujocoEnv(robot, list(starts)[:conditions], control_period=control_period,
                    x0_noise=x0_noise, seed=seed)
    n = env.nx // 2
    if target is None:
        if robot not in DEFAULT_TARGETS:
            raise ValueError(f"no default target for {robot!r}: pass target")
        target = DEFAULT_TARGETS[robot]
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (n,):
        raise ValueError(f"target needs {n} joint positions, got {target.shape}")
    c = cost or CostSettings()
    q = np.r_[np.full(n, c.position_weight), np.full(n, c.velocity_weight)]
    r = c.effort_weight / np.maximum(env.u_max, 1e-9) ** 2
    x_target = np.r_[target, np.zeros(n)]
    qcost = QuadraticCost.diagonal(q, r, c.terminal_factor * q, x_target=x_target)
    idx = np.asarray(env.sim.command_index)
    K = np.zeros((env.nu, env.nx))
    K[np.arange(env.nu), n + idx] = -init_damping
    var = (init_std * env.u_max) ** 2
    ctrl = LinearGaussianPolicy(K=np.tile(K, (horizon, 1, 1)), k=np.zeros((horizon, env.nu)),
                                xbar=np.zeros((horizon, env.nx)),
                                cov=np.tile(np.diag(var), (horizon, 1, 1)), t0=0.0,
                                dt=env.dt, u_min=env.u_min, u_max=env.u_max)
    return ReachTask(env, qcost, x_target, [ctrl] * env.n_conditions)
