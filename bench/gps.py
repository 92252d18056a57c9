#!/usr/bin/env python3
"""Benchmark guided policy search (MDGPS) on the arm2 joint-space reaching task.

The learning curve: after each iteration, the mean trajectory cost of the
linear-Gaussian controllers' (noisy) samples and of the global policy's mean action, the
global policy's final joint error (max over conditions and joints) against the simulated
interaction time spent on samples; and the interaction needed until that error is below
0.05 rad. The time per iteration split into sampling (MuJoCo rollouts and cost), dynamics
fit (GMM prior + per-step TVLG fits), policy linearisation, C-step (KL-constrained LQG with
the eta search, all conditions), S-step (network training) and evaluation (global-policy
rollouts), as medians over the iterations after the first (which also catches the policy
up with the initial controllers and imports torch); and one ``action()`` call of the
global policy.

One torch thread and one BLAS thread (the targets are per core).
Usage: python bench/gps.py [--quick] [--json PATH] [--iterations N] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

from mbrl_ros.core.algorithms.gps_run import GPSRunConfig, run_gps  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402

THRESHOLD = 0.05   # rad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 conditions, 4 samples, 3 iterations (< 1 min)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--iterations", type=int, default=0, help="default 8 (--quick 3)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    limit_threads()
    cfg = GPSRunConfig(robot="arm2", iterations=a.iterations, quick=a.quick, seed=a.seed,
                       progress=False, write=False).resolved()
    t0 = time.perf_counter()
    rep = run_gps(cfg)
    wall = time.perf_counter() - t0
    hist = rep["history"]
    curve = []
    reached = None
    for r in hist:
        err = max(r["policy_final_distance"])
        curve.append({"iteration": r["iteration"], "samples": r["samples"],
                      "interaction_seconds": r["interaction_seconds"],
                      "cost_lg": round(float(np.mean(r["cost_lg"])), 3),
                      "cost_policy": round(float(np.mean(r["cost_policy"])), 3),
                      "final_joint_error": round(err, 5), "kl_bound": round(r["epsilon"], 3),
                      "eta_mean": float(np.mean(r["eta"]))})
        if reached is None and err < THRESHOLD:
            reached = r["interaction_seconds"]
    phases = ("sampling", "dynamics", "policy_linearization", "c_step", "s_step", "evaluation")
    later = hist[1:] or hist
    per_it = {p: round(float(np.median([r["timings"][p] for r in later])), 4) for p in phases}
    per_it["total"] = round(float(np.median([sum(r["timings"][p] for p in phases)
                                             for r in later])), 4)
    first = {p: round(hist[0]["timings"][p], 4) for p in phases}
    write_json(a.json, {
        "benchmark": "gps", "robot": "arm2", "conditions": cfg.conditions,
        "samples_per_condition": cfg.samples, "horizon": cfg.horizon, "dt": rep["dt"],
        "iterations": cfg.iterations, "policy_hidden": list(cfg.policy.hidden),
        "policy_adam_steps": cfg.policy.iterations,
        "do_nothing_final_joint_error": round(min(rep["do_nothing_final_distance"]), 4),
        "threshold_rad": THRESHOLD, "interaction_seconds_to_threshold": reached,
        "learning_curve": curve, "seconds_per_iteration_median": per_it,
        "seconds_first_iteration": first,
        "policy_action_us": round(rep["policy_action_seconds"] * 1e6, 2),
        "wall_seconds": round(wall, 2)})


if __name__ == "__main__":
    main()
