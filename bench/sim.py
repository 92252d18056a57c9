#!/usr/bin/env python3
"""Benchmark the simulation node.

1. Real time: sim_node runs at 100, 500 and 1000 Hz (realtime_factor 1) in its own
   process; a probe process counts /joint_states and records inter-arrival times.
   Reports achieved/requested rate and period jitter (median, p99 of |dt - period|).
2. Lockstep: the probe answers every state with a command (a closed loop over DDS, as a
   controller would); reports simulated steps per wall second, next to the bare
   MujocoSim.step rate measured in the same run (the ratio is the ROS overhead).

Usage: python bench/sim.py [--quick] [--json PATH] [--model arm2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import (Probe, Proc, node_cmd, period_stats, ros_env, wait_for,  # noqa: E402
                     write_json)


def realtime(rate: float, seconds: float, model: str) -> dict:
    from sensor_msgs.msg import JointState
    env = ros_env()
    sim = Proc(node_cmd("sim_node", {"model": model, "publish_rate": rate,
                                     "diagnostics_rate": 0.0}), env)
    probe = Probe(int(env["ROS_DOMAIN_ID"]))
    try:
        return period_stats(probe.arrivals(JointState, "/joint_states", seconds), rate)
    finally:
        sim.stop()
        probe.close()


def lockstep(seconds: float, model: str) -> dict:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    env = ros_env()
    sim = Proc(node_cmd("sim_node", {"model": model, "publish_rate": 100.0, "lockstep": True,
                                     "diagnostics_rate": 0.0}), env)
    probe = Probe(int(env["ROS_DOMAIN_ID"]))
    node = probe.node
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Float64MultiArray, "/effort_controller/commands", qos)
    count = [0]
    cmd = Float64MultiArray()

    def on_state(msg):
        count[0] += 1
        cmd.data = [0.1 * np.sin(count[0] * 0.01)] * len(msg.name)
        pub.publish(cmd)
    node.create_subscription(JointState, "/joint_states", on_state, qos)
    try:
        if not wait_for(lambda: count[0] > 20 and pub.get_subscription_count() > 0, 30,
                        lambda: probe.spin(0.05)):
            raise RuntimeError("lockstep loop did not start")
        c0, t0 = count[0], time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            probe.spin(0.01)
        steps_per_s = (count[0] - c0) / (time.perf_counter() - t0)
    finally:
        sim.stop()
        probe.close()
    # The same simulator stepped bare, in this process: what ROS costs per step.
    from mbrl_ros.sim.env import MujocoSim
    s = MujocoSim(model, control_period=0.01)
    u = np.zeros(s.n_commands)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(seconds, 2.0):
        s.step(u)
        n += 1
    bare = n / (time.perf_counter() - t0)
    return {"lockstep_steps_per_s": round(steps_per_s, 1), "bare_steps_per_s": round(bare, 1),
            "ros_overhead_ratio": round(bare / steps_per_s, 2),
            "sim_seconds_per_wall_second": round(steps_per_s * 0.01, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 1 min)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--model", default="arm2")
    ap.add_argument("--lockstep-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    secs = 4.0 if a.quick else 20.0
    rt = [] if a.lockstep_only else [realtime(r, secs, a.model) for r in (100.0, 500.0, 1000.0)]
    ls = lockstep(secs, a.model)
    write_json(a.json, {"benchmark": "sim", "model": a.model, "seconds_per_run": secs,
                        "realtime": rt, "lockstep": ls})


if __name__ == "__main__":
    main()
