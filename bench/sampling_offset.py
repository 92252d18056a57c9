#!/usr/bin/env python3
"""Steady-state offset of sampling MPC on arm2 with learned models (issue 15, item 3).

Lockstep (no ROS, ``run_episode``: replanning every 10 ms control step, horizon 30), arm2
from home (+ seeded noise) to [0.5, -0.5] rad. Models fitted on simulated excitation
(``simulate_excitation('arm2', seconds, 4)``): a GP and a 5-member ensemble (30 epochs).
Per planner (MPPI, CEM; sampling planners with ``refine`` 'none' and 'newton'; iLQR, 2
iterations, as the reference on the same model -- its distance is the model's own bias)
the end-effector distance at the end and its largest value over the last second. The runs
are deterministic (seeded), so the machine's load changes only the wall time.

Usage: python bench/sampling_offset.py [--quick] [--json PATH]
  --quick: 5 s of data, 64 samples, 200 steps (the configuration of
  test/core/test_sampling_offset.py); default: also 20 s of data, 256 samples, 300 steps.
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


def fit(kind: str, seconds: float):
    from mbrl_ros.core.control.closed_loop import simulate_excitation
    from mbrl_ros.core.fitting import FitSettings, fit_model
    data = simulate_excitation("arm2", seconds, 4)
    settings = {"ensemble": {"epochs": 30}}.get(kind, {})
    return fit_model(data, FitSettings(model=kind, val_fraction=0.1), settings).model


def run(planner: str, model, settings: dict, steps: int, horizon: int = 30) -> dict:
    from mbrl_ros.core import registry
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.core.control.mpc import CostSettings, MPCController
    from mbrl_ros.core.settings import from_mapping
    from mbrl_ros.sim.env import MujocoSim
    fk = MujocoSim("arm2")

    def ee(q):
        fk.set_state(q, np.zeros(2))
        return fk.ee_position()
    goal = ee(TARGET)
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {"horizon": horizon, **settings})
    sim = MujocoSim("arm2", control_period=0.01, seed=1, initial_noise=0.05)
    sim.reset()
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), [planner],
                        planner, horizon, sim.effort_limits, sim.position_limits,
                        CostSettings())
    mpc.set_model(model)
    mpc.set_target(TARGET)
    refine = []
    replan = mpc.replan

    def timed(*a, **k):
        policy = replan(*a, **k)
        if "time_refine_s" in mpc.stats:
            refine.append(mpc.stats["time_refine_s"])
        return policy
    mpc.replan = timed
    tic = time.perf_counter()
    res = run_episode(sim, mpc, steps)
    d = np.array([np.linalg.norm(ee(x[:2]) - goal) for x in res.xs])
    return {"planner": planner, **settings, "final_cm": round(100 * float(d[-1]), 3),
            "last1s_max_cm": round(100 * float(d[-100:].max()), 3),
            "replan_ms_median": round(1e3 * float(np.median(res.replan_s[1:])), 1),
            "refine_ms_median": round(1e3 * float(np.median(refine)), 1) if refine else None,
            "wall_s": round(time.perf_counter() - tic, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s of data, 64 samples only")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    configs = [(5.0, 64, 200)] + ([] if a.quick else [(20.0, 256, 300)])
    rows = []
    load = [os.getloadavg()[0]]
    for seconds, n, steps in configs:
        for kind in ("gp", "ensemble"):
            model = fit(kind, seconds)
            for planner, size in (("mppi", {"samples": n}), ("cem", {"population": n})):
                for refine in ("none", "newton"):
                    row = {"data_s": seconds, "model": kind,
                           **run(planner, model, {**size, "refine": refine}, steps)}
                    rows.append(row)
                    print(row, file=sys.stderr, flush=True)
            row = {"data_s": seconds, "model": kind,
                   **run("ilqr", model, {"max_iterations": 2}, steps)}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    write_json(a.json, {"benchmark": "sampling_offset", "robot": "arm2",
                        "target": TARGET.tolist(), "load_1min_start_end": load,
                        "rows": rows})


if __name__ == "__main__":
    main()
