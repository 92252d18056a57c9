"""MuJoCo adapter of the GPS :class:`~mbrl_ros.core.algorithms.gps.Environment` protocol,
and the reaching task that the ``mbrl-ros gps`` command, the benchmark and the tests run.

A reaching *condition* is an (initial state, target) pair: start joint positions and target
joint positions; each condition's cost pulls toward its own target (the MPC controller's
joint-space quadratic cost), and results are reported as the end-effector distance [m]
between the reached and the target configuration (site ``ee``; models without it: the
largest joint error [rad|m]). Any robot: a shipped name (``arm2``, ``arm7`` have default
conditions) or an MJCF path (conditions drawn around its ``home`` keyframe by
:func:`~mbrl_ros.core.costs.task.default_conditions`). Gravity is handled by the initial
controllers, which hold the start configuration with gravity compensation (``init_kp``)
while they explore.

States are [joint positions, joint velocities] of the simulator's state joints (rad, rad/s
or m, m/s), named ``<joint>/position`` and ``<joint>/velocity`` as the dataset converter
names them, and actions are the command joints' efforts [N·m or N], so a policy trained
here has the same spec as a model fitted on recorded bags of the same robot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mbrl_ros.core.costs.quadratic import QuadraticCost
from mbrl_ros.core.costs.task import CostSettings, default_conditions, task_cost
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy, initial_controller
from mbrl_ros.core.robot import RobotDescription

__all__ = ["MujocoEnv", "ReachTask", "reach_task", "DEFAULT_STARTS", "DEFAULT_TARGETS",
           "ARM7_HOME"]

# Start positions [rad] of the reaching conditions and a target for each shipped arm;
# arm2 moves in the horizontal plane, so any of these is an equilibrium at zero effort.
DEFAULT_STARTS = {"arm2": ((0.0, 0.0), (1.2, -0.4), (-0.3, 1.3), (0.9, 1.2))}
DEFAULT_TARGETS = {"arm2": (0.5, 0.6)}
ARM7_HOME = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)   # the Panda "ready" keyframe


class MujocoEnv:
    """GPS environment over :class:`~mbrl_ros.sim.env.MujocoSim`.

    Args:
        robot: shipped model name or MJCF path.
        initial_positions: one start position vector (n_joints,) per condition [rad|m].
        initial_velocities: one per condition (default zeros) [rad/s|m/s].
        control_period: seconds per step (zero-order hold on the efforts).
        x0_noise: std of Gaussian noise added to the start positions at each reset.
        seed: seed of that noise.
        limit_margin: :meth:`check` calls a state invalid when a joint is this far beyond
            its position limit [rad|m] (None: never).
        max_velocity: ... or a joint moves faster than this [rad/s|m/s] (diverging).

    Efforts outside the limits are clamped (``MujocoSim.sanitize_command``) before they
    reach the simulation; GPS records the actions after its own clipping to
    ``u_min``/``u_max`` = -/+ the effort limits, which is the same thing.

    Kinematics (end-effector distance, gravity torque) come from the robot's
    :class:`~mbrl_ros.core.robot.RobotDescription` (:attr:`description`), not the simulator.
    """

    def __init__(self, robot: str, initial_positions: Sequence[Sequence[float]],
                 initial_velocities: Sequence[Sequence[float]] | None = None,
                 control_period: float = 0.05, x0_noise: float = 0.0, seed: int = 0,
                 limit_margin: float | None = 0.1, max_velocity: float = 50.0):
        from mbrl_ros.sim.env import MujocoSim

        self.robot = robot
        self.sim = MujocoSim(robot, control_period=control_period, seed=seed)
        self.description = RobotDescription.load(robot)
        self.limit_margin = None if limit_margin is None else float(limit_margin)
        self.max_velocity = float(max_velocity)
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

    def start_state(self, condition: int) -> tuple[np.ndarray, np.ndarray]:
        """The start (positions, velocities) of the next episode of ``condition``: its
        start plus ``x0_noise`` (drawn here, from this environment's generator)."""
        q = self.q0[condition]
        if self.x0_noise > 0:
            lo, hi = self.sim.position_limits.T
            q = np.clip(q + self.x0_noise * self._rng.standard_normal(q.shape), lo, hi)
        return q, self.v0[condition]

    def reset(self, condition: int) -> np.ndarray:
        q, v = self.start_state(condition)
        self.sim.reset(positions=q, velocities=v)
        return self.sim.state()

    def step(self, u: np.ndarray) -> np.ndarray:
        effort, _ = self.sim.sanitize_command(u)
        self.sim.step(effort)
        self.steps += 1
        return self.sim.state()

    def check(self, x: np.ndarray) -> str | None:
        """Why state x (nx,) is not a valid sample (None: valid): non-finite, a joint
        beyond its limit by more than ``limit_margin``, or faster than ``max_velocity``."""
        x = np.asarray(x, dtype=np.float64)
        n = self.nx // 2
        if not np.all(np.isfinite(x)):
            return "non-finite state"
        q, v = x[:n], x[n:]
        fast = np.abs(v) > self.max_velocity
        if np.any(fast):
            j = int(np.argmax(np.abs(v)))
            return (f"diverging: {self.sim.joint_names[j]} at {v[j]:.3g}/s (> "
                    f"{self.max_velocity:g})")
        if self.limit_margin is not None:
            lo, hi = self.sim.position_limits.T
            over = np.maximum(lo - q, q - hi)
            if np.any(over > self.limit_margin):
                j = int(np.argmax(over))
                return (f"{self.sim.joint_names[j]} at {q[j]:.3f}, {over[j]:.3f} beyond its "
                        f"limit [{lo[j]:.3f}, {hi[j]:.3f}]")
        return None

    def ee_position(self, q: np.ndarray) -> np.ndarray | None:
        """World position (3,) [m] of site ``ee`` at joint positions q, or the positions of
        a state (None: no site)."""
        if not self.description.has_ee:
            return None
        return self.description.ee_position(np.asarray(q, dtype=np.float64)[: self.nx // 2])

    def ee_distance(self, q: np.ndarray, target_q: np.ndarray) -> float:
        """End-effector distance [m] between configurations q and target_q, or the positions
        of states (models without an ``ee`` site: the largest joint error [rad|m])."""
        n = self.nx // 2
        return self.description.ee_distance(np.asarray(q, dtype=np.float64)[:n],
                                            np.asarray(target_q, dtype=np.float64)[:n])

    def gravity_torque(self, q: np.ndarray) -> np.ndarray:
        """Efforts (nu,) that hold configuration q at rest
        (:meth:`RobotDescription.gravity_torque`), clamped to the limits."""
        g = self.description.gravity_torque(np.asarray(q, dtype=np.float64)[: self.nx // 2])
        return np.clip(g, self.u_min, self.u_max)


@dataclass(frozen=True)
class ReachTask:
    """Reaching conditions: environment, costs, targets, metrics and initial controllers.

    Attributes:
        env: the :class:`MujocoEnv` (one condition per start position).
        costs: one quadratic cost per condition, toward its ``x_targets[m]`` (weights as
            the MPC controller's :class:`~mbrl_ros.core.control.mpc.CostSettings`).
        x_targets: (M, nx) target states [q*_m, 0].
        initial_controllers: exploration controllers, one per condition.
    """
    env: MujocoEnv
    costs: list
    x_targets: np.ndarray
    initial_controllers: list[LinearGaussianPolicy]

    @property
    def cost(self) -> QuadraticCost:
        """The first condition's cost (all of them when there is one target)."""
        return self.costs[0]

    @property
    def x_target(self) -> np.ndarray:
        """The first condition's target state."""
        return self.x_targets[0]

    @property
    def targets(self) -> np.ndarray:
        """(M, n_joints) target joint positions: the tasks of a target-conditioned policy."""
        return self.x_targets[:, : self.env.nx // 2]

    @property
    def target_q(self) -> np.ndarray:
        return self.targets[0]

    def final_joint_error(self, x: np.ndarray, m: int = 0) -> float:
        """max_j |q_j - q*_j| of a state x (nx,) to condition m's target [rad|m]."""
        n = self.env.nx // 2
        return float(np.max(np.abs(np.asarray(x)[:n] - self.targets[m])))

    def ee_distance(self, x: np.ndarray, m: int = 0) -> float:
        """End-effector distance [m] of state x (nx,) to condition m's target."""
        return self.env.ee_distance(x, self.targets[m])

    def distances(self) -> list:
        """One end-effector metric per condition (MDGPS's ``distance``)."""
        return [lambda x, m=m: self.ee_distance(x, m) for m in range(self.env.n_conditions)]


def reach_task(robot: str = "arm2", conditions: int = 3, horizon: int = 40,
               target: Sequence[float] | None = None,
               starts: Sequence[Sequence[float]] | None = None,
               control_period: float = 0.05, cost: CostSettings | None = None,
               init_std: float = 0.5, init_damping: float = 0.5, x0_noise: float = 0.0,
               seed: int = 0, targets: Sequence[Sequence[float]] | None = None,
               init_kp: float = 0.0, limit_margin: float | None = 0.1,
               max_velocity: float = 50.0) -> ReachTask:
    """Build the reaching task used by ``mbrl-ros gps``, ``bench/gps.py`` and the tests.

    Args:
        robot: shipped model (``arm2``, ``arm7`` have default conditions) or MJCF path.
        conditions: number of conditions used (the first ones of ``starts``/``targets``).
        horizon: steps T of the initial controllers.
        target: one target (n_joints,) for every condition [rad|m].
        starts: start joint positions, one (n_joints,) per condition.
        targets: target joint positions, one (n_joints,) per condition (overrides target).
        control_period: seconds per step.
        cost: position/velocity/effort/terminal weights (MPC controller defaults).
        init_std: exploration std of the initial controllers as a fraction of each
            joint's effort limit.
        init_damping: velocity feedback of the initial controllers [N·m·s/rad], keeps
            the exploration from drifting into the joint limits.
        init_kp: position feedback toward the start configuration, as a fraction of each
            joint's effort limit per rad; > 0 also adds the gravity torque at the start
            (the initial controllers hold the start pose instead of falling).
        x0_noise: std of start-position noise [rad|m].
        limit_margin, max_velocity: what :meth:`MujocoEnv.check` calls an invalid sample.

    Raises:
        ValueError: no default conditions for the robot and none given, bad sizes.
    """
    if starts is None and targets is None and robot not in DEFAULT_STARTS \
            and robot != "arm7" and target is None:
        starts, targets = default_conditions(RobotDescription.load(robot), conditions,
                                             seed=seed)
    if starts is None:
        if robot == "arm7":
            starts = [ARM7_HOME] * max(conditions, 1)
        elif robot in DEFAULT_STARTS:
            starts = DEFAULT_STARTS[robot]
        else:
            raise ValueError(f"no default start positions for {robot!r}: pass starts "
                             f"(known: {', '.join(DEFAULT_STARTS)}, arm7)")
    if conditions < 1 or conditions > len(starts):
        raise ValueError(f"conditions must be 1..{len(starts)}, got {conditions}")
    env = MujocoEnv(robot, list(starts)[:conditions], control_period=control_period,
                    x0_noise=x0_noise, seed=seed, limit_margin=limit_margin,
                    max_velocity=max_velocity)
    n = env.nx // 2
    M = env.n_conditions
    if targets is None:
        if target is None:
            if robot not in DEFAULT_TARGETS:
                raise ValueError(f"no default target for {robot!r}: pass target or targets")
            target = DEFAULT_TARGETS[robot]
        targets = [target] * M
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[1] != n or len(targets) < M:
        raise ValueError(f"targets need {M} rows of {n} joint positions, got {targets.shape}")
    if not np.all(np.isfinite(targets)):
        raise ValueError("targets must be finite")
    targets = targets[:M]
    c = cost or CostSettings()
    x_targets = np.concatenate([targets, np.zeros((M, n))], axis=1)
    # The MPC's reaching cost; joint angles do not wrap here (continuous=None).
    costs = [task_cost(c, t, env.u_max) for t in targets]
    idx = np.asarray(env.sim.command_index)
    ctrls = []
    for m in range(M):
        K = np.zeros((env.nu, env.nx))
        K[np.arange(env.nu), n + idx] = -init_damping
        k = xbar = None
        if init_kp > 0:
            K[np.arange(env.nu), idx] = -init_kp * env.u_max
            xbar = np.r_[env.q0[m], np.zeros(n)]
            k = env.gravity_torque(env.q0[m])
        ctrls.append(initial_controller(env.nx, env.nu, horizon, env.dt,
                                        init_std * env.u_max, env.u_min, env.u_max, K=K, k=k,
                                        xbar=xbar))
    return ReachTask(env, costs, x_targets, ctrls)
