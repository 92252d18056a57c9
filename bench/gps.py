#!/usr/bin/env python3
"""Benchmark guided policy search (MDGPS) with a target-conditioned global policy.

arm7 (Panda kinematics, gravity on) with ``config/gps_arm7.yaml``: 4 training conditions
(start at home, 4 targets) and 4 held-out targets; and arm2 with ``config/gps_arm2.yaml``
(4 + 4). Per iteration: the end-effector distance [m] of the local linear-Gaussian
controllers' samples, of the global policy's mean on the training conditions and on the
held-out conditions (worst and mean over conditions), the KL bound / KL under the fitted
dynamics / KL measured on the next samples, and the wall time split by phase (sampling,
dynamics fit, policy linearisation, C-step, S-step, evaluation). Targets (issue 14): local
controllers < 1 cm within 10 iterations x 5 samples per condition; global policy < 2 cm on
the held-out targets. The first iteration that meets each is reported.

One torch thread and one BLAS thread. The wall times depend on the machine's load: the
load average is recorded next to them.
Usage: python bench/gps.py [--quick] [--json PATH] [--robots arm7,arm2] [--iterations N]
       [--horizon T] [--gps KEY=VALUE ...]
``--gps`` overrides a GPS setting of the configs (e.g. ``--gps kl_sample_correction=false``
for the run without the sample-KL correction).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

from mbrl_ros.core.algorithms.gps_run import load_config, run_gps  # noqa: E402
from mbrl_ros.core.plots import kl_max  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCAL_TARGET = 0.01      # m
HELDOUT_TARGET = 0.02    # m
PHASES = ("sampling", "dynamics", "policy_linearisation", "c_step", "s_step", "evaluation")


def _first(its, key, limit):
    for r in its:
        if r.get(key) and max(r[key]) < limit:
            return r["iteration"]
    return None


def bench(robot: str, quick: bool, iterations: int, seed: int, horizon: int = 0,
          gps: dict | None = None) -> dict:
    cfg = load_config(ROOT / "config" / f"gps_{robot}.yaml")
    if gps:
        cfg = dataclasses.replace(cfg, gps={**cfg.gps, **gps})
    if quick:
        cfg = dataclasses.replace(cfg, iterations=4 if robot == "arm7" else 3)
    if iterations:
        cfg = dataclasses.replace(cfg, iterations=iterations)
    if horizon:
        cfg = dataclasses.replace(cfg, horizon=horizon)
    cfg = dataclasses.replace(cfg, seed=seed, progress=False, write=False).resolved()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rep = run_gps(cfg)
    wall = time.perf_counter() - t0
    its = rep["iterations"]
    curve = []
    for r in its:
        row = {"iteration": r["iteration"], "interaction_seconds": r["interaction_seconds"],
               "local_cost": round(r["local_cost"], 3),
               "policy_cost": round(r["policy_cost"], 3)}
        for key in ("final_distance_m", "policy_final_distance_m",
                    "policy_heldout_distance_m"):
            row[key + "_max"] = round(max(r[key]), 5)
            row[key + "_mean"] = round(float(np.mean(r[key])), 5)
        row.update(kl_bound=round(r["kl_bound"], 3),
                   kl_model_max=round(kl_max(r["kl_model"]), 3),
                   kl_samples_max=None if not r["kl_samples"] else round(kl_max(r["kl_samples"]), 3),
                   kl_samples_over_bound=None if not r["kl_samples"] else
                   round(kl_max(r["kl_samples"]) / r["kl_bound"], 3),
                   kl_correction=r.get("kl_correction"),
                   step_mult=round(r["step_mult"], 4), discarded_samples=r["discarded_samples"],
                   warnings=r["warnings"],
                   seconds={p: round(r["timings"][p], 3) for p in PHASES})
        row["seconds"]["total"] = round(sum(row["seconds"][p] for p in PHASES), 3)
        curve.append(row)
    best = min(its, key=lambda r: float(np.mean(r["policy_heldout_distance_m"])))
    return {
        "robot": robot, "config": f"config/gps_{robot}.yaml", "seed": seed,
        "gps_overrides": gps or {},
        "iterations": cfg.iterations,
        "conditions": cfg.conditions, "heldout_conditions": len(cfg.heldout_targets),
        "samples_per_condition": cfg.samples, "horizon": cfg.horizon, "dt": cfg.control_period,
        "policy_hidden": list(cfg.policy.hidden), "policy_adam_steps": cfg.policy.iterations,
        "do_nothing_distance_m": [round(d, 4) for d in rep["do_nothing_distance_m"]],
        "first_iteration_local_below_1cm": _first(its, "final_distance_m", LOCAL_TARGET),
        "first_iteration_policy_train_below_1cm": _first(its, "policy_final_distance_m",
                                                         LOCAL_TARGET),
        "first_iteration_heldout_below_2cm": _first(its, "policy_heldout_distance_m",
                                                    HELDOUT_TARGET),
        "best_heldout_iteration": best["iteration"],
        "best_heldout_distance_m_max": round(max(best["policy_heldout_distance_m"]), 5),
        "best_heldout_distance_m_mean": round(float(np.mean(best["policy_heldout_distance_m"])), 5),
        "learning_curve": curve,
        "seconds_per_iteration_median": {
            p: round(float(np.median([c["seconds"][p] for c in curve[1:] or curve])), 3)
            for p in PHASES + ("total",)},
        "policy_action_us": round(rep.get("policy_action_seconds", float("nan")) * 1e6, 2),
        "wall_seconds": round(wall, 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="arm7: 4 iterations, arm2: 3 (the configs' conditions and samples)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--robots", default="arm7,arm2")
    ap.add_argument("--iterations", type=int, default=0,
                    help="override the configs' iterations (arm7 10, arm2 8)")
    ap.add_argument("--horizon", type=int, default=0,
                    help="override the configs' steps per trajectory (arm7 60, arm2 40; the "
                         "reference budget has 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gps", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GPS setting (YAML value), e.g. kl_sample_correction=false")
    a = ap.parse_args()
    import yaml
    gps = {}
    for kv in a.gps:
        key, sep, val = kv.partition("=")
        if not sep:
            ap.error(f"--gps expects KEY=VALUE, got {kv!r}")
        gps[key.strip()] = yaml.safe_load(val)
    limit_threads()
    out = {"benchmark": "gps", "quick": a.quick, "nproc": os.cpu_count(),
           "targets_m": {"local": LOCAL_TARGET, "heldout": HELDOUT_TARGET}, "runs": []}
    for robot in a.robots.split(","):
        r = bench(robot.strip(), a.quick, a.iterations, a.seed, a.horizon, gps)
        out["runs"].append(r)
        print(f"{robot}: local<1cm at it {r['first_iteration_local_below_1cm']}, held-out<2cm "
              f"at it {r['first_iteration_heldout_below_2cm']}, best held-out "
              f"{r['best_heldout_distance_m_max'] * 100:.2f} cm (max) at it "
              f"{r['best_heldout_iteration']}; {r['wall_seconds']} s", file=sys.stderr)
    write_json(a.json, out)


if __name__ == "__main__":
    main()
