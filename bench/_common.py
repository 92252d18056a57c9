"""Shared plumbing for the benchmarks: machine facts, JSON output, node processes."""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BIN = Path(sys.executable).parent


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "cpu": cpu, "nproc": os.cpu_count(),
            "python": platform.python_version()}


def write_json(path: str | None, payload: dict) -> None:
    payload = {"machine": machine(), **payload}
    text = json.dumps(payload, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text)


_claim = None      # this benchmark's domain lock, held until the process ends


def ros_env(domain_id: int | None = None) -> dict:
    """Environment for node processes: localhost discovery and ``domain_id``, or else this
    benchmark's private domain, claimed once per process (a lock held until it exits, so
    two benchmarks at once never share one; its runs start one after another on it)."""
    global _claim
    if domain_id is None:
        if _claim is None:
            from mbrl_ros.ros.domains import claim_domain
            # 81..101: apart from the tests (1..50) and in-process CLI runs (51..80)
            _claim = claim_domain(range(81, 102))
        domain_id = _claim.domain
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    return env


class Proc:
    """A node process in its own process group."""

    def __init__(self, cmd: list[str], env: dict, log: Path | None = None):
        self.out = open(log, "wb") if log else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def stop(self, sig=signal.SIGINT, timeout: float = 20.0) -> int:
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        if self.out is not subprocess.DEVNULL:
            self.out.close()
        return self.p.returncode


def node_cmd(executable: str, params: dict) -> list[str]:
    cmd = [str(BIN / executable), "--ros-args"]
    for k, v in params.items():
        v = ("true" if v else "false") if isinstance(v, bool) else v
        v = "''" if v == "" else v          # rcl needs a YAML value for an empty string
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def percentile(xs, q) -> float:
    import numpy as np
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def wait_for(cond, timeout: float, spin) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        spin()
        if cond():
            return True
    return False


class Probe:
    """A measuring node in its own rclpy context on ``domain`` (localhost discovery)."""

    def __init__(self, domain: int, name: str = "bench_probe"):
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin(self, timeout: float = 0.01) -> None:
        self.executor.spin_once(timeout_sec=timeout)

    def arrivals(self, msg_type, topic: str, seconds: float, warmup: int = 10,
                 startup_timeout: float = 60.0) -> list[float]:
        """perf_counter() arrival times of ``topic`` over ``seconds``, after ``warmup``
        messages have shown that the publisher is up."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        times: list[float] = []
        self.node.create_subscription(msg_type, topic, lambda m: times.append(time.perf_counter()),
                                      QoSProfile(depth=1000,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        if not wait_for(lambda: len(times) > warmup, startup_timeout, lambda: self.spin(0.05)):
            raise RuntimeError(f"nothing published on {topic}")
        times.clear()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.spin(0.01)
        return times

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def period_stats(arrivals: list[float], rate: float) -> dict:
    """Achieved rate and deviation of the message periods from 1/rate."""
    import numpy as np
    dt = np.diff(arrivals)
    dev = np.abs(dt - 1.0 / rate) * 1e3
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return {"requested_hz": rate, "achieved_hz": round(achieved, 2),
            "ratio": round(achieved / rate, 4),
            "period_ms_median": round(float(np.median(dt)) * 1e3, 4),
            "period_dev_ms_median": round(float(np.median(dev)), 4),
            "period_dev_ms_p99": round(percentile(dev, 99), 4),
            "p99_dev_fraction_of_period": round(percentile(dev, 99) * rate / 1e3, 3),
            "samples": len(arrivals)}
