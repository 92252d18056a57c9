#!/usr/bin/env python3
"""Real-time MPC on arm2 beside CPU-bound processes (issue 15, item 4).

For N = 0, 1, 2 CPU hogs (``sh -c 'while :; do :; done'`` at nice 0, started before the
runs of that N and killed after them), every configured run does, in real time (wall
clock, not lockstep):

- the simulated arm2 (MuJoCo) steps at 100 Hz, sleeping to absolute deadlines, each step
  applying the current policy to the measured state -- the node's on_state control path;
- the planning runs as in the controller node with ``planning: process``: a
  :class:`~mbrl_ros.core.control.plan_process.PlanProcess` worker (one thread, at the
  node's default ``plan_nice``, or ``--nice``) asked for a replan at ``plan_rate`` (50 Hz)
  from the newest state, with the
  node's latency compensation (lookahead = median of the last 10 plan latencies; a plan
  made ahead takes over at its start time) and the node's replan deadline 1/plan_rate
  (planners adapt their work to it: MPPI's samples, iLQR's iterations);
- the model is a GP (or ensemble) fitted on simulated excitation data and handed to the
  worker as an artifact, as the fitter hands models to the node (or ``--model mujoco``,
  the known model);
- the arm settles at target A for ``settle`` s, then the target changes to B; reported:
  the end-effector distance to B at the end (``final_cm``), the time from the change until
  it is < 2 cm and stays so (``reach_s``; None: never), the largest distance over the last
  second (``hold_max_cm``), and the solve times (the planner's own solve_time_s) and plan
  latencies (state to policy in the parent) p50/p95/p99, the samples per replan (MPPI) and
  iLQR iterations.

Runs: ``mppi`` (the defaults: adapt_samples on, refine 'newton', feedback 'lqr'),
``mppi_none`` (refine 'none': the sampling update alone), ``mppi_fixed`` (adapt_samples
off: the configured 256 samples every replan), ``mppi_open`` (feedback 'none': the plan
played open loop), ``cem`` (defaults) and ``ilqr`` (max 2 iterations), each with the
GP (or ``--model ensemble|mujoco``); ``--quick``: mppi and ilqr, shorter phases; ``--runs``
picks runs. The 1-minute load average is recorded before and after each run (other
processes on the machine count as well as the hogs).

``--lockstep 0,10,20``: instead of real time, the same target change in lockstep with a
replan every d control periods that takes over d periods after its state (``run_episode``'s
``plan_delay``, with the node's latency compensation), for each d: the slow replans of a
loaded machine, emulated deterministically (no hogs, no deadline: the figures do not
depend on the load, only the wall time does).

Usage: python bench/contention.py [--quick] [--json PATH] [--model gp|ensemble|mujoco]
       [--hogs 0,1,2] [--runs mppi,mppi_none,mppi_fixed,cem,ilqr] [--nice N]
       [--lockstep DELAYS]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import percentile, write_json  # noqa: E402

from mbrl_ros.core.threads import limit_threads  # noqa: E402

RATE = 100.0
PLAN_RATE = 50.0
HORIZON = 30
TARGET_A = np.array([0.5, -0.5])
TARGET_B = np.array([-0.3, 0.6])
RUNS = {"mppi": ("mppi", {}), "mppi_none": ("mppi", {"refine": "none"}),
        "mppi_fixed": ("mppi", {"adapt_samples": False}),
        "mppi_open": ("mppi", {"feedback": "none"}), "cem": ("cem", {}),
        "ilqr": ("ilqr", {"max_iterations": 2})}


def start_hogs(n: int) -> list[subprocess.Popen]:
    """n CPU-bound shells at the default priority (nice 0)."""
    return [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for p in hogs:
        p.kill()
    for p in hogs:
        p.wait()


def fit_artifact(kind: str, seconds: float, root: str):
    """Fit ``kind`` on simulated arm2 excitation and publish it; returns its
    :class:`~mbrl_ros.core.store.ArtifactInfo` (``'mujoco'``: the known model, nothing
    fitted)."""
    if kind == "mujoco":
        from types import SimpleNamespace
        return SimpleNamespace(uri="mujoco", version=None, checksum=None)
    from mbrl_ros.core import store
    from mbrl_ros.core.control.closed_loop import simulate_excitation
    from mbrl_ros.core.fitting import FitSettings, fit_model
    data = simulate_excitation("arm2", seconds, 4)
    settings = {"ensemble": {"epochs": 30}}.get(kind, {})
    model = fit_model(data, FitSettings(model=kind, val_fraction=0.1), settings).model
    return store.publish(model, root, f"arm2_{kind}")


def run_one(planner: str, settings: dict, artifact, settle: float,
            after: float, nice: int) -> dict:
    from mbrl_ros.core import registry
    from mbrl_ros.core.control.mpc import CostSettings
    from mbrl_ros.core.control.plan_process import PlanProcess
    from mbrl_ros.core.planners.base import RobotLayout
    from mbrl_ros.core.settings import from_mapping
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim("arm2", control_period=1.0 / RATE)
    fk = MujocoSim("arm2")

    def ee(q):
        fk.set_state(q, np.zeros(fk.n_joints))
        return fk.ee_position()
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {"horizon": HORIZON, **settings})
    layout = RobotLayout(sim.position_limits, sim.command_index, sim.effective_inertia())
    pp = PlanProcess("arm2", 1.0 / RATE, sim.joint_names, lambda: {planner: (planner, s)},
                     [planner], planner, HORIZON, sim.effort_limits, sim.position_limits,
                     CostSettings(), continuous=sim.continuous, layout=layout, nice=nice,
                     deadline=1.0 / PLAN_RATE, plan_timeout=30.0)
    pp.start()
    try:
        pp.load_model(artifact.uri, artifact.version, artifact.checksum, state=sim.state())
        pp.set_target(TARGET_A)
        # Warm the worker up (imports, the first solve) before the clock starts.
        pp.replan(sim.state(), 0.0)
        shared = {"x": sim.state(), "t": 0.0, "wall": time.monotonic()}
        lock = threading.Lock()
        current: list = [None]
        pending: list = [None]
        stop = threading.Event()
        solve, latency, samples, iters, failures = [], [], [], [], [0]
        alphas = []
        recent = deque(maxlen=10)

        def planning() -> None:
            period, next_t = 1.0 / PLAN_RATE, time.monotonic()
            while not stop.is_set():
                with lock:
                    x, t, wall = shared["x"].copy(), shared["t"], shared["wall"]
                try:
                    look = float(np.median(recent)) if recent else 0.0
                    policy = pp.replan(x, t, look)
                    st = pp.stats
                    lat = time.monotonic() - wall
                    recent.append(lat)
                    latency.append(lat)
                    solve.append(float(st.get("solve_time_s", st["replan_seconds"])))
                    if "samples" in st:
                        samples.append(int(st["samples"]))
                    if "iterations" in st and planner == "ilqr":
                        iters.append(int(st["iterations"]))
                    if "refine_alpha" in st:
                        alphas.append(float(st["refine_alpha"] > 0))
                    with lock:
                        if st.get("lookahead_steps", 0) > 0:
                            pending[0] = policy
                        else:
                            current[0], pending[0] = policy, None
                except Exception:          # a failed replan keeps the previous policy
                    failures[0] += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay < 0:
                    next_t, delay = time.monotonic(), 0.0
                stop.wait(delay)

        thread = threading.Thread(target=planning, daemon=True)
        cpu0, wall0 = _cpu_seconds(pp.pid), time.monotonic()
        thread.start()
        steps_a, steps_b = int(settle * RATE), int(after * RATE)
        dist, late = [], 0
        ee_b = ee(TARGET_B)
        t0 = time.monotonic()
        for k in range(steps_a + steps_b):
            if k == steps_a:
                pp.set_target(TARGET_B)
            x, t = sim.state(), sim.time
            with lock:
                shared.update(x=x.copy(), t=t, wall=time.monotonic())
                if pending[0] is not None and t >= pending[0].t0 - 1e-9:
                    current[0], pending[0] = pending[0], None
                policy = current[0]
            u = np.zeros(sim.n_commands) if policy is None else policy.action(x, t)
            sim.step(np.clip(u, -sim.effort_limits, sim.effort_limits))
            if k >= steps_a:
                dist.append(float(np.linalg.norm(ee(sim.positions()) - ee_b)))
            wake = t0 + (k + 1) / RATE
            delay = wake - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
        stop.set()
        thread.join(timeout=35.0)
        cpu1, wall1 = _cpu_seconds(pp.pid), time.monotonic()
    finally:
        pp.stop()
    d = np.asarray(dist)
    above = np.flatnonzero(d >= 0.02)
    reach = None if above.size and above[-1] == d.size - 1 else \
        (0.0 if not above.size else (above[-1] + 1) / RATE)
    ms = [v * 1e3 for v in solve]
    lat = [v * 1e3 for v in latency]
    return {"final_cm": round(100 * float(d[-1]), 2), "reach_s": reach,
            "hold_max_cm": round(100 * float(d[-int(RATE):].max()), 2),
            "solve_ms_p50": round(percentile(ms, 50), 1),
            "solve_ms_p95": round(percentile(ms, 95), 1),
            "solve_ms_p99": round(percentile(ms, 99), 1),
            "latency_ms_p50": round(percentile(lat, 50), 1),
            "latency_ms_p99": round(percentile(lat, 99), 1),
            "replans": len(solve), "replan_failures": failures[0],
            "samples_median": int(np.median(samples)) if samples else None,
            "samples_min": min(samples) if samples else None,
            "ilqr_iterations_mean": round(float(np.mean(iters)), 2) if iters else None,
            "refine_alpha_nonzero": (round(float(np.mean(alphas)), 2) if alphas else None),
            # the share of a core the planning worker got (CPU seconds / wall seconds)
            "worker_cpu_share": (round((cpu1 - cpu0) / (wall1 - wall0), 2)
                                 if cpu0 is not None and cpu1 is not None else None),
            "late_control_steps": late}


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time [s] of process ``pid`` so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def run_lockstep(planner: str, settings: dict, artifact, settle: float, after: float,
                 delay: int) -> dict:
    """The target change A -> B in lockstep, a replan every ``delay`` periods taking
    ``delay`` periods (0: every period, at once)."""
    from mbrl_ros.core import registry
    from mbrl_ros.core.control.closed_loop import run_episode
    from mbrl_ros.core.control.model_source import load_model
    from mbrl_ros.core.control.mpc import CostSettings, MPCController
    from mbrl_ros.core.settings import from_mapping
    from mbrl_ros.sim.env import MujocoSim
    model, _ = load_model(artifact.uri, robot="arm2", control_period=1.0 / RATE,
                          version=artifact.version, checksum=artifact.checksum)
    cls = registry.lookup("planner", planner)
    s = from_mapping(cls.Settings, {"horizon": HORIZON, **settings})
    sim = MujocoSim("arm2", control_period=1.0 / RATE, seed=1, initial_noise=0.05)
    sim.reset()
    mpc = MPCController(lambda pid, nx, nu, lo, hi, d: cls(s, nx, nu, lo, hi, d), [planner],
                        planner, HORIZON, sim.effort_limits, sim.position_limits,
                        CostSettings())
    mpc.set_model(model)
    fk = MujocoSim("arm2")

    def ee(q):
        fk.set_state(q, np.zeros(fk.n_joints))
        return fk.ee_position()
    kw = dict(replan_every=max(delay, 1), plan_delay=delay, compensate=delay > 0)
    cpu = time.process_time()
    mpc.set_target(TARGET_A)
    first = run_episode(sim, mpc, int(settle * RATE), **kw)
    mpc.set_target(TARGET_B)
    res = run_episode(sim, mpc, int(after * RATE), **kw)
    cpu = time.process_time() - cpu
    d = np.array([np.linalg.norm(ee(x[:2]) - ee(TARGET_B)) for x in res.xs[1:]])
    above = np.flatnonzero(d >= 0.02)
    reach = None if above.size and above[-1] == d.size - 1 else \
        (0.0 if not above.size else (above[-1] + 1) / RATE)
    replans = len(first.replan_s) + len(res.replan_s)
    return {"delay_steps": delay, "a_cm": round(100 * float(np.linalg.norm(
                ee(first.xs[-1][:2]) - ee(TARGET_A))), 3),
            "final_cm": round(100 * float(d[-1]), 3), "reach_s": reach,
            "hold_max_cm": round(100 * float(d[-int(RATE // 2):].max()), 3),
            "replans": replans, "cpu_ms_per_replan": round(1e3 * cpu / replans, 1)}


def lockstep_table(rows: list[dict]) -> str:
    head = ("| model | run | replan every / takes [periods] | at A cm | final cm | "
            "reach < 2 cm [s] | max over last 0.5 s cm | CPU per replan ms |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        out.append(f"| {r['model']} | {r['run']} | {r['delay_steps']} | {r['a_cm']} | "
                   f"{r['final_cm']} | {r['reach_s']} | {r['hold_max_cm']} | "
                   f"{r['cpu_ms_per_replan']} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    head = ("| hogs | load before/after | run | final cm | reach < 2 cm [s] | hold max cm | "
            "solve p50/p95/p99 ms | latency p50/p99 ms | worker CPU share | "
            "samples median (min) | iLQR iter |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        load = f"{r['load']} / {r.get('load_after', '')}"
        if "error" in r:
            out.append(f"| {r['hogs']} | {load} | {r['run']} | error: {r['error']} |"
                       + " |" * 7)
            continue
        smp = "" if r["samples_median"] is None else \
            f"{r['samples_median']} ({r['samples_min']})"
        out.append(f"| {r['hogs']} | {load} | {r['run']} | {r['final_cm']} | "
                   f"{r['reach_s']} | {r['hold_max_cm']} | {r['solve_ms_p50']} / "
                   f"{r['solve_ms_p95']} / {r['solve_ms_p99']} | {r['latency_ms_p50']} / "
                   f"{r['latency_ms_p99']} | {r['worker_cpu_share']} | {smp} | "
                   f"{r['ilqr_iterations_mean'] or ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="mppi and ilqr, shorter phases")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--model", default="gp", choices=("gp", "ensemble", "mujoco"))
    ap.add_argument("--lockstep", default="",
                    help="comma-separated replan delays [control periods]: lockstep "
                    "emulation of slow replans instead of the real-time runs")
    ap.add_argument("--nice", type=int, default=None,
                    help="niceness of the planning worker (default: the controller node's "
                    "plan_nice default)")
    ap.add_argument("--hogs", default="0,1,2", help="comma-separated hog counts")
    ap.add_argument("--runs", default="", help=f"comma-separated runs of {', '.join(RUNS)} "
                    "(default: mppi,ilqr with --quick, else all)")
    a = ap.parse_args()
    limit_threads()
    import torch
    torch.set_num_threads(1)
    runs = (a.runs.split(",") if a.runs else
            ["mppi", "ilqr"] if a.quick else ["mppi", "mppi_none", "mppi_fixed", "cem",
                                              "ilqr"])
    if a.nice is None:
        from mbrl_ros.ros.controller_params import ControllerSettings
        a.nice = ControllerSettings().plan_nice
    unknown = set(runs) - set(RUNS)
    if unknown:
        ap.error(f"unknown runs {sorted(unknown)}; known: {', '.join(RUNS)}")
    settle, after = (2.0, 3.0) if a.quick else (3.0, 5.0)
    rows = []
    if a.lockstep:
        settle, after = 1.5, 3.0
        load = [round(os.getloadavg()[0], 2)]
        with tempfile.TemporaryDirectory() as root:
            artifact = fit_artifact(a.model, 10.0, root)
            for name in runs:
                planner, settings = RUNS[name]
                for delay in [int(v) for v in a.lockstep.split(",")]:
                    row = {"model": a.model, "run": name,
                           **run_lockstep(planner, settings, artifact, settle, after, delay)}
                    rows.append(row)
                    print(row, file=sys.stderr, flush=True)
        load.append(round(os.getloadavg()[0], 2))
        print(lockstep_table(rows), file=sys.stderr)
        write_json(a.json, {"benchmark": "contention_lockstep", "robot": "arm2",
                            "rate_hz": RATE, "horizon": HORIZON,
                            "target_a": TARGET_A.tolist(), "target_b": TARGET_B.tolist(),
                            "settle_s": settle, "after_s": after,
                            "load_1min_start_end": load, "rows": rows,
                            "table": lockstep_table(rows)})
        return
    with tempfile.TemporaryDirectory() as root:
        artifact = fit_artifact(a.model, 10.0 if a.quick else 20.0, root)
        for n in [int(v) for v in a.hogs.split(",")]:
            hogs = start_hogs(n)
            try:
                time.sleep(1.0)
                for name in runs:
                    planner, settings = RUNS[name]
                    load = round(os.getloadavg()[0], 2)
                    row = {"hogs": n, "load": load, "run": name, "model": a.model,
                           "nice": a.nice}
                    try:
                        row.update(run_one(planner, settings, artifact, settle, after,
                                           a.nice))
                    except Exception as e:          # report and go on
                        row["error"] = f"{type(e).__name__}: {e}"
                    row["load_after"] = round(os.getloadavg()[0], 2)
                    rows.append(row)
                    print(row, file=sys.stderr, flush=True)
            finally:
                stop_hogs(hogs)
    print(table(rows), file=sys.stderr)
    write_json(a.json, {"benchmark": "contention", "robot": "arm2", "rate_hz": RATE,
                        "plan_rate_hz": PLAN_RATE, "horizon": HORIZON,
                        "target_a": TARGET_A.tolist(), "target_b": TARGET_B.tolist(),
                        "settle_s": settle, "after_s": after, "rows": rows,
                        "table": table(rows)})


if __name__ == "__main__":
    main()
