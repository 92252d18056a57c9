"""Report figures (matplotlib, no display needed)."""
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
