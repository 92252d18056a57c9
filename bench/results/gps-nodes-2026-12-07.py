"""GPS samples in-process vs through the nodes (issue 14, Deliver 2): agreement and wall
time per sample, side by side in one process (alternating, the same seed each time).

    .venv/bin/python bench/results/gps-nodes-2026-12-07.py [--reps 3] [--json OUT]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
from mbrl_ros.core.algorithms.gps_run import GPSRunConfig
from mbrl_ros.core.algorithms.sim_env import reach_task
from mbrl_ros.ros.gps_driver import NodeSampler


def make(robot, T, samples, seed, sampler=None):
    cfg = GPSRunConfig(robot=robot, horizon=T, conditions=2).resolved()
    task = reach_task(robot, conditions=2, horizon=T, seed=seed, starts=cfg.starts,
                      targets=cfg.targets, cost=cfg.cost, init_std=cfg.init_std,
                      init_damping=cfg.init_damping, init_kp=cfg.init_kp,
                      limit_margin=cfg.limit_margin, max_velocity=cfg.max_velocity)
    gps = MDGPS(task.env, task.costs, GPSSettings(horizon=T, samples=samples, seed=seed),
                initial_controllers=task.initial_controllers, tasks=task.targets,
                distance=task.distances(), sampler=sampler)
    return gps, task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for robot, T, samples in (("arm2", 40, 5), ("arm7", 100, 5)):
        for rep in range(args.reps):
            ref, task = make(robot, T, samples, seed=rep)
            t0 = time.perf_counter()
            a = ref.draw_samples()
            t_in = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                ns = NodeSampler(task.env, task.targets, d)
                t_start = time.perf_counter() - t0
                with ns:
                    alt, _ = make(robot, T, samples, seed=rep, sampler=ns)
                    t0 = time.perf_counter()
                    b = alt.draw_samples()
                    t_nodes = time.perf_counter() - t0
                    # one iteration each, then the policy evaluation went through the nodes
                    ra, rb = ref.iteration(a), alt.iteration(b)
                    n_ep = ns.samples
            n = 2 * samples
            rows.append({
                "robot": robot, "T": T, "samples": n, "seed": rep,
                "max_abs_dX": float(np.abs(a[0] - b[0]).max()),
                "max_abs_dU": float(np.abs(a[1] - b[1]).max()),
                "discarded": [int(a[3][0]), int(b[3][0])],
                "rng_equal": ref.rng.bit_generator.state == alt.rng.bit_generator.state,
                "iteration_equal": (ra.cost_lg == rb.cost_lg and ra.kl == rb.kl
                                    and ra.cost_policy == rb.cost_policy),
                "iteration_differs_in": [k for k in ("cost_lg", "kl", "eta", "cost_policy",
                                                     "policy_final_distance", "policy_rmse",
                                                     "dynamics_rmse")
                                         if getattr(ra, k) != getattr(rb, k)],
                "episodes_through_nodes": n_ep,
                "node_start_s": t_start,
                "inproc_ms_per_sample": 1000 * t_in / n,
                "nodes_ms_per_sample": 1000 * t_nodes / n,
                "nodes_ms_per_step": 1000 * t_nodes / (n * T),
                "ratio": t_nodes / t_in,
            })
            print(json.dumps(rows[-1]), flush=True)
    out = {"loadavg": open("/proc/loadavg").read().split()[:3], "nproc": os.cpu_count(),
           "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
