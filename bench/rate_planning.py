"""Planning within the command path's effort rate (``plan_within_rate``), side by side.

arm7, the node's command path without ROS (the controller's settings as the bring-up
composes them from config/controller.yaml and config/arm7.yaml; the explorer behind the
safety filter until the first model, then the planner over the known MuJoCo model behind
the same filter, one plan per state, each plan given the last command sent): for each
planner and rate limit, with the planners planning within the rate and planning as if
efforts could jump. Lockstep simulation: the distances do not depend on the machine or its
load (the replan times do).

``--model DIR`` plans over a stored learned model (a model store's version folder, e.g. one
a live run's fitter wrote) instead of the known one; ``--replan-every N --plan-delay D``
emulates real time deterministically: a plan every N states, each taking over D states
after the state it was planned from, predicted that far ahead (the node's latency
compensation); the previous plan runs meanwhile.

    python bench/rate_planning.py [--quick] [--planners ilqr,mppi] [--rates 500,1000,2000]
                                  [--model DIR] [--replan-every N] [--plan-delay D]
                                  [--json PATH]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

from mbrl_ros.bringup import file_parameters  # noqa: E402
from mbrl_ros.core import registry, store  # noqa: E402
from mbrl_ros.core.control.closed_loop import run_episode  # noqa: E402
from mbrl_ros.core.control.mpc import MPCController  # noqa: E402
from mbrl_ros.core.control.safety import SafetyFilter, SafetySettings  # noqa: E402
from mbrl_ros.core.costs.task import CostSettings  # noqa: E402
from mbrl_ros.core.models.mujoco_model import MujocoModel  # noqa: E402
from mbrl_ros.core.planners.base import RobotLayout  # noqa: E402
from mbrl_ros.core.robot import RobotDescription  # noqa: E402
from mbrl_ros.core.settings import from_mapping  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402
from mbrl_ros.sim.env import MujocoSim  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config"


def shipped_controller_parameters() -> dict:
    """config/controller.yaml then config/arm7.yaml (sections merged key by key)."""
    return file_parameters([CONFIG / "controller.yaml", CONFIG / "arm7.yaml"], "controller")


def run(planner: str, rate: float, within: bool, explore: int, steps: int,
        model_dir: str = "", replan_every: int = 1, plan_delay: int = 0,
        overrides: dict | None = None) -> dict:
    params = shipped_controller_parameters()
    for key, value in (overrides or {}).items():      # "ilqr.feedback_scale" -> nested
        *sections, name = key.split(".")
        d = params
        for sec in sections:
            d = d.setdefault(sec, {})
        d[name] = value
    robot = RobotDescription.load("arm7")
    dt = 1.0 / params["control_rate"]

    def fields(cls):
        return {k: v for k, v in params.items() if k in cls.__dataclass_fields__}

    def factory(pid, nx, nu, u_min, u_max, dt):
        cls = registry.lookup("planner", pid)
        return cls(from_mapping(cls.Settings, params.get(pid, {})), nx, nu, u_min, u_max, dt)
    safety_settings = from_mapping(SafetySettings, {**fields(SafetySettings),
                                                    "max_effort_rate": rate})
    mpc = MPCController(factory, [planner, "excitation"], planner, params["horizon"],
                        robot.effort_limits, robot.position_limits,
                        from_mapping(CostSettings, fields(CostSettings)), fallback="excitation",
                        robot=RobotLayout(robot.position_limits, robot.command_index,
                                          robot.effective_inertia()),
                        control_period=dt, effort_scale=safety_settings.effort_scale,
                        effort_rate=rate if within else 0.0)
    mpc.set_target(np.asarray(params["target_joint_positions"], dtype=float))
    safety = SafetyFilter.for_robot(safety_settings, robot, dt, robot.min_effective_inertia())
    sim = MujocoSim("arm7", seed=0, initial_noise=0.05)
    sim.reset()
    run_episode(sim, mpc, explore, safety=safety)                   # the explorer
    explore_limited = safety.counters["rate_limited"]
    mpc.set_model(store.load(model_dir) if model_dir
                  else MujocoModel.from_sim("arm7", control_period=dt))
    tic = time.perf_counter()
    ep = run_episode(sim, mpc, steps, safety=safety, replan_every=replan_every,
                     plan_delay=plan_delay, compensate=plan_delay > 0)
    wall = time.perf_counter() - tic
    ee = robot.ee_position(np.asarray(params["target_joint_positions"], dtype=float))
    xs = ep.xs[1:]
    d = np.array([np.linalg.norm(robot.ee_position(x[:robot.n_joints]) - ee) if
                  np.all(np.isfinite(x)) else np.inf for x in xs])
    below = d < 0.01
    # first step from which the distance stays below 1 cm to the end (None: it does not)
    held = None
    if below[-1]:
        held = int(len(d) - np.argmin(below[::-1])) if not below.all() else 0
    speed = np.abs(xs[:, robot.n_joints:])
    return {"planner": planner, "rate": rate, "plan_within_rate": within,
            "model": model_dir or "mujoco (known)", "replan_every": replan_every,
            "plan_delay": plan_delay, "overrides": overrides or {},
            "start_cm": round(100 * float(d[0]), 2), "min_cm": round(100 * float(d.min()), 3),
            "final_cm": round(100 * float(d[-1]), 3), "held_below_1cm_from": held,
            "top_speed": round(float(speed.max()), 2),
            "rate_limited": int(safety.counters["rate_limited"] - explore_limited),
            "replan_ms_median": round(1e3 * float(np.median(ep.replan_s)), 2),
            "wall_s": round(wall, 1), "distance_every_10_cm":
                [round(100 * float(v), 2) for v in d[::10]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="iLQR only, 1000 N·m/s")
    ap.add_argument("--planners", default="ilqr,mppi")
    ap.add_argument("--rates", default="500,1000,2000", help="N·m/s")
    ap.add_argument("--explore", type=int, default=600, help="explorer steps first")
    ap.add_argument("--steps", type=int, default=200, help="planner steps")
    ap.add_argument("--model", default="", help="a stored model version folder (default: "
                    "the known MuJoCo model)")
    ap.add_argument("--replan-every", type=int, default=1, help="states per plan")
    ap.add_argument("--plan-delay", type=int, default=0,
                    help="states from a plan's state to its taking over")
    ap.add_argument("--within-only", action="store_true",
                    help="only plan_within_rate true")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a controller parameter over the shipped ones (YAML value), e.g. "
                    "ilqr.feedback_scale=0.5; repeatable")
    ap.add_argument("--json")
    a = ap.parse_args()
    limit_threads()         # as the nodes: one BLAS/OpenMP thread
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in a.set)}
    planners = ["ilqr"] if a.quick else a.planners.split(",")
    rates = [1000.0] if a.quick else [float(r) for r in a.rates.split(",")]
    rows = []
    for planner in planners:
        for rate in rates:
            for within in (True,) if a.within_only else (True, False):
                r = run(planner, rate, within, a.explore, a.steps, a.model, a.replan_every,
                        a.plan_delay, overrides)
                rows.append(r)
                print(f"{planner:5s} {rate:6.0f} N·m/s within={within!s:5s}: final "
                      f"{r['final_cm']:8.3f} cm, min {r['min_cm']:7.3f}, < 1 cm held from "
                      f"{r['held_below_1cm_from']}, top speed {r['top_speed']} rad/s, "
                      f"rate-limited {r['rate_limited']}, replan {r['replan_ms_median']} ms",
                      file=sys.stderr, flush=True)
    write_json(a.json, {"benchmark": "rate_planning", "explore": a.explore,
                        "steps": a.steps, "model": a.model, "replan_every": a.replan_every,
                        "plan_delay": a.plan_delay, "overrides": overrides, "runs": rows})


if __name__ == "__main__":
    main()
