#!/usr/bin/env python3
"""Soak test (issue 11): the simulator and the controller as a user runs them, for an hour.

Runs ``mbrl-ros bringup sim robot:=arm2 model:=mujoco planner:=ilqr record:=false`` --
the processes and parameters of ``ros2 launch mbrl_ros sim.launch.py`` with the same
arguments (the bring-up plan, :mod:`mbrl_ros.bringup`): ``sim_node`` in real time at
100 Hz and the ``controller`` (every planner built, iLQR active, the known MuJoCo model,
configured and activated), each a process of its own -- on a private ROS domain with
localhost discovery. Every ``--period`` seconds (10) the controller gets the next target
of a fixed list of joint targets inside arm2's joint ranges on
``/controller/target_joints``.

Measured, from outside the nodes:
  - RSS (``VmRSS`` in /proc/<pid>/status) of every process the command started -- the
    bring-up runner, the nodes and their children, among them the controller's planning
    worker -- every ``--sample`` seconds (30), and its growth per hour: the slope of a
    least-squares line through the samples after ``--warmup`` seconds (120), not last
    minus first;
  - commands per second received on /effort_controller/commands (whole run and the
    slowest sample interval);
  - the controller's /diagnostics counters (deadline_misses, holds, replan_failures,
    bad_states, plan process starts/failures, ...) at the end of the warm-up and at the end;
  - for every target: whether the joints came within ``--tolerance`` (0.05 rad, largest
    joint error from /joint_states) of it before the next target, when, and the error at
    the end of its period.

Targets (printed as pass/fail; the exit status is 1 if one is missed): RSS growth < 1 MB/h
for every process, no replan failure, every target reached. Machine facts (date, nproc,
load average at start and end) and the commit the nodes ran at go into the output. Every
process the command started is ended when the soak ends, however it ends.

``--quick`` (5 minutes) is a shakedown of the machinery, not a verdict on memory: over its
3 minutes after the warm-up, one 64 kiB step of an allocator arena already reads as
1.3 MB/h; the 1 MB/h target needs the full hour.

Usage: python bench/soak.py [--quick] [--minutes 60] [--json PATH] [--logs DIR]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import BIN, Probe, Proc, machine, ros_env, wait_for, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ROBOT = "arm2"
BRINGUP = ["bringup", "sim", f"robot:={ROBOT}", "model:=mujoco", "planner:=ilqr",
           "record:=false"]
JOINTS = ("shoulder", "elbow")
# Inside arm2's joint ranges (shoulder +-2.967, elbow +-2.793 rad), far apart so that every
# change is a real move (up to 3.5 rad on one joint).
# config/arm2.yaml's own target (0.5, -0.5) comes last: the first target sent is a move.
TARGETS = [(-1.0, 1.2), (1.5, 0.8), (0.0, 0.0), (-2.0, -1.5), (2.2, -2.0), (-0.5, 2.0),
           (1.0, 1.0), (0.5, -0.5)]
COUNTERS = ("commands", "replans", "deadline_misses", "holds", "replan_failures",
            "bad_states", "stale", "control_overruns", "nonfinite_blocked",
            "plan_process_starts", "plan_process_failures")
CONTROLLER_STATUS = "mbrl_ros/controller"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()    # after "(comm)": state ppid ... starttime
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, tuple[int, int]]:
    """``root`` and every live process below it: pid -> (parent pid, start time). The
    bring-up runner starts each node in a session of its own, so the tree, not a session
    or process group, holds them all."""
    stats = {int(e.name): st for e in os.scandir("/proc") if e.name.isdigit()
             and (st := _stat(int(e.name))) is not None}
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in found:
            found[pid] = stats[pid]
            frontier += [c for c, (ppid, _) in stats.items() if ppid == pid]
    return found


def node_name(pid: int) -> str | None:
    """The node name given on the command line (``-r __node:=NAME``), if any."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for a in args:
        if a.startswith(b"__node:="):
            return a.split(b":=", 1)[1].decode()
    return None


def end_strays(seen: dict[int, tuple[int, int]]) -> list[int]:
    """SIGKILL the processes of ``seen`` that outlived the runner (same pid *and* start
    time, so a reused pid is never hit); returns their pids."""
    stray = [pid for pid, (_, start) in seen.items()
             if (st := _stat(pid)) is not None and st[1] == start]
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stray


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def growth_mb_per_hour(samples: list[tuple[float, int]], warmup: float) -> dict:
    """Least-squares slope of RSS over time after ``warmup`` s (samples: (t [s], kiB))."""
    pts = [(t, kib) for t, kib in samples if t >= warmup]
    out = {"samples_after_warmup": len(pts), "rss_mb_first": None, "rss_mb_last": None,
           "growth_mb_per_h": None}
    if samples:
        out["rss_mb_first"] = round(samples[0][1] / 1024, 2)
        out["rss_mb_last"] = round(samples[-1][1] / 1024, 2)
    if len(pts) >= 3:
        t = np.array([p[0] for p in pts]) / 3600.0
        mb = np.array([p[1] for p in pts]) / 1024.0
        slope, _ = np.polyfit(t, mb, 1)
        out["growth_mb_per_h"] = round(float(slope), 3)
    return out


