#!/usr/bin/env python3
"""CasADi LTV-MPC on fixed problems: the figures the casadi_mpc split must leave unchanged.

Runs every solver path (conic: hpipm, qrqp, osqp; nlpsol: ipopt, fatrop) on fixed,
deterministic problems -- an LQ problem with torque bounds solved three times in a row
(warm start and dual shift), a pendulum with position/velocity bounds and sequential
convexification, a barrier cost (PSD projection of a non-quadratic term), a problem
whose state bounds are infeasible (the relaxed re-solve), and five replans of arm2 with
the MuJoCo model -- and prints, per solve, status, iterations, solver iterations, cost,
QP objective, the first action u_0 and the first feedback gain row K_0[0].

Usage: run once with the old code first on PYTHONPATH and once with the new, then
``--compare a.json b.json`` prints the largest differences.

    PYTHONPATH=/tmp/before python bench/results/split-data-casadi-equivalence.py --json a.json
    python bench/results/split-data-casadi-equivalence.py --json b.json
    python bench/results/split-data-casadi-equivalence.py --compare a.json b.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "test", "core"))

SOLVERS = ["hpipm", "qrqp", "osqp", "ipopt", "fatrop"]


def _record(p, policy) -> dict:
    s = p.stats
    return {"status": s["status"], "solver_status": s["solver_status"],
            "iterations": s["iterations"], "solver_iterations": s["solver_iterations"],
            "cost": s["cost"], "objective": s["objective"], "feedback": s["feedback"],
            "projected_hessians": s["projected_hessians"],
            "u0": [float(v) for v in policy.k[0]], "K0": [float(v) for v in policy.K[0][0]]}


def run() -> dict:
    from analytic_models import Pendulum
    from test_casadi_mpc import LinearModel, _double_integrator, _random_lq

    from mbrl_ros.core.costs import JointLimitBarrier, QuadraticCost
    from mbrl_ros.core.planners.casadi_mpc import CasadiMPCPlanner, CasadiMPCSettings

    out: dict = {}

    def planner(T, nx, nu, lo, hi, dt=0.05, position_limits=None, **kw):
        return CasadiMPCPlanner(CasadiMPCSettings(horizon=T, **kw), nx, nu, lo, hi, dt,
                                position_limits=position_limits)

    # 1. LQ with torque bounds, three warm-started replans, every solver.
    model, cost, x0 = _random_lq(seed=1)
    for solver in SOLVERS:
        kw = {"tolerance": 1e-10} if solver == "osqp" else {}
        p = planner(20, 4, 2, -0.6, 0.6, solver=solver, **kw)
        rows = []
        for k in range(3):
            x = 2.0 * x0 + 0.1 * k
            rows.append(_record(p, p.optimize(x, 0.05 * k, model, cost)))
        out[f"lq_bounded/{solver}"] = rows

    # 2. Pendulum, position + velocity bounds, sequential convexification.
    pend = Pendulum()
    pcost = QuadraticCost.diagonal([1.0, 0.1], [0.05], [100.0, 10.0], x_target=[np.pi, 0.0])
    for solver in ["hpipm", "ipopt", "fatrop", "qrqp"]:
        p = planner(30, 2, 1, -3.0, 3.0, position_limits=np.array([[-0.5, 3.5]]),
                    velocity_limits=(6.0,), iterations=5, tol_step=1e-10, solver=solver)
        rows = [_record(p, p.optimize(np.zeros(2), 0.0, pend, pcost))]
        rows.append(_record(p, p.optimize(np.array([0.1, 0.2]), 0.1, pend, pcost)))
        out[f"pendulum_bounds/{solver}"] = rows

    # 3. Barrier term (second-order expansion of a non-quadratic cost).
    di = _double_integrator()
    bcost = (QuadraticCost.diagonal([10.0, 0.1], [1e-2], [100.0, 1.0], x_target=[2.0, 0.0])
             + JointLimitBarrier([-1.0], [1.0], nx=2, nu=1, weight=1e3))
    for solver in ["hpipm", "ipopt"]:
        p = planner(40, 2, 1, -5.0, 5.0, iterations=10, tol_step=1e-10, solver=solver)
        out[f"barrier/{solver}"] = [_record(p, p.optimize(np.zeros(2), 0.0, di, bcost))]

    # 4. State bounds infeasible at x0 (already past the limit): relaxed re-solve.
    lim = np.array([[-1.0, 1.0]])
    for solver in ["hpipm", "ipopt"]:
        p = planner(20, 2, 1, -0.1, 0.1, position_limits=lim, solver=solver)
        out[f"relaxed/{solver}"] = [_record(p, p.optimize(np.array([1.5, 1.0]), 0.0, di, bcost))]

    # 5. arm2 with the MuJoCo model: five replans along the planned trajectory.
    try:
        from mbrl_ros.core.models.mujoco_model import MujocoModel
        from mbrl_ros.sim.env import MujocoSim
        dt = 0.02
        sim = MujocoSim("arm2", control_period=dt)
        mj = MujocoModel.from_sim("arm2", control_period=dt)
        target = np.array([0.8, -1.2, 0.0, 0.0])
        acost = QuadraticCost.diagonal([100.0, 100.0, 1.0, 1.0], [1e-3, 1e-3],
                                       [1000.0, 1000.0, 10.0, 10.0], x_target=target)
        e = sim.effort_limits
        for solver in ["hpipm", "fatrop"]:
            p = planner(25, 4, 2, -e, e, dt=dt, position_limits=sim.position_limits,
                        solver=solver)
            x = np.array([0.1, -0.2, 0.0, 0.0])
            rows = []
            for k in range(5):
                pol = p.optimize(x, k * dt, mj, acost)
                rows.append(_record(p, pol))
                x = mj.predict(x, pol.action(x, k * dt))[0][0]
            out[f"arm2_mujoco/{solver}"] = rows
    except ImportError as exc:
        out["arm2_mujoco"] = f"skipped: {exc}"
    return out


def _flatten(v, prefix=""):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _flatten(x, f"{prefix}/{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _flatten(x, f"{prefix}[{i}]")
    else:
        yield prefix, v


def compare(a_path: str, b_path: str) -> int:
    a = dict(_flatten(json.load(open(a_path))["problems"]))
    b = dict(_flatten(json.load(open(b_path))["problems"]))
    worst, worst_key, exact_mismatch = 0.0, "", []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, float) and isinstance(vb, float):
            if np.isnan(va) and np.isnan(vb):
                continue
            d = abs(va - vb) / max(1.0, abs(va))
            if d > worst:
                worst, worst_key = d, k
        elif va != vb:
            exact_mismatch.append((k, va, vb))
    print(f"values compared: {len(a)}; largest relative float difference: {worst:.3g} ({worst_key})")
    for k, va, vb in exact_mismatch:
        print(f"  differs: {k}: {va!r} -> {vb!r}")
    return 0 if worst <= 1e-9 and not exact_mismatch else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the records to this file")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    if a.compare:
        sys.exit(compare(*a.compare))
    from mbrl_ros.core.threads import limit_threads
    limit_threads()
    import mbrl_ros.core.planners.casadi_mpc as cm
    res = {"module": cm.__file__, "problems": run()}
    text = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(f"{cm.__file__}: {len(res['problems'])} problems", file=sys.stderr)


if __name__ == "__main__":
    main()
