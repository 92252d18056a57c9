#!/usr/bin/env python3
"""Benchmark the data logger: sustained messages per second with zero drops.

A publisher process sends JointState (7 joints) and Float64MultiArray (7 values) on
/joint_states and /effort_controller/commands, each at RATE Hz, every message carrying a
sequence number; data_logger records them; after SIGINT the bag is read back with rosbags
and compared with what was published: published == written, in order, is a pass.
The rate is raised step by step (1, 2, 4, 8 kHz per topic) until a step drops messages
or misses its publish rate; the maximum clean total rate is reported. The target run is
1 kHz + 1 kHz for 10 minutes (``--duration 600 --rates 1000``).

Usage: python bench/logger.py [--quick] [--json PATH] [--duration S] [--rates 1000,2000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import Proc, node_cmd, ros_env, write_json  # noqa: E402

JOINTS = [f"joint{i}" for i in range(1, 8)]


def publisher(rate: float, duration: float) -> None:
    """Child process: publish both topics at ``rate`` for ``duration`` s, print counts."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, "/joint_states", qos)
    cmd_pub = node.create_publisher(Float64MultiArray, "/effort_controller/commands", qos)
    end = time.monotonic() + 30
    while (js_pub.get_subscription_count() < 1 or cmd_pub.get_subscription_count() < 1) \
            and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)
    js = JointState(name=JOINTS, position=[0.0] * 7, velocity=[0.0] * 7, effort=[0.0] * 7)
    cmd = Float64MultiArray(data=[0.0] * 7)
    period = 1.0 / rate
    n = 0
    t0 = time.perf_counter()
    next_t = t0
    while True:
        now = time.perf_counter()
        if now - t0 >= duration:
            break
        # Publish every tick that is due (bursts catch up after a scheduling hiccup).
        while next_t <= now and n < rate * duration:
            js.header.stamp.sec, js.header.stamp.nanosec = divmod(n, 1_000_000_000)
            js.position[0] = float(n)
            cmd.data[0] = float(n)
            js_pub.publish(js)
            cmd_pub.publish(cmd)
            n += 1
            next_t += period
        delay = next_t - time.perf_counter()
        if delay > 0.0005:
            time.sleep(delay - 0.0003)
    elapsed = time.perf_counter() - t0
    time.sleep(1.0)          # let reliable delivery finish before the logger is stopped
    print(f"PUBLISHED {n} {elapsed:.4f}", flush=True)
    node.destroy_node()
    rclpy.shutdown()


def run_step(rate: float, duration: float, workdir: Path) -> dict:
    from rosbags.highlevel import AnyReader
    env = ros_env()
    out = workdir / f"r{int(rate)}"
    logger = Proc(node_cmd("data_logger", {"output_dir": str(out), "bag_name": "b",
                                           "diagnostics_rate": 0.0, "qos_depth": 10000,
                                           "episode_topic": ""}), env, workdir / "logger.log")
    pub_log = workdir / f"pub{int(rate)}.log"
    with open(pub_log, "w") as f:
        pub = subprocess.run(
            [sys.executable, __file__, "--role", "publisher", "--rate", str(rate),
             "--duration", str(duration)], env=env, stdout=f, stderr=subprocess.STDOUT,
            timeout=duration + 120)
    logger.stop()
    line = [ln for ln in pub_log.read_text().splitlines() if ln.startswith("PUBLISHED")]
    if pub.returncode != 0 or not line:
        raise RuntimeError(f"publisher failed: {pub_log.read_text()[-2000:]}")
    published, elapsed = int(line[0].split()[1]), float(line[0].split()[2])
    written = {"/joint_states": [], "/effort_controller/commands": []}
    with AnyReader(sorted(p for p in out.iterdir() if p.is_dir())) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in written:
                msg = reader.deserialize(raw, conn.msgtype)
                written[conn.topic].append(msg.position[0] if conn.topic == "/joint_states"
                                           else msg.data[0])
    in_order = all(v == list(map(float, range(len(v)))) for v in written.values())
    drops = {t: published - len(v) for t, v in written.items()}
    achieved = published / elapsed
    shutil.rmtree(out, ignore_errors=True)
    return {"rate_per_topic_hz": rate, "duration_s": duration, "published_per_topic": published,
            "achieved_publish_hz": round(achieved, 1), "drops": drops, "in_order": in_order,
            "clean": all(d == 0 for d in drops.values()) and in_order
            and achieved >= 0.98 * rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s steps (< 1 min)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--duration", type=float, default=None, help="seconds per rate step")
    ap.add_argument("--rates", default="1000,2000,4000,8000", help="per-topic rates (Hz)")
    ap.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=1000.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "publisher":
        publisher(a.rate, a.duration)
        return
    duration = a.duration or (5.0 if a.quick else 30.0)
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in [float(r) for r in a.rates.split(",")]:
            step = run_step(rate, duration, Path(tmp))
            steps.append(step)
            print(step, file=sys.stderr)
            if not step["clean"]:
                break
    clean = [s for s in steps if s["clean"]]
    write_json(a.json, {"benchmark": "logger", "steps": steps,
                        "max_clean_total_msgs_per_s": 2 * max(
                            (s["achieved_publish_hz"] for s in clean), default=0.0)})


if __name__ == "__main__":
    main()
