#!/usr/bin/env python3
"""Benchmark the learn-and-control loop: learning curves against interaction time.

Runs ``mbrl-ros demo`` (the real nodes in one process, lockstep simulation) for each robot,
model and planner, without a planner switch, and reports per iteration the simulated
interaction time, environment steps, task cost and final distance, plus when the task was
first solved:
  - arm2 reaching: end effector within 2 cm of the target (target: <= 2,000 steps; PETS
    budgets 15,000 on its reacher);
  - cartpole swing-up: pole within 0.2 rad of upright and cart within 0.5 m at the end of an
    episode (target: <= 20 s of interaction; PILCO reports ~17.5 s on a real cart-pole).

Usage: python bench/demo.py [--quick] [--json PATH] [--robots arm2,cartpole]
       [--models gp,ensemble,linear] [--planners ilqr,mppi]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

from mbrl_ros.core.threads import limit_threads  # noqa: E402


def solved(robot: str, row: dict) -> bool:
    if row["phase"] != "control" or row["final_distance"] is None:
        return False
    if robot == "cartpole":      # per-joint errors, the pole's wrapped to [-pi, pi]
        cart, pole = row["extra"]["final_errors"]
        return abs(pole) < 0.2 and abs(cart) < 0.5
    return row["final_distance"] < 0.02


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="arm2 with gp and ilqr only")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--robots", default="arm2,cartpole")
    ap.add_argument("--models", default="gp,ensemble,linear")
    ap.add_argument("--planners", default="ilqr,mppi")
    ap.add_argument("--iterations", type=int, default=6)
    a = ap.parse_args()
    limit_threads()
    from mbrl_ros.ros.demo import DemoConfig, run_demo
    robots = ["arm2"] if a.quick else a.robots.split(",")
    models = ["gp"] if a.quick else a.models.split(",")
    planners = ["ilqr"] if a.quick else a.planners.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for robot in robots:
            for model in models:
                for planner in planners:
                    cfg = DemoConfig(robot=robot, model=model, planner=planner, switch_to="",
                                     iterations=3 if a.quick else a.iterations,
                                     excite_seconds=None if robot == "cartpole" else 5.0,
                                     out=Path(tmp) / f"{robot}_{model}_{planner}",
                                     progress=False)
                    try:
                        summary = run_demo(cfg)
                    except Exception as e:      # report and continue with the others
                        runs.append({"robot": robot, "model": model, "planner": planner,
                                     "error": f"{type(e).__name__}: {e}"})
                        print(runs[-1], file=sys.stderr, flush=True)
                        continue
                    runs.append(summarize(summary))
                    print({k: v for k, v in runs[-1].items() if k != "curve"},
                          file=sys.stderr, flush=True)
                    write(a.json, runs)     # after every run: a time limit loses nothing
    write(a.json, runs)


def summarize(summary: dict) -> dict:
    """One run's learning curve and when it first solved the task (from metrics.json)."""
    robot = summary["config"]["robot"]
    rows = summary["iterations"]
    first = next((r for r in rows if solved(robot, r)), None)
    return {"robot": robot, "model": summary["config"]["model"],
            "planner": summary["config"]["planner"],
            "curve": [{k: r[k] for k in ("iteration", "interaction_seconds", "steps",
                                         "task_cost", "final_distance", "model_error")}
                      for r in rows],
            "solved_at_seconds": first["interaction_seconds"] if first else None,
            "solved_at_steps": first["steps"] if first else None,
            "final_distance": rows[-1]["final_distance"],
            "wall_seconds": summary["wall_seconds"]}


def write(path, runs) -> None:
    write_json(path, {"benchmark": "demo", "runs": runs,
                      "targets": {"arm2": "< 0.02 m within 2000 steps",
                                  "cartpole": "upright within 20 s of interaction"}})


if __name__ == "__main__":
    main()
