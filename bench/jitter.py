#!/usr/bin/env python3
"""Control-timer jitter of the controller node: planning thread vs planning process,
control step on the executor timer vs on a control thread.

Issue 4's target: p99 deviation of the control period <= 10 % of the period at 100 Hz.
Each run starts sim_node (arm2, real time, joint states at the control rate) and the
controller (control_mode timer at that rate, iLQR on the MuJoCo model, plan_rate 20 Hz,
horizon 30, publish_plan off) in one configuration ``<planning>-<control_loop>``:
planning ``idle``, ``thread`` or ``process``; the control step on the ``executor`` timer or
on the control ``thread`` (SCHED_FIFO where permitted, GIL switch interval 0.5 ms);
``process-thread-nofifo`` and ``process-thread-nogil`` repeat ``process-thread`` without
the real-time priority (as where it is refused) and with Python's default 5 ms switch
interval. After the first replans and one more second it measures for 1000 control
periods:

- at the receiver: arrival times of the commands in this (separate) process:
  |period - 1/rate| median and p99, achieved rate;
- in the node: from its /diagnostics right after the window (statistics over its last 1000
  control ticks): |period - 1/rate| between control-step starts, and how late each step
  started against its deadline (executor: rclpy TimerInfo.expected_call_time; thread: its
  monotonic deadline).

``idle`` (planning thread at plan_rate 0.1 Hz: at most one solve per window) is the floor
the machine gives the control step with this node's other work; what ``thread`` or
``process`` add above it is the cost of planning. The configurations alternate (order
rotated every repeat) at 100 and 500 Hz; the tables give medians over the
repeats. The load average is recorded before each run: other jobs on the machine show up
in these numbers, which are reported as measured.

Usage: python bench/jitter.py [--quick] [--json PATH] [--repeats N] [--configs A,B]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import Probe, Proc, node_cmd, period_stats, ros_env, wait_for, write_json  # noqa: E402

CMD = "/effort_controller/commands"
TICKS = 1000                 # the node's diagnostics window (deque length)
# name -> controller parameters (besides the common ones in run_one)
QUICK = ("idle-executor", "idle-thread", "process-executor", "process-thread")
CONFIGS = {
    "idle-executor": {"planning": "thread", "plan_rate": 0.1, "control_loop": "executor"},
    "idle-thread": {"planning": "thread", "plan_rate": 0.1, "control_loop": "thread"},
    "thread-executor": {"planning": "thread", "control_loop": "executor"},
    "thread-thread": {"planning": "thread", "control_loop": "thread"},
    "process-executor": {"planning": "process", "control_loop": "executor"},
    "process-thread": {"planning": "process", "control_loop": "thread"},
    "process-thread-nofifo": {"planning": "process", "control_loop": "thread",
                              "control_priority": 0},
    "process-thread-nogil": {"planning": "process", "control_loop": "thread",
                             "gil_switch_interval": 0.0},
}
MODES = tuple(CONFIGS)
RATES = (100.0, 500.0)


def _diag(msgs) -> dict:
    for arr in reversed(msgs):
        for st in arr.status:
            if st.name == "mbrl_ros/controller":
                return {kv.key: kv.value for kv in st.values}
    return {}


def _f(d: dict, key: str) -> float:
    try:
        return float(d.get(key, "nan") or "nan")
    except ValueError:
        return float("nan")


def run_one(config: str, rate: float) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray
    env = ros_env()
    domain = int(env["ROS_DOMAIN_ID"])
    load = os.getloadavg()
    sim = Proc(node_cmd("sim_node", {"model": "arm2", "publish_rate": rate,
                                     "diagnostics_rate": 0.0}), env)
    idle = config.startswith("idle")
    ctrl = Proc(node_cmd("controller", {"robot": "arm2", "autostart": True,
                                        "control_mode": "timer", "control_rate": rate,
                                        "plan_rate": 20.0, "horizon": 30,
                                        "target_joint_positions": "[0.5,-0.5]",
                                        "diagnostics_rate": 2.0, "publish_plan": False,
                                        **CONFIGS[config]}), env)
    probe = Probe(domain, "jitter_probe")
    diags: list = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    try:
        def started() -> bool:
            d = _diag(diags)
            return _f(d, "commands") >= rate and (idle or _f(d, "replans") >= 1)
        if not wait_for(started, 90.0, lambda: probe.spin(0.05)):
            raise RuntimeError(f"{config} @ {rate:g} Hz: not controlling within 90 s")
        end = time.monotonic() + 1.0
        wait_for(lambda: time.monotonic() > end, 2.0, lambda: probe.spin(0.05))
        seconds = TICKS / rate
        arrivals = probe.arrivals(Float64MultiArray, CMD, seconds, warmup=10)
        n = len(diags)                               # the node's view right after
        wait_for(lambda: len(diags) > n and _diag(diags[n:]), 3.0, lambda: probe.spin(0.02))
        d = _diag(diags)
    finally:
        ctrl.stop()
        sim.stop()
        probe.close()
    rx = period_stats(arrivals, rate)
    period = 1e3 / rate
    return {
        "config": config, "rate_hz": rate, "load_1min": round(load[0], 2),
        "control_loop": d.get("control_loop", ""), "control_sched": d.get("control_sched", ""),
        "gil_switch_interval_ms": _f(d, "gil_switch_interval_ms"),
        "rx_achieved_hz": rx["achieved_hz"],
        "rx_dev_ms_p50": rx["period_dev_ms_median"], "rx_dev_ms_p99": rx["period_dev_ms_p99"],
        "rx_p99_over_period": round(rx["period_dev_ms_p99"] / period, 3),
        "node_dev_ms_p50": _f(d, "period_dev_ms_median"),
        "node_dev_ms_p99": _f(d, "period_dev_ms_p99"),
        "node_p99_over_period": round(_f(d, "period_dev_ms_p99") / period, 3),
        "node_late_ms_p50": _f(d, "timer_late_ms_median"),
        "node_late_ms_p99": _f(d, "timer_late_ms_p99"),
        "node_period_ms_median": _f(d, "period_ms_median"),
        "solve_ms_median": _f(d, "solve_ms_median"), "replans": int(_f(d, "replans")),
        "deadline_misses": int(_f(d, "deadline_misses")),
        "control_overruns": int(_f(d, "control_overruns")),
        "plan_process_failures": int(_f(d, "plan_process_failures")),
        "samples": rx["samples"]}


KEYS = ("rx_achieved_hz", "rx_dev_ms_p50", "rx_dev_ms_p99", "rx_p99_over_period",
        "node_dev_ms_p50", "node_dev_ms_p99", "node_p99_over_period", "node_late_ms_p50",
        "node_late_ms_p99", "solve_ms_median", "load_1min")


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for rate in RATES:
        for mode in MODES:
            rs = [r for r in runs if r["config"] == mode and r["rate_hz"] == rate]
            if not rs:
                continue
            row = {"config": mode, "rate_hz": rate, "repeats": len(rs),
                   "control_sched": rs[-1]["control_sched"]}
            for k in KEYS:
                vals = [r[k] for r in rs if not np.isnan(r[k])]
                row[k] = round(float(np.median(vals)), 3) if vals else float("nan")
            row["meets_target"] = bool(row["rx_p99_over_period"] <= 0.10
                                       and row["node_p99_over_period"] <= 0.10)
            out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| config | rate | achieved (rx) | dev p50 rx | dev p99 rx | p99/period rx | "
             "dev p50 node | dev p99 node | p99/period node | late p50 node | late p99 node "
             "| load |", "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['rate_hz']:g} Hz | {r['rx_achieved_hz']:.2f} Hz | "
            f"{r['rx_dev_ms_p50']:.3f} ms | {r['rx_dev_ms_p99']:.3f} ms | "
            f"{r['rx_p99_over_period']:.3f} | {r['node_dev_ms_p50']:.3f} ms | "
            f"{r['node_dev_ms_p99']:.3f} ms | {r['node_p99_over_period']:.3f} | "
            f"{r['node_late_ms_p50']:.3f} ms | {r['node_late_ms_p99']:.3f} ms | "
            f"{r['load_1min']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repeat of idle/process x "
                    "executor/thread (about two minutes)")
    ap.add_argument("--repeats", type=int, help="runs per mode and rate (default 3; "
                    "--quick: 1)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--configs", help="comma-separated subset of: " + ", ".join(MODES))
    a = ap.parse_args()
    modes = (tuple(a.configs.split(",")) if a.configs else
             QUICK if a.quick else MODES)
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown configs {sorted(unknown)}; valid: {', '.join(MODES)}")
    repeats = a.repeats or (1 if a.quick else 3)
    runs, errors = [], {}
    for rep in range(repeats):
        for rate in RATES:
            k = rep % len(modes)
            for mode in modes[k:] + modes[:k]:
                try:
                    r = run_one(mode, rate)
                    r["repeat"] = rep
                    runs.append(r)
                    print(r, file=sys.stderr, flush=True)
                except Exception as e:     # report, keep going
                    errors[f"{mode}/{rate:g}/{rep}"] = f"{type(e).__name__}: {e}"
                    print(errors, file=sys.stderr, flush=True)
    rows = summarise(runs)
    print(table(rows), file=sys.stderr)
    write_json(a.json, {"benchmark": "jitter", "ticks_per_run": TICKS, "repeats": repeats,
                        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
                        "summary": rows, "runs": runs, "errors": errors})


if __name__ == "__main__":
    main()
