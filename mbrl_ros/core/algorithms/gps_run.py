"""One GPS experiment in simulation, as ``mbrl-ros gps`` and ``bench/gps.py`` run it:
build the reaching task, run MDGPS with a progress bar, publish the global policy through
the artifact store, and write ``report.json`` and ``gps.png``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core.algorithms.global_policy import PolicySettings, publish_policy
from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings, IterationRecord
from mbrl_ros.core.algorithms.sim_env import reach_task
from mbrl_ros.core.algorithms.traj_opt import TrajOptSettings
from mbrl_ros.core.models.base import FitReport
from mbrl_ros.core.settings import as_dict

__all__ = ["GPSRunConfig", "run_gps", "plot_learning_curve", "time_policy_action"]


@dataclass
class GPSRunConfig:
    """What to run (``quick`` shrinks the defaults for a run of well under a minute).

    Attributes:
        out: output directory (report.json, gps.png, <name>/vNNNN artifacts).
        iterations: MDGPS iterations (0: 8, quick 3).
        conditions: start positions (0: 3, quick 2).
        samples: trajectories per condition and iteration (0: 5, quick 4).
        horizon: steps per trajectory; control_period: seconds per step.
        name: artifact name under ``out``.
        write: publish the artifact and write report.json / gps.png.
    """
    robot: str = "arm2"
    out: Path = Path("gps_out")
    iterations: int = 0
    quick: bool = False
    conditions: int = 0
    samples: int = 0
    horizon: int = 40
    control_period: float = 0.05
    seed: int = 0
    name: str = "gps_policy"
    progress: bool = True
    write: bool = True
    policy: PolicySettings = field(default_factory=PolicySettings)

    def resolved(self) -> "GPSRunConfig":
        q = self.quick
        pol = self.policy
        if q and pol == PolicySettings():
            pol = dataclasses.replace(pol, iterations=250)
        return dataclasses.replace(
            self, iterations=self.iterations or (3 if q else 8),
            conditions=self.conditions or (2 if q else 3),
            samples=self.samples or (4 if q else 5), policy=pol)


def time_policy_action(policy, x: np.ndarray, n: int = 2000) -> float:
    """Mean seconds of one ``policy.action(x, t)`` call (after a warm-up)."""
    for _ in range(50):
        policy.action(x, 0.0)
    t0 = time.perf_counter()
    for i in range(n):
        policy.action(x, 0.0)
    return (time.perf_counter() - t0) / n


def plot_learning_curve(records: list[dict], path: str | Path, title: str = "",
                        do_nothing: float | None = None) -> Path:
    """Mean trajectory cost over the conditions vs simulated interaction time, for the
    linear-Gaussian controllers' samples and the global policy, and the global policy's
    final joint error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    t = [r["interaction_seconds"] for r in records]
    lg = [float(np.mean(r["cost_lg"])) for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(t, lg, "o-", color="tab:blue", label="linear-Gaussian controllers (samples)")
    if records and records[0]["cost_policy"] is not None:
        ax.plot(t, [float(np.mean(r["cost_policy"])) for r in records], "s-",
                color="tab:red", label="global policy (mean action)")
    ax.set_yscale("log")
    ax.set_xlabel("simulated interaction [s]")
    ax.set_ylabel("trajectory cost (mean over conditions)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    if records and records[0]["policy_final_distance"] is not None:
        d = np.array([r["policy_final_distance"] for r in records])
        for m in range(d.shape[1]):
            ax.plot(t, d[:, m], "o-", label=f"condition {m}")
    if do_nothing is not None:
        ax.axhline(do_nothing, color="0.5", ls="--", label="do nothing (smallest)")
    ax.set_yscale("log")
    ax.set_xlabel("simulated interaction [s]")
    ax.set_ylabel("global policy final joint error [rad]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title or "MDGPS learning curve", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_gps(cfg: GPSRunConfig) -> dict[str, Any]:
    """Run the experiment; returns the report (also written to ``out/report.json``).

    Raises:
        ValueError: unknown robot / no default task for it, bad sizes.
    """
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    cfg = cfg.resolved()
    t_wall = time.perf_counter()
    task = reach_task(cfg.robot, conditions=cfg.conditions, horizon=cfg.horizon,
                      control_period=cfg.control_period, seed=cfg.seed)
    gps_settings = GPSSettings(horizon=cfg.horizon, samples=cfg.samples, seed=cfg.seed)
    traj_opt = TrajOptSettings()
    gps = MDGPS(task.env, task.cost, gps_settings, traj_opt=traj_opt, policy=cfg.policy,
                initial_controllers=task.initial_controllers,
                distance=task.final_joint_error)
    do_nothing = [task.final_joint_error(np.r_[q, np.zeros(len(q))]) for q in task.env.q0]
    bar = tqdm(total=cfg.iterations, desc=f"gps {cfg.robot}", disable=not cfg.progress,
               unit="it")

    def on_iteration(rec: IterationRecord) -> None:
        post = {"cost": f"{np.mean(rec.cost_lg):.4g}"}
        if rec.policy_final_distance is not None:
            post["err"] = f"{max(rec.policy_final_distance):.3g}"
        bar.set_postfix(post)
        bar.update(1)

    try:
        gps.run(cfg.iterations, on_iteration)
    finally:
        bar.close()
    records = [r.to_json() for r in gps.history]
    policy = gps.policy
    last = gps.history[-1]
    report: dict[str, Any] = {
        "robot": cfg.robot, "iterations": cfg.iterations, "conditions": cfg.conditions,
        "samples_per_condition": cfg.samples, "horizon": cfg.horizon, "dt": task.env.dt,
        "start_positions": task.env.q0.tolist(), "target_positions": task.target_q.tolist(),
        "do_nothing_final_distance": do_nothing,
        "settings": {"gps": as_dict(gps_settings), "traj_opt": as_dict(traj_opt),
                     "policy": as_dict(cfg.policy)},
        "policy_action_seconds": time_policy_action(policy, task.x_target),
        "history": records,
    }
    if cfg.write:
        out = Path(cfg.out)
        metrics = {"interaction_seconds": float(last.interaction_seconds),
                   "iterations": float(cfg.iterations),
                   "policy_imitation_rmse": float(last.policy_rmse)}
        if last.cost_policy is not None:
            metrics["policy_cost_mean"] = float(np.mean(last.cost_policy))
        if last.policy_final_distance is not None:
            metrics["final_joint_error_max"] = float(max(last.policy_final_distance))
        fit = FitReport(n_train=int(last.samples * cfg.horizon), n_val=0,
                        fit_seconds=float(sum(sum(r.timings.values()) for r in gps.history)),
                        metrics=metrics,
                        notes=[f"MDGPS on {cfg.robot}: reach joint target "
                               f"{task.target_q.tolist()} from {task.env.q0.tolist()}"])
        info = publish_policy(policy, out, cfg.name, task.env.spec, cfg.policy, fit,
                              {"x_target": task.x_target, "start_positions": task.env.q0})
        report["artifact"] = {"uri": info.uri, "version": info.version,
                              "checksum": info.checksum,
                              "latest": str(Path(info.uri).parent / "latest")}
        png = plot_learning_curve(records, out / "gps.png",
                                  title=f"MDGPS on {cfg.robot}: {cfg.conditions} conditions, "
                                        f"{cfg.samples} samples each per iteration",
                                  do_nothing=min(do_nothing))
        report["plot"] = str(png)
    report["wall_seconds"] = round(time.perf_counter() - t_wall, 3)
    if cfg.write:
        (Path(cfg.out) / "report.json").write_text(json.dumps(report, indent=2))
    return report