def git_facts() -> dict:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    # porcelain lines are "XY path": the first column may be a space
    dirty = [line[3:] for line in run("status", "--porcelain", "--", "mbrl_ros",
                                      "config").splitlines() if line.strip()]
    return {"commit": run("rev-parse", "HEAD").strip(), "uncommitted_package_files": dirty}


class Watch:
    """What the probe node sees: the newest joint positions, commands, diagnostics."""

    def __init__(self, probe: Probe):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        self.q: np.ndarray | None = None
        self.index: list[int] | None = None
        self.commands = 0
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        self.worker_pids: set[int] = set()     # every plan_process_pid reported
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        node = probe.node
        node.create_subscription(JointState, "/joint_states", self._on_state, deep)
        node.create_subscription(Float64MultiArray, "/effort_controller/commands",
                                 self._on_command, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.target_pub = node.create_publisher(Float64MultiArray, "/controller/target_joints",
                                                10)
        self._msg_type = Float64MultiArray

    def _on_state(self, msg) -> None:
        if self.index is None:
            self.index = [list(msg.name).index(j) for j in JOINTS]
        self.q = np.asarray(msg.position, dtype=float)[self.index]

    def _on_command(self, msg) -> None:
        self.commands += 1

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name == CONTROLLER_STATUS:
                self.diag = {kv.key: kv.value for kv in st.values}
                self.diag_count += 1
                pid = self.diag.get("plan_process_pid", "0")
                if pid.isdigit() and int(pid) > 0:
                    self.worker_pids.add(int(pid))

    def counters(self) -> dict:
        out = {}
        for k in COUNTERS:
            try:
                out[k] = int(self.diag[k])
            except (KeyError, ValueError):
                out[k] = None
        return out

    def send_target(self, q) -> None:
        self.target_pub.publish(self._msg_type(data=[float(v) for v in q]))


def soak(minutes: float, period: float, sample: float, warmup: float, tolerance: float,
         log_dir: Path | None) -> dict:
    env = ros_env()
    domain = int(env["ROS_DOMAIN_ID"])
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    runner: Proc | None = None
    probe = Probe(domain, "soak_probe")
    watch = Watch(probe)
    rss: dict[int, list[tuple[float, int]]] = {}      # pid -> [(t, kiB)]
    seen: dict[int, tuple[int, int]] = {}             # pid -> (parent pid, start time)
    names: dict[int, str] = {}                        # pid -> node name or command name
    windows: list[dict] = []
    targets: list[dict] = []
    counters_after_warmup: dict = {}
    try:
        runner = Proc([str(BIN / "mbrl-ros"), *BRINGUP], env,
                      log_dir / "bringup.log" if log_dir else None)
        started = wait_for(lambda: watch.commands >= 100 and watch.q is not None
                           and watch.diag.get("replans", "0") not in ("", "0")
                           and watch.target_pub.get_subscription_count() >= 1,
                           180.0, lambda: probe.spin(0.05))
        if not started:
            raise RuntimeError("the controller did not command within 180 s (logs: "
                               f"{log_dir or 'pass --logs DIR'})")

        def sample_rss(t: float) -> None:
            for pid, st in descendants(runner.p.pid).items():
                kib = rss_kib(pid)
                if kib is not None:
                    seen.setdefault(pid, st)
                    names.setdefault(pid, node_name(pid) or comm(pid))
                    rss.setdefault(pid, []).append((t, kib))

        def label(pid: int) -> str:
            if pid == runner.p.pid:
                return "bringup"
            parent = seen[pid][0]
            if parent == runner.p.pid:
                return names[pid]                    # a node: its name
            kind = "planning_worker" if pid in watch.worker_pids else names[pid]
            return f"{names.get(parent, parent)}/{kind}:{pid}"

        t0 = time.monotonic()
        duration = minutes * 60.0
        next_sample, next_target = 0.0, 0.0
        commands_at_start = window_commands = watch.commands
        window_start = 0.0
        current: dict | None = None
        k = 0
        while True:
            t = time.monotonic() - t0
            if current is not None and watch.q is not None:
                err = float(np.max(np.abs(watch.q - current["target"])))
                current["final_error"] = err
                if current["reached_s"] is None and err < tolerance:
                    current["reached_s"] = round(t - current["t"], 2)
            if t >= next_target or t >= duration:
                if current is not None:
                    current["target"] = [float(v) for v in current["target"]]
                    current["reached"] = current["reached_s"] is not None
                    current["final_error"] = float(f"{current['final_error']:.3g}")
                    targets.append(current)
                if t >= duration:
                    sample_rss(round(t, 2))
                    break
                target = np.asarray(TARGETS[k % len(TARGETS)], dtype=float)
                watch.send_target(target)
                current = {"index": k, "t": round(t, 2), "target": target,
                           "reached_s": None, "final_error": float("nan")}
                k += 1
                next_target += period
            if t >= next_sample:
                sample_rss(round(t, 2))
                n = watch.commands - window_commands
                if next_sample > 0:           # an interval has passed since the first
                    windows.append({"t": round(t, 1),
                                    "commands_per_s": round(n / (t - window_start), 2),
                                    **watch.counters()})
                    print(f"[soak] t={t:6.0f} s  cmd/s={windows[-1]['commands_per_s']:.1f}  "
                          + "  ".join(f"{label(pid)}={s[-1][1] / 1024:.1f}MB"
                                      for pid, s in rss.items() if s[-1][0] == round(t, 2))
                          + f"  targets reached {sum(x['reached'] for x in targets)}"
                          f"/{len(targets)}", file=sys.stderr, flush=True)
                window_start, window_commands = t, watch.commands
                if not counters_after_warmup and t >= warmup:
                    counters_after_warmup = watch.counters()
                next_sample += sample
                if runner.p.poll() is not None:
                    raise RuntimeError(f"mbrl-ros bringup exited with {runner.p.returncode} "
                                       "during the soak (a node died or failed: see its "
                                       f"output{' in ' + str(log_dir) if log_dir else ''})")
            probe.spin(0.01)
        elapsed = time.monotonic() - t0
        # one more status after the end, so the final counters are the node's newest
        n = watch.diag_count
        wait_for(lambda: watch.diag_count > n, 3.0, lambda: probe.spin(0.05))
        final = watch.counters()
    finally:
        if runner is not None:
            seen.update(descendants(runner.p.pid))
            runner.stop()            # SIGINT: the runner stops its nodes, as on Ctrl-C
            strays = end_strays(seen)
        probe.close()

    rss_by_label = {label(pid): s for pid, s in rss.items()}
    result = summarize(rss_by_label, windows, targets, counters_after_warmup, final,
                       watch.commands - commands_at_start, elapsed, warmup, domain)
    # processes still alive after the runner stopped (it should leave none): killed
    result["stray_processes_killed"] = [f"{names.get(pid, '?')}:{pid}" for pid in strays]
    return result


def summarize(rss, windows, targets, after_warmup, final, commands, elapsed, warmup,
              domain) -> dict:
    processes = {lab: growth_mb_per_hour(s, warmup) for lab, s in rss.items()}
    # processes seen for fewer than 3 samples after the warm-up (e.g. a worker restarted
    # near the end) have no slope; their samples are in rss_samples
    growth = [p["growth_mb_per_h"] for p in processes.values()
              if p["growth_mb_per_h"] is not None]
    rates = [w["commands_per_s"] for w in windows]
    steady = {k: (final[k] - after_warmup[k]) if (final.get(k) is not None and
                                                   after_warmup.get(k) is not None) else None
              for k in COUNTERS}
    reached = sum(t["reached"] for t in targets)
    checks = {
        "rss_growth_below_1mb_per_h": bool(growth) and max(growth) < 1.0,
        "no_replan_failures": final.get("replan_failures") == 0,
        "every_target_reached": bool(targets) and reached == len(targets)}
    return {
        "domain_id": domain, "elapsed_s": round(elapsed, 1),
        "checks": checks,
        "rss": processes,
        "rss_samples": {lab: [[t, kib] for t, kib in s] for lab, s in rss.items()},
        "commands": {"received": commands,
                     "per_s_mean": round(commands / elapsed, 2) if elapsed else None,
                     "per_s_min_interval": min(rates) if rates else None,
                     "per_s_max_interval": max(rates) if rates else None},
        "counters_final": final, "counters_after_warmup": after_warmup,
        "counters_since_warmup": steady,
        "targets_summary": {"sent": len(targets), "reached": reached,
                            "final_error_max": max((t["final_error"] for t in targets),
                                                   default=None),
                            "reached_s_max": max((t["reached_s"] for t in targets
                                                  if t["reached_s"] is not None),
                                                 default=None)},
        "targets": targets, "intervals": windows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 minutes")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--period", type=float, default=10.0, help="seconds per target")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=120.0,
                    help="seconds left out of the RSS growth fit")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="largest joint error [rad] that counts as reached")
    ap.add_argument("--logs", help="directory for the nodes' output")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    # a plain `kill` ends the run like Ctrl-C: the finally block stops the nodes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    minutes = 5.0 if a.quick else a.minutes
    facts = {"benchmark": "soak", "started": machine()["date"], **git_facts(), "robot": ROBOT, "model": "mujoco",
             "planner": "ilqr", "minutes": minutes, "target_period_s": a.period,
             "sample_s": a.sample, "warmup_s": a.warmup, "tolerance_rad": a.tolerance,
             "load_avg_start": [round(v, 2) for v in os.getloadavg()]}
    result = soak(minutes, a.period, a.sample, a.warmup, a.tolerance,
                  Path(a.logs) if a.logs else None)
    facts["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(a.json, {**facts, **result})
    checks = result["checks"]
    print("[soak] " + "  ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()),
          file=sys.stderr)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
