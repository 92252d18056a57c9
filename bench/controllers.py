#!/usr/bin/env python3
"""Benchmark the planners and the controller node.

A. Closed-loop MPC on the MuJoCo sim (no ROS): for each robot, model and planner, one
   reaching episode from the home pose (+ noise) to the configured target, replanning every
   control period, warm-started, each planner with its default settings. Reports time per
   replan (median, p99), policy evaluation time, and task success (final joint error
   < 0.05 rad).
B. iLQR kernels on arm7 (nx=14, nu=7), horizon 50, one warm-started iteration per replan
   with a learned linear model: the replan time next to its kernels timed alone
   (linearisation + cost derivatives + backward pass + rollouts), and their ratio.
C. Control-period jitter of the controller node (control_mode timer) at 100 and 500 Hz,
   against sim_node in real time: period median / p99 deviation from the requested period,
   measured from command arrival times in a separate process.

Models: 'mujoco' (the known model) and 'linear' (fitted on excitation data of the same
robot); the sampling planners also run on a 5-member ensemble fitted on that data.
Usage: python bench/controllers.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import (Probe, Proc, node_cmd, percentile, period_stats, ros_env,  # noqa: E402
                     write_json)

from mbrl_ros.core import registry  # noqa: E402
from mbrl_ros.core.control.mpc import CostSettings, MPCController  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402
from mbrl_ros.core.control.closed_loop import simulate_excitation  # noqa: E402

TARGETS = {"arm2": np.array([0.5, -0.5]),
           "arm7": np.array([0.3, -0.5, 0.0, -2.0, 0.0, 1.6, 0.8])}


def make_model(kind: str, robot: str, data):
    if kind == "mujoco":
        from mbrl_ros.core.models.mujoco_model import MujocoModel
        return MujocoModel.from_sim(robot, control_period=0.01)
    from mbrl_ros.core.fitting import FitSettings, fit_model
    settings = {"ensemble": {"epochs": 30}}.get(kind, {})
    return fit_model(data, FitSettings(model=kind, val_fraction=0.1), settings).model


def make_mpc(planner: str, robot_sim, horizon: int, planner_settings: dict):
    cls = registry.lookup("planner", planner)
    from mbrl_ros.core.settings import from_mapping
    s = from_mapping(cls.Settings, planner_settings.get(planner, {}))

    def factory(pid, nx, nu, u_min, u_max, dt):
        return cls(s, nx, nu, u_min, u_max, dt)
    return MPCController(factory, [planner], planner, horizon, robot_sim.effort_limits,
                         robot_sim.position_limits, CostSettings())


def closed_loop(robot: str, model_kind: str, planner: str, model, steps: int, horizon: int,
                planner_settings: dict, seed: int = 1, replan_every: int = 1) -> dict:
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim(robot, seed=seed, initial_noise=0.05)
    sim.reset()
    mpc = make_mpc(planner, sim, horizon, planner_settings)
    mpc.set_model(model)
    mpc.set_target(TARGETS[robot])
    res = run_episode(sim, mpc, steps, replan_every=replan_every)
    r = res.replan_s[1:] * 1e3          # the first replan is a cold start
    err = res.final_joint_error(TARGETS[robot])
    return {"robot": robot, "model": model_kind, "planner": planner, "horizon": horizon,
            "steps": steps, "replan_every": replan_every,
            "replan_ms_median": round(float(np.median(r)), 3),
            "replan_ms_p99": round(percentile(r, 99), 3),
            "replan_hz_median": round(1e3 / float(np.median(r)), 1),
            "first_replan_ms": round(res.replan_s[0] * 1e3, 2),
            "policy_eval_us_median": round(float(np.median(res.action_s)) * 1e6, 2),
            "final_joint_error_rad": round(err, 4), "success": bool(err < 0.05)}


def ilqr_kernels(model, steps: int = 200) -> dict:
    """One warm iteration per replan on arm7 with the given model, and its kernels alone."""
    from mbrl_ros.core.lqr import BackwardPass
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim("arm7", seed=1, initial_noise=0.05)
    sim.reset()
    mpc = make_mpc("ilqr", sim, 50, {"ilqr": {"max_iterations": 1}})
    mpc.set_model(model)
    mpc.set_target(TARGETS["arm7"])
    res = run_episode(sim, mpc, steps)
    replan = float(np.median(res.replan_s[1:])) * 1e3
    # Kernels alone on the last nominal trajectory.
    xs, us = mpc.nominal_states()
    T = us.shape[0]
    cost = mpc.cost

    def timed(fn, n=50):
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e3
    t_lin = timed(lambda: model.linearize(xs[:-1], us))
    t_cost = timed(lambda: (cost.stage_derivatives(xs[:-1], us),
                            cost.terminal_derivatives(xs[-1])))
    lin = model.linearize(xs[:-1], us)
    lx, lu, lxx, luu, lux = cost.stage_derivatives(xs[:-1], us)
    vx, vxx = cost.terminal_derivatives(xs[-1])
    bp = BackwardPass(T, 14, 7)

    def backward():
        bp.prepare(lin.fx, lin.fu, lx, lu, lxx, luu, lux, vx, vxx)
        return bp.run(1e-6, None, None)
    t_bwd = timed(backward)

    def rollout():
        x = xs[0]
        for k in range(T):
            x = model.predict(x[None], us[k][None])[0][0]
    t_roll = timed(rollout, 20)
    kernels = t_lin + t_cost + t_bwd + 2 * t_roll     # nominal rollout + one line-search step
    return {"replan_ms_median": round(replan, 3),
            "replan_ms_p99": round(percentile(res.replan_s[1:] * 1e3, 99), 3),
            "linearize_ms": round(t_lin, 3), "cost_derivatives_ms": round(t_cost, 3),
            "backward_pass_ms": round(t_bwd, 3), "rollout_ms": round(t_roll, 3),
            "kernels_sum_ms": round(kernels, 3),
            "replan_over_kernels": round(replan / kernels, 2),
            "policy_eval_us_median": round(float(np.median(res.action_s)) * 1e6, 2),
            "final_joint_error_rad": round(res.final_joint_error(TARGETS["arm7"]), 4)}


def node_jitter(rate: float, seconds: float) -> dict:
    """Controller node in timer mode against sim_node in real time at the same rate."""
    from std_msgs.msg import Float64MultiArray
    env = ros_env()
    domain = int(env["ROS_DOMAIN_ID"])
    sim = Proc(node_cmd("sim_node", {"model": "arm2", "publish_rate": rate,
                                     "diagnostics_rate": 0.0}), env)
    ctrl = Proc(node_cmd("controller", {"robot": "arm2", "autostart": True,
                                        "control_mode": "timer", "control_rate": rate,
                                        "plan_rate": 20.0, "horizon": 30,
                                        "target_joint_positions": "[0.5,-0.5]",
                                        "diagnostics_rate": 0.0, "publish_plan": False}), env)
    probe = Probe(domain, "jitter_probe")
    try:
        arrivals = probe.arrivals(Float64MultiArray, "/effort_controller/commands", seconds,
                                  warmup=50)
    finally:
        ctrl.stop()
        sim.stop()
        probe.close()
    return period_stats(arrivals, rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--skip-nodes", action="store_true", help="skip part C (ROS nodes)")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    steps = 100 if a.quick else 150
    # The sampling planners run their defaults (256 samples, one rollout per replan).
    planner_settings = {"ilqr": {"max_iterations": 2}}
    results, errors = [], {}
    robots = ["arm2"] if a.quick else ["arm2", "arm7"]
    for robot in robots:
        data = simulate_excitation(robot, 20.0 if a.quick else 60.0, 4)
        models = {}
        # A deliberate subset of the models (module docstring): the known model, a fitted
        # linear one and, in full runs, the ensemble.
        for kind in ["mujoco", "linear"] + ([] if a.quick else ["ensemble"]):
            try:
                models[kind] = make_model(kind, robot, data)
            except Exception as e:      # report, keep going
                errors[f"{robot}/{kind}"] = f"{type(e).__name__}: {e}"
        for kind, model in models.items():
            # every MPC planner; on the ensemble only the sampling planners (a subset)
            planners = list(registry.names("planner", "mpc")) if kind != "ensemble" \
                else ["mppi", "cem"]
            for planner in planners:
                key = f"{robot}/{kind}/{planner}"
                # Every planner replans every period: the sampling planners' open-loop plans
                # need the feedback (with the known model they simulate 256 x 30 steps per
                # replan, 0.1-0.3 s: the episode takes longer, the timing is per replan).
                try:
                    r = closed_loop(robot, kind, planner, model, steps, 30, planner_settings)
                    results.append(r)
                    print(r, file=sys.stderr)
                except Exception as e:
                    errors[key] = f"{type(e).__name__}: {e}"
                    print(key, errors[key], file=sys.stderr)
    kernels = {}
    try:
        data7 = simulate_excitation("arm7", 20.0, 4)
        kernels = ilqr_kernels(make_model("linear", "arm7", data7), 100 if a.quick else 300)
    except Exception as e:
        errors["ilqr_kernels"] = f"{type(e).__name__}: {e}"
    jitter = []
    if not a.skip_nodes:
        for rate in (100.0, 500.0):
            try:
                jitter.append(node_jitter(rate, 5.0 if a.quick else 20.0))
            except Exception as e:
                errors[f"jitter/{rate:g}"] = f"{type(e).__name__}: {e}"
    write_json(a.json, {"benchmark": "controllers", "closed_loop": results,
                        "ilqr_arm7_linear_1iter": kernels, "node_jitter": jitter,
                        "errors": errors})


if __name__ == "__main__":
    main()
