#!/usr/bin/env python3
"""Benchmark the dynamics models on excitation data of arm2, cartpole and arm7.

For N = 500, 2,000 and 10,000 training transitions (consecutive, from excitation
episodes of 4 s), each model is fitted and validated on 5 held-out episodes simulated with
another seed: fit time, one-step RMSE and 20-step open-loop RMSE (the same metrics as
``mbrl-ros fit``). Also: GP mean+variance latency of one query; TVLG fit time for T=100
with 5 samples on arm7; and how much gp and ensemble beat ``linear`` on the 20-step error
(ratio linear / model, > 1 is better).

One torch thread and one BLAS thread (the targets are per core).
Usage: python bench/models.py [--quick] [--json PATH] [--robots arm2,cartpole,arm7]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

from mbrl_ros.core import registry  # noqa: E402
from mbrl_ros.core.fitting import FitSettings, fit_model  # noqa: E402
from mbrl_ros.core.models.evaluate import validation_metrics  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402
from mbrl_ros.core.control.closed_loop import simulate_excitation  # noqa: E402

EPISODE_S = 4.0


def first_n(batch, n):
    """The first n transitions (whole episodes first, then a part of the next)."""
    return batch.subset(np.arange(min(n, len(batch))))


def gp_query_latency(model, data, n=200) -> float:
    """Median seconds for predict() of ONE (x, u) with mean and variance."""
    idx = np.random.default_rng(0).integers(0, len(data), n)
    times = []
    for i in idx:
        t0 = time.perf_counter()
        model.predict(data.states[i], data.actions[i])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_robot(robot: str, sizes: list[int], models: list[str]) -> dict:
    n_max = max(sizes)
    episodes = int(np.ceil(n_max * 0.01 / EPISODE_S))
    data = simulate_excitation(robot, episodes * EPISODE_S, episodes, seed=1)
    val = simulate_excitation(robot, 5 * EPISODE_S, 5, seed=99)
    rows = []
    for n in sizes:
        train = first_n(data, n)
        for kind in models:
            settings = {"mujoco": {"mjcf": robot, "control_period": 0.01}}.get(kind, {})
            t0 = time.perf_counter()
            try:
                res = fit_model(train, FitSettings(model=kind, val_fraction=0.0), settings,
                                robot=robot)
            except Exception as e:       # report and keep going (e.g. too few samples)
                rows.append({"model": kind, "n_train": n, "error": f"{type(e).__name__}: {e}"})
                continue
            fit_s = time.perf_counter() - t0
            m = validation_metrics(res.model, val, 20)
            row = {"model": kind, "n_train": n, "fit_seconds": round(fit_s, 3),
                   "one_step_rmse": round(m["one_step_rmse"], 6),
                   "rollout20_rmse": round(m["rollout_rmse"], 5)}
            if kind == "gp":
                row["predict_1_ms"] = round(gp_query_latency(res.model, val) * 1e3, 4)
                row["gp_mode"] = res.model.mode                    # 'exact' | 'sparse'
                row["gp_outliers"] = int(res.report.metrics.get("outliers", 0))
            rows.append(row)
            print(robot, row, file=sys.stderr, flush=True)
    ratios = {}
    for n in sizes:
        lin = next((r for r in rows if r["model"] == "linear" and r["n_train"] == n
                    and "rollout20_rmse" in r), None)
        for kind in ("gp", "ensemble"):
            r = next((r for r in rows if r["model"] == kind and r["n_train"] == n
                      and "rollout20_rmse" in r), None)
            if lin and r:
                ratios[f"{kind}@{n}"] = round(lin["rollout20_rmse"] / r["rollout20_rmse"], 2)
    return {"robot": robot, "results": rows, "linear_over_model_rollout20": ratios}


def bench_tvlg(samples: int = 5, T: int = 100) -> dict:
    """TVLG fit on arm7 for T steps from `samples` trajectories (the GPS inner loop): the
    per-step fit with the prior (fit_trajectories) timed apart from the prior's EM update."""
    from mbrl_ros.core.models.tvlg import TVLGModel
    data = simulate_excitation("arm7", samples * (T + 1) * 0.01 * 4, samples * 4, seed=2)
    eps = data.episodes()
    X = np.stack([np.vstack([e.states[:T + 1]]) for e in eps])[:, :T + 1]
    U = np.stack([e.actions[:T] for e in eps])
    model = TVLGModel()
    model.fit(data.subset(np.isin(data.episode, np.unique(data.episode)[:samples * 2])))
    t0 = time.perf_counter()
    model.update_prior(X[:samples], U[:samples], np.random.default_rng(0))
    prior_s = time.perf_counter() - t0
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        model.fit_trajectories(X[:samples], U[:samples])
        times.append(time.perf_counter() - t0)
    return {"T": T, "samples": samples, "nx": 14, "nu": 7,
            "fit_trajectories_ms_median": round(float(np.median(times)) * 1e3, 2),
            "prior_update_ms": round(prior_s * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="arm2 only, N = 500 and 2,000")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--robots", default="arm2,cartpole,arm7")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    sizes = [500, 2000] if a.quick else [500, 2000, 10000]
    robots = ["arm2"] if a.quick else a.robots.split(",")
    # every time-invariant model (the time-varying tvlg: bench_tvlg)
    models = [m for m in registry.names("model")
              if not registry.lookup("model", m).time_varying]
    out = {"benchmark": "models", "sizes": sizes,
           "robots": [bench_robot(r, sizes, models) for r in robots]}
    try:
        out["tvlg_arm7"] = bench_tvlg()
    except Exception as e:
        out["tvlg_arm7"] = {"error": f"{type(e).__name__}: {e}"}
    write_json(a.json, out)


if __name__ == "__main__":
    main()
