#!/usr/bin/env python3
"""Sampling MPC when replans are several control periods apart (issue 4).

A real-time controller replans every few control periods (a 40-60 ms solve at 100 Hz) and
its plan takes over a solve time after the state it started from. This benchmark runs
arm2 reaching ([0.5, -0.5] rad, 5 s at 100 Hz, horizon 40) without ROS
(``mbrl_ros.core.control.closed_loop.run_episode``) and compares, per planner (MPPI 64 samples,
CEM 128 candidates):

  A. replanning every 5 steps, known model: the steps appended to the shifted plan
     (``warm_start_fill``: 'hold' vs 'repeat' vs 'zero');
  B. replanning every 5 steps with a 4-step solve delay, known model: latency compensation
     off / on (``MPCController.replan(lookahead=...)``, the node's ``latency_compensation``);
  C. replanning every 5 steps, a learned linear model (20 s of excitation): the sampling
     plan open loop vs with TV-LQR gains along it (``feedback``: 'none' vs 'lqr').

Reported per run: the largest joint error over the last 2.5 s (holding the target) and at
the end. The runs are deterministic (lockstep simulation; seeded planners), so the machine's
load changes nothing but the wall time.

Usage: python bench/slow_replans.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

from mbrl_ros.core.threads import limit_threads  # noqa: E402

TARGET = np.array([0.5, -0.5])
SIZE = {"mppi": {"samples": 64}, "cem": {"population": 128}}


def run(planner: str, model, settings: dict, steps: int, every: int, delay: int = 0,
        compensate: bool = False) -> dict:
    from mbrl_ros.core import registry
    from mbrl_ros.core.control.mpc import CostSettings, MPCController
    from mbrl_ros.core.settings import from_mapping
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim("arm2", control_period=0.01)
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {"horizon": 40, **SIZE[planner], **settings})
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), [planner],
                        planner, 40, sim.effort_limits, sim.position_limits, CostSettings())
    mpc.set_model(model)
    mpc.set_target(TARGET)
    tic = time.perf_counter()
    res = run_episode(sim, mpc, steps, replan_every=every, plan_delay=delay,
                      compensate=compensate)
    err = np.abs(res.xs[:, :2] - TARGET).max(axis=1)
    return {"planner": planner, **settings, "replan_every": every, "plan_delay": delay,
            "compensate": compensate, "hold_max_rad": round(float(err[steps // 2:].max()), 4),
            "final_rad": round(float(err[-1]), 4),
            "replan_ms_median": round(float(np.median(res.replan_s[1:])) * 1e3, 2),
            "wall_s": round(time.perf_counter() - tic, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MPPI only, part A")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    from mbrl_ros.core.fitting import FitSettings, fit_model
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    from mbrl_ros.core.control.closed_loop import simulate_excitation
    known = MujocoModel.from_sim("arm2", control_period=0.01)
    steps = 500
    planners = ["mppi"] if a.quick else ["mppi", "cem"]
    rows = []

    def add(part: str, row: dict) -> None:
        row = {"part": part, **row}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)

    for p in planners:
        for fill in ("hold", "repeat", "zero"):
            add("A", run(p, known, {"warm_start_fill": fill}, steps, 5))
    if not a.quick:
        for p in planners:
            for comp in (False, True):
                add("B", run(p, known, {}, steps, 5, delay=4, compensate=comp))
        linear = fit_model(simulate_excitation("arm2", 20.0, 4),
                           FitSettings(model="linear", val_fraction=0.1), {}).model
        for p in planners:
            for fb in ("none", "lqr"):
                add("C", run(p, linear, {"feedback": fb}, steps, 5))
    write_json(a.json, {"benchmark": "slow_replans", "robot": "arm2", "steps": steps,
                        "horizon": 40, "rows": rows})


if __name__ == "__main__":
    main()
