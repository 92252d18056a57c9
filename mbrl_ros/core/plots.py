"""Report figures (matplotlib, no display needed): a model's open-loop rollouts, a GPS
run's learning curve."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mbrl_ros.core.models.evaluate import Rollouts  # noqa: E402


def plot_rollouts(ro: Rollouts, state_names: Sequence[str], path: str | Path,
                  title: str = "", max_rollouts: int = 6) -> Path:
    """Predicted (dashed) vs actual (solid) open-loop rollouts, one panel per state
    dimension, consecutive rollouts laid end to end on one time axis."""
    path = Path(path)
    nx = len(state_names)
    cols = 2 if nx > 1 else 1
    rows = int(np.ceil(nx / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.9 * rows + 0.8), squeeze=False,
                             sharex=True)
    n = min(max_rollouts, len(ro.predicted))
    offset = 0.0
    for r in range(n):
        t = ro.time[r] + offset
        for i in range(nx):
            ax = axes[i // cols][i % cols]
            ax.plot(t, ro.actual[r, :, i], color="k", lw=1.2,
                    label="actual" if r == 0 else None)
            ax.plot(t, ro.predicted[r, :, i], color="tab:red", lw=1.2, ls="--",
                    label="predicted" if r == 0 else None)
            ax.axvline(t[0], color="0.85", lw=0.8)
        offset = t[-1]
    for i in range(nx):
        ax = axes[i // cols][i % cols]
        ax.set_ylabel(state_names[i], fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(nx, rows * cols):
        axes[j // cols][j % cols].axis("off")
    for c in range(cols):
        axes[-1][c].set_xlabel("time [s] (rollouts end to end; grey: rollout starts)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title or f"open-loop rollouts on held-out data ({n} shown)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kl_max(values) -> float:
    """Largest finite entry of a KL list with nulls (NaN if none)."""
    vals = [v for v in (values or []) if v is not None and np.isfinite(v)]
    return max(vals) if vals else float("nan")


def plot_gps_learning_curve(iterations: list[dict], path: str | Path, title: str = "") -> Path:
    """A GPS run's learning curve from its ``metrics.json`` iteration entries: end-effector
    distance (local controllers, global policy on the training and the held-out conditions;
    worst condition) and KL (bound, under the fitted dynamics, measured on the samples) per
    iteration."""
    path = Path(path)
    it = [r["iteration"] for r in iterations]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, label, style in (("final_distance_m", "local controllers (samples)", "o-"),
                              ("policy_final_distance_m", "global policy, training", "s-"),
                              ("policy_heldout_distance_m", "global policy, held-out", "^-")):
        vals = [max(r[key]) if r.get(key) else np.nan for r in iterations]
        if np.any(np.isfinite(vals)):
            ax.plot(it, vals, style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("end-effector distance, worst condition [m]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(it, [r["kl_bound"] for r in iterations], "k--", label="KL bound")
    ax.plot(it, [kl_max(r["kl_model"]) for r in iterations], "o-",
            label="KL under the fitted dynamics (max)")
    ks = [kl_max(r.get("kl_samples")) for r in iterations]
    if np.any(np.isfinite(ks)):
        ax.plot(it, ks, "s-", label="KL on the next samples (max)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("KL [nats]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title or "MDGPS", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
