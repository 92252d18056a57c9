"""Validation of dynamics models on held-out transitions: one-step and open-loop rollout
errors, and the predicted-vs-actual trajectories that reports plot.

Rollouts start at every ``horizon``-th transition of each episode and feed the model its
own predictions with the logged actions for ``horizon`` steps (time-varying models get the
step index within the episode). Errors are RMSE over all state dimensions in the data's
units (rad, m, rad/s, m/s), plus per-dimension values for reports.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.models.base import DynamicsModel
from mbrl_ros.core.types import TransitionBatch


def _predict(model: DynamicsModel, x: np.ndarray, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    return model.predict(x, u, t if model.time_varying else None)[0]


def _step_index(batch: TransitionBatch) -> np.ndarray:
    """Index of each transition within its episode (0, 1, ...), batch in time order."""
    idx = np.zeros(len(batch), dtype=np.int64)
    for e in np.unique(batch.episode):
        m = np.flatnonzero(batch.episode == e)
        idx[m] = np.arange(m.size)
    return idx


def one_step_errors(model: DynamicsModel, batch: TransitionBatch) -> np.ndarray:
    """(N, nx) one-step prediction errors (prediction - actual)."""
    pred = _predict(model, batch.states, batch.actions, _step_index(batch))
    return pred - batch.next_states


@dataclass
class Rollouts:
    """Open-loop rollouts: predicted and actual states, (R, H+1, nx) each, and the
    (R, H+1) times [s] from each rollout's start."""
    predicted: np.ndarray
    actual: np.ndarray
    time: np.ndarray
    episode: np.ndarray        # (R,) episode id of each rollout

    def rmse(self) -> float:
        return float(np.sqrt(np.mean((self.predicted[:, 1:] - self.actual[:, 1:]) ** 2))) \
            if len(self.predicted) else float("nan")

    def final_rmse(self) -> float:
        """RMSE at the last step of the horizon only."""
        return float(np.sqrt(np.mean((self.predicted[:, -1] - self.actual[:, -1]) ** 2))) \
            if len(self.predicted) else float("nan")


def _contiguous_runs(batch: TransitionBatch) -> list[tuple[int, np.ndarray]]:
    """(episode, indices) of runs where each transition starts where the previous ended:
    a dropped state or command inside an episode leaves a hole no rollout may cross."""
    runs = []
    for e in np.unique(batch.episode):
        m = np.flatnonzero(batch.episode == e)
        if m.size == 0:
            continue
        joined = np.all(np.isclose(batch.states[m[1:]], batch.next_states[m[:-1]],
                                   rtol=0.0, atol=1e-9), axis=1)
        cuts = np.flatnonzero(~joined) + 1
        runs += [(e, part) for part in np.split(m, cuts)]
    return runs


def blocks(batch: TransitionBatch, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint contiguous blocks of ``length`` transitions: every ``length``-th start of
    each contiguous run, none crossing a hole.

    Returns:
        (R, length) transition indices and (R,) the episode of each block.
    """
    if length < 1:
        raise ValueError(f"block length must be >= 1, got {length}")
    idx, eps = [], []
    for e, m in _contiguous_runs(batch):
        for s in range(0, m.size - length + 1, length):
            idx.append(m[s:s + length])
            eps.append(e)
    if not idx:
        return np.zeros((0, length), np.int64), np.zeros(0, np.int64)
    return np.stack(idx), np.asarray(eps)


def rollouts(model: DynamicsModel, batch: TransitionBatch, horizon: int = 20) -> Rollouts:
    """Open-loop rollouts of ``horizon`` steps, batched over all start points of the
    contiguous runs of each episode."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    idx, eps = blocks(batch, horizon)                   # (R, H) transition indices
    nx = batch.nx
    if not len(idx):
        z = np.zeros((0, horizon + 1, nx))
        return Rollouts(z, z.copy(), np.zeros((0, horizon + 1)), np.zeros(0, np.int64))
    step = _step_index(batch)
    R = idx.shape[0]
    pred = np.empty((R, horizon + 1, nx))
    pred[:, 0] = batch.states[idx[:, 0]]
    for h in range(horizon):
        pred[:, h + 1] = _predict(model, pred[:, h], batch.actions[idx[:, h]], step[idx[:, h]])
    actual = np.concatenate([batch.states[idx[:, :1]], batch.next_states[idx]], axis=1)
    dt = batch.dt[idx]
    time = np.concatenate([np.zeros((R, 1)), np.cumsum(dt, axis=1)], axis=1)
    return Rollouts(pred, actual, time, eps)


def validation_metrics(model: DynamicsModel, batch: TransitionBatch,
                       horizon: int = 20) -> dict[str, float]:
    """``one_step_rmse`` and ``rollout_rmse`` (mean over the horizon) on ``batch``."""
    if len(batch) == 0:
        return {"one_step_rmse": float("nan"), "rollout_rmse": float("nan")}
    err = one_step_errors(model, batch)
    # Validation episodes shorter than the horizon would give no rollout at all (and a NaN
    # that rejects every model): shorten the horizon to the longest contiguous run.
    longest = max(m.size for _, m in _contiguous_runs(batch))
    horizon = max(1, min(horizon, longest))
    ro = rollouts(model, batch, horizon)
    out = {"one_step_rmse": float(np.sqrt(np.mean(err ** 2))),
           "rollout_rmse": ro.rmse(), "rollout_final_rmse": ro.final_rmse(),
           "rollout_horizon": float(horizon), "rollouts": float(len(ro.predicted))}
    if not np.all(np.isfinite(err)):
        out["one_step_rmse"] = float("inf")
    return out
