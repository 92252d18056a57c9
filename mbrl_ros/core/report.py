"""Task metrics and report figures for learn-and-control runs (ROS-free).

An *episode* is a TransitionBatch of one controlled run from a reset. Its task cost is
the quadratic part of the controller's stage cost (joint error, wrapping on continuous
joints; velocity; normalised effort; weighted as
:class:`~mbrl_ros.core.control.mpc.CostSettings` weighs them; no joint-limit barrier, no
terminal term) on each (u_t, x_t+1), integrated over time (x dt)
so that it is comparable across control rates; the final distance is the
end-effector distance to the target pose's end effector (forward kinematics from the
MJCF), in metres, or the joint-space error where the model has no ``ee`` site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mbrl_ros.core.costs.task import CostSettings, task_cost  # noqa: E402
from mbrl_ros.core.types import TransitionBatch  # noqa: E402


def episode_cost(ep: TransitionBatch, target_q: np.ndarray, effort_limits: np.ndarray,
                 s: CostSettings = CostSettings(), continuous: np.ndarray | None = None
                 ) -> float:
    """Integral over the episode of the MPC's stage cost of (x_t+1, u_t) (:func:`task_cost`,
    without the joint-limit barrier): sum of cost x dt."""
    stage = task_cost(s, target_q, effort_limits, continuous).stage(ep.next_states,
                                                                     ep.actions)
    return float((stage * ep.dt).sum())


@dataclass
class IterationMetrics:
    """One learn-and-control iteration (JSON-able)."""
    iteration: int
    phase: str                      # 'excitation' or 'control'
    interaction_seconds: float      # simulated interaction so far, all iterations
    steps: int                      # environment steps so far
    task_cost: float | None
    final_distance: float | None    # m (end effector) or rad (joints)
    final_joint_error: float | None  # rad, max over joints
    model_error: float | None       # rollout RMSE of the model used next
    model_version: int
    planner: str
    extra: dict = field(default_factory=dict)


def plot_learning_curve(rows: Sequence[IterationMetrics], path: str | Path,
                        switch_at: float | None, title: str = "") -> Path:
    """Task cost and final distance vs interaction time; the planner switch marked."""
    ctrl = [r for r in rows if r.phase == "control" and r.task_cost is not None]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    if ctrl:
        t = [r.interaction_seconds for r in ctrl]
        for ax, ys, label in ((a1, [r.task_cost for r in ctrl], "task cost (integral)"),
                              (a2, [r.final_distance for r in ctrl], "final distance")):
            ax.plot(t, ys, "o-", color="tab:blue")
            for r, x, y in zip(ctrl, t, ys):
                ax.annotate(r.planner, (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
            ax.set_xlabel("interaction time [s] (simulated)")
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if switch_at is not None:
                ax.axvline(switch_at, color="tab:red", ls="--", lw=1)
                ax.text(switch_at, ax.get_ylim()[1], " planner switch", color="tab:red",
                        fontsize=8, va="top")
    excite = [r for r in rows if r.phase == "excitation"]
    for r in excite:
        for ax in (a1, a2):
            ax.axvspan(0, r.interaction_seconds, color="0.9", zorder=0)
            ax.text(0.02, 0.02, "excitation", transform=ax.transAxes, fontsize=8,
                    color="0.4")
    fig.suptitle(title or "learning curve", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_joint_trajectories(episodes: Sequence[tuple[str, TransitionBatch]],
                            target_q: np.ndarray, joint_names: Sequence[str],
                            path: str | Path, switch_label: str | None = None) -> Path:
    """Joint positions of the control episodes vs the target, one panel per joint."""
    n = len(joint_names)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 * n + 0.8), sharex=True, squeeze=False)
    offset = 0.0
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(episodes), 1)))
    for (label, ep), c in zip(episodes, colors):
        t = offset + np.r_[0.0, np.cumsum(ep.dt)]
        q = np.vstack([ep.states[:1, :n], ep.next_states[:, :n]])
        for j in range(n):
            axes[j][0].plot(t, q[:, j], color=c, lw=1.2)
        axes[0][0].text(t[0], axes[0][0].get_ylim()[1] if offset else q[0, 0], f" {label}",
                        fontsize=7, va="bottom", color=c)
        if switch_label and label.startswith(switch_label):
            for j in range(n):
                axes[j][0].axvline(t[0], color="tab:red", ls="--", lw=1)
        offset = t[-1]
    for j in range(n):
        axes[j][0].axhline(target_q[j], color="k", ls=":", lw=1)
        axes[j][0].set_ylabel(f"{joint_names[j]} [rad]", fontsize=8)
    axes[-1][0].set_xlabel("time [s] (control episodes end to end; dotted: target; "
                           "dashed red: planner switch)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
