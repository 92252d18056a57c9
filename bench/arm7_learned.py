#!/usr/bin/env python3
"""arm7 with learned models (issue 15 item 2): iLQR over the ensemble and the GP, MPPI over
the ensemble, beside iLQR on the known MuJoCo model from the same start.

In process, deterministic (no ROS, no wall clock in the loop's outcome): excitation data
is simulated (``simulate_excitation``, the same transitions the lockstep recorder makes),
each model is fitted on it, and each planner runs one closed-loop reaching episode of the
arm7 task from the same perturbed home pose, replanning every control period (the
controller's plan on every state). Reported per run: the final end-effector distance [m]
(MuJoCo forward kinematics of the final joint positions vs the target's), the final joint
error, and the replan time split into the planner's own parts (``Planner.stats``:
linearisation, cost derivatives, backward pass, rollouts/line search) -- medians over the
episode, the first (cold) replan excluded. The models' open-loop errors on a held-out
excitation episode are reported too (1 step and 20 steps), so that a model limit shows up
as such.

Usage:
  python bench/arm7_learned.py [--excite 60] [--episodes 6] [--steps 300] \
      [--bandwidth 1.5 --damping 0.7 --noise 0.3] [--models ensemble,gp] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import percentile  # noqa: E402

from mbrl_ros.core import registry  # noqa: E402
from mbrl_ros.core.control.closed_loop import simulate_excitation  # noqa: E402
from mbrl_ros.core.control.mpc import CostSettings, MPCController  # noqa: E402
from mbrl_ros.core.policies.excitation import ExcitationSettings  # noqa: E402
from mbrl_ros.core.robot import RobotDescription  # noqa: E402
from mbrl_ros.core.settings import from_mapping  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402
from mbrl_ros.sim.env import MujocoSim  # noqa: E402

TARGET = np.array([0.3, -0.5, 0.0, -2.0, 0.0, 1.6, 0.8])     # config/arm7.yaml
PARTS = ("time_linearize_s", "time_cost_derivatives_s", "time_backward_s", "time_rollout_s")


def fit(kind: str, data, settings: dict):
    from mbrl_ros.core.fitting import FitSettings, fit_model
    if kind == "mujoco":
        from mbrl_ros.core.models.mujoco_model import MujocoModel
        return MujocoModel.from_sim("arm7", control_period=0.01), {}, 0.0
    t0 = time.perf_counter()
    res = fit_model(data, FitSettings(model=kind, val_fraction=0.2), settings)
    return res.model, dict(res.report.metrics), time.perf_counter() - t0


def open_loop_errors(model, test) -> dict:
    """1-step RMSE (per state half) and 20-step RMSE of the mean on a held-out episode."""
    X, U, Xn = test.states, test.actions, test.next_states
    pred = model.predict(X, U)[0]
    e = pred - Xn
    n = X.shape[1] // 2
    out = {"one_step_rmse_pos_rad": float(np.sqrt(np.mean(e[:, :n] ** 2))),
           "one_step_rmse_vel_rads": float(np.sqrt(np.mean(e[:, n:] ** 2)))}
    H = 20
    errs = []
    for s in range(0, X.shape[0] - H, H):
        x = X[s]
        for k in range(H):
            x = model.predict(x[None], U[s + k][None])[0][0]
        errs.append(x - X[s + H])
    errs = np.asarray(errs)
    out["rollout20_rmse_pos_rad"] = float(np.sqrt(np.mean(errs[:, :n] ** 2)))
    out["rollout20_rmse_vel_rads"] = float(np.sqrt(np.mean(errs[:, n:] ** 2)))
    return out


def episode(model, planner: str, steps: int, horizon: int, settings: dict, seed: int,
            robot: RobotDescription) -> dict:
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, settings)
    sim = MujocoSim("arm7", seed=seed, initial_noise=0.05)
    sim.reset()

    def factory(pid, nx, nu, u_min, u_max, dt):
        return cls(s, nx, nu, u_min, u_max, dt)
    mpc = MPCController(factory, [planner], planner, horizon, sim.effort_limits,
                        sim.position_limits, CostSettings())
    mpc.set_model(model)
    mpc.set_target(TARGET)
    x, t = sim.state(), sim.time
    replans, parts, dists, iters = [], {p: [] for p in PARTS}, [], []
    n = sim.n_joints
    ee_target = robot.ee_position(TARGET)
    failed = None
    X, U = [x.copy()], []
    for k in range(steps):
        t0 = time.perf_counter()
        try:
            policy = mpc.replan(x, t)
        except Exception as e:          # a diverging model: report, stop the episode
            failed = f"step {k}: {type(e).__name__}: {e}"
            break
        replans.append(time.perf_counter() - t0)
        for p in PARTS:
            parts[p].append(float(mpc.stats.get(p, np.nan)))
        iters.append(float(mpc.stats.get("iterations", np.nan)))
        u = np.clip(policy.action(x, t), -sim.effort_limits, sim.effort_limits)
        sim.step(u)
        x, t = sim.state(), sim.time
        X.append(x.copy())
        U.append(u)
        if not np.all(np.isfinite(x)):
            failed = f"step {k}: non-finite state"
            break
        dists.append(float(np.linalg.norm(robot.ee_position(x[:n]) - ee_target)))
    d = np.asarray(dists)
    r = np.asarray(replans[1:]) * 1e3
    out = {"planner": planner, "steps": len(dists), "horizon": horizon, "settings": settings,
           "final_ee_distance_m": round(float(d[-1]), 5) if d.size else None,
           "min_ee_distance_m": round(float(d.min()), 5) if d.size else None,
           "last50_max_ee_distance_m": round(float(d[-50:].max()), 5) if d.size else None,
           "final_joint_error_rad": round(float(np.max(np.abs(x[:n] - TARGET))), 5),
           "replan_ms_median": round(float(np.median(r)), 3) if r.size else None,
           "replan_ms_p90": round(percentile(r, 90), 3) if r.size else None,
           "failed": failed,
           "iterations_median": float(np.median([st for st in iters[1:]])) if len(iters) > 1
           else None}
    for p in PARTS:
        v = np.asarray(parts[p][1:]) * 1e3
        if v.size and np.all(np.isfinite(v)):
            out[p.replace("time_", "").replace("_s", "") + "_ms_median"] = round(
                float(np.median(v)), 3)
    if "linearize_ms_median" in out:
        out["linearize_plus_solve_ms_median"] = round(float(np.median(
            (np.asarray(replans[1:]) * 1e3))), 3)
    return out, (np.asarray(X), np.asarray(U))


def with_episode(data, X: np.ndarray, U: np.ndarray):
    """``data`` plus one closed-loop episode's transitions (a new episode id)."""
    from mbrl_ros.core.types import TransitionBatch
    n = U.shape[0]
    if n == 0 or not np.all(np.isfinite(X)):
        return data
    ep = int(data.episode.max()) + 1
    t0 = float(data.time[-1]) + 1.0
    return TransitionBatch(np.vstack([data.states, X[:-1]]), np.vstack([data.actions, U]),
                           np.vstack([data.next_states, X[1:]]),
                           np.concatenate([data.dt, np.full(n, 0.01)]),
                           np.concatenate([data.time, t0 + 0.01 * np.arange(n)]),
                           np.concatenate([data.episode, np.full(n, ep)]),
                           data.state_names, data.action_names, data.meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--excite", type=float, default=60.0, help="excitation seconds in total")
    ap.add_argument("--episodes", type=int, default=6, help="excitation episodes (resets)")
    ap.add_argument("--steps", type=int, default=300, help="control steps per reaching run")
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--bandwidth", type=float, default=1.5)
    ap.add_argument("--damping", type=float, default=0.7)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--target-period", type=float, default=1.0)
    ap.add_argument("--margin", type=float, default=0.1, help="excitation target_margin")
    ap.add_argument("--models", default="mujoco,ensemble,gp")
    ap.add_argument("--ensemble", default="{}", help="ensemble settings, JSON")
    ap.add_argument("--gp", default="{}", help="GP settings, JSON")
    ap.add_argument("--ilqr", default="{}", help="iLQR settings, JSON")
    ap.add_argument("--mppi", default="{}", help="MPPI settings, JSON")
    ap.add_argument("--no-mppi", action="store_true")
    ap.add_argument("--iterations", type=int, default=1,
                    help="model-based RL iterations: after each iLQR episode its transitions "
                    "join the data and the model is refitted (reported per iteration)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the reaching runs' start")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", help="append the result (one JSON object per line)")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    t_start = time.time()
    exc = ExcitationSettings(bandwidth=a.bandwidth, damping_ratio=a.damping,
                             noise_std=a.noise, target_period=a.target_period,
                             target_margin=a.margin)
    data = simulate_excitation("arm7", a.excite, a.episodes, seed=0, settings=exc)
    test = simulate_excitation("arm7", 10.0, 1, seed=99, settings=exc)
    n = 7
    speeds = np.abs(data.states[:, n:])
    robot = RobotDescription.load("arm7")
    result = {"label": a.label, "args": vars(a),
              "data": {"transitions": int(data.states.shape[0]),
                       "max_speed_rads": round(float(speeds.max()), 2),
                       "p95_speed_rads": round(float(np.percentile(speeds, 95)), 2),
                       "effort_at_limit_share": round(float(np.mean(
                           np.abs(data.actions) >= 0.999 * np.abs(data.actions).max(0))), 4)},
              "runs": []}
    print(json.dumps(result["data"]), file=sys.stderr, flush=True)
    settings = {"ensemble": json.loads(a.ensemble), "gp": json.loads(a.gp)}
    ilqr = json.loads(a.ilqr)
    mppi = json.loads(a.mppi)
    for kind in a.models.split(","):
        d = data
        for it in range(a.iterations if kind != "mujoco" else 1):
            try:
                model, metrics, fit_s = fit(kind, d, settings.get(kind, {}))
            except Exception as e:
                result["runs"].append({"model": kind, "iteration": it,
                                       "error": f"fit: {type(e).__name__}: {e}"})
                break
            ol = open_loop_errors(model, test)
            last = it == (a.iterations if kind != "mujoco" else 1) - 1
            planners = [("ilqr", ilqr)] + ([("mppi", mppi)] if kind == "ensemble"
                                            and not a.no_mppi and last else [])
            for planner, ps in planners:
                r, (X, U) = episode(model, planner, a.steps, a.horizon, ps, a.seed + it, robot)
                r.update({"model": kind, "iteration": it, "transitions": int(d.states.shape[0]),
                          "fit_seconds": round(fit_s, 1), "open_loop": ol,
                          "fit_metrics": {k: v for k, v in metrics.items()
                                          if isinstance(v, (int, float))}})
                result["runs"].append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                if planner == "ilqr":
                    ilqr_episode = (X, U)
            if not last:
                d = with_episode(d, *ilqr_episode)
    result["wall_seconds"] = round(time.time() - t_start, 1)
    result["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    result["machine"] = {"nproc": os.cpu_count(), "cpu": platform.processor() or ""}
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True,
                                          cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        pass
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
