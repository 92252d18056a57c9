#!/usr/bin/env python3
"""The CasADi rows of ``bench/controllers.py --quick`` (and CPU-time probes of the CasADi
planner and the bag I/O) for two code trees side by side.

Part A of bench/controllers.py (closed-loop MPC on the MuJoCo sim, arm2, 100 steps,
horizon 30, replanning every period, models 'mujoco' and 'linear' fitted on 20 s of
excitation data) for the planner casadi_mpc only, with its functions imported from
bench/controllers.py unchanged. With ``--trees OLD NEW`` it runs itself alternately under
each tree on PYTHONPATH (``--rounds`` times each, so load changes hit both alike) and
writes every row plus the NEW/OLD ratio of the median replan times. ``--micro``: the CPU
time of one warm ``optimize`` on fixed linear problems instead (see :func:`micro`);
``--bagio``: the CPU time of bag writing, reading and reindexing (see :func:`bagio`).
Thread CPU times (``time.thread_time``) leave out the share of other jobs on a loaded
machine, which wall-clock replan times do not.

Usage:
    python bench/results/split-data-casadi-bench.py --trees /tmp/before /work/main --json out.json
    python bench/results/split-data-casadi-bench.py --micro --trees ... --rounds 3
    python bench/results/split-data-casadi-bench.py --bagio --trees ... --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.normpath(os.path.join(HERE, ".."))


def rows() -> list[dict]:
    sys.path.insert(0, BENCH)
    from controllers import closed_loop, make_model  # noqa: E402

    from mbrl_ros.core.control.closed_loop import simulate_excitation
    from mbrl_ros.core.threads import limit_threads
    limit_threads()
    data = simulate_excitation("arm2", 20.0, 4)
    out = []
    for kind in ("mujoco", "linear"):
        model = make_model(kind, "arm2", data)
        out.append(closed_loop("arm2", kind, "casadi_mpc", model, 100, 30,
                               {"ilqr": {"max_iterations": 2}}))
    return out


def micro() -> list[dict]:
    """CPU time of one warm ``optimize`` on fixed linear problems (thread CPU time, so the
    load of other jobs on the machine does not count): arm2-sized (nx 4, nu 2, T 30) and
    arm7-sized (nx 14, nu 7, T 50) random stable LTI systems with torque bounds, per solver."""
    import numpy as np
    sys.path.insert(0, os.path.join(HERE, "..", "..", "test", "core"))
    from test_casadi_mpc import LinearModel

    from mbrl_ros.core.costs import QuadraticCost
    from mbrl_ros.core.planners.casadi_mpc import CasadiMPCPlanner, CasadiMPCSettings
    from mbrl_ros.core.threads import limit_threads
    limit_threads()
    out = []
    for nx, nu, T, n in ((4, 2, 30, 300), (14, 7, 50, 60)):
        rng = np.random.default_rng(0)
        A = np.eye(nx) + 0.05 * rng.standard_normal((nx, nx))
        B = 0.1 * rng.standard_normal((nx, nu))
        model = LinearModel(A, B)
        cost = QuadraticCost.diagonal([10.0] * nx, [1e-2] * nu, [100.0] * nx,
                                      x_target=rng.standard_normal(nx))
        for solver in ("hpipm", "qrqp", "ipopt"):
            if solver != "hpipm" and nx > 4:
                continue
            p = CasadiMPCPlanner(CasadiMPCSettings(horizon=T, solver=solver), nx, nu,
                                 -np.ones(nu), np.ones(nu), 0.05)
            x0 = rng.standard_normal(nx)
            p.optimize(x0, 0.0, model, cost)
            ts = []
            for k in range(n):
                t0 = time.thread_time()
                p.optimize(x0 + 0.01 * np.sin(k), 0.0, model, cost)
                ts.append(time.thread_time() - t0)
            out.append({"problem": f"nx{nx}_nu{nu}_T{T}", "solver": solver, "calls": n,
                        "optimize_cpu_ms_median": round(float(np.median(ts)) * 1e3, 4),
                        "cost_last": p.stats["cost"]})
    return out


def bagio(n: int = 20000) -> list[dict]:
    """Bag I/O CPU time: building, serialising (CDR) and BagWriter.write_raw of n
    JointState (7 joints, as the data logger receives them) plus n Float64MultiArray
    commands at 1 kHz log times, default chunking and flushing, then close; read_bag of
    that bag (streamed MCAP path); reindex_bag of a copy cut to 90 % without metadata.yaml
    (a killed logger)."""
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np

    from mbrl_ros.core.data import BagWriter, default_typestore, read_bag, reindex_bag
    ts = default_typestore()
    T = ts.types
    names = [f"j{i}" for i in range(7)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.thread_time()
        w = BagWriter(tmp, "b")
        w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        w.add_topic("/effort_controller/commands", "std_msgs/msg/Float64MultiArray")
        for k in range(n):
            t = 1_000_000_000 + k * 1_000_000
            js = T["sensor_msgs/msg/JointState"](
                header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
                    sec=t // 10**9, nanosec=t % 10**9), frame_id=""),
                name=names, position=np.full(7, k, dtype=np.float64),
                velocity=np.zeros(7), effort=np.zeros(7))
            cmd = T["std_msgs/msg/Float64MultiArray"](
                layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                data=np.full(7, float(k)))
            w.write_raw("/joint_states", t, ts.serialize_cdr(js, "sensor_msgs/msg/JointState"))
            w.write_raw("/effort_controller/commands", t,
                        ts.serialize_cdr(cmd, "std_msgs/msg/Float64MultiArray"))
        w.close()
        out["write_cpu_s"] = round(time.thread_time() - t0, 4)
        bag = w.bag_paths[0]
        t0 = time.thread_time()
        msgs, rep = read_bag(bag)
        out["read_cpu_s"] = round(time.thread_time() - t0, 4)
        out["read_messages"] = len(msgs)
        out["read_complete"] = rep.complete
        # a killed logger: no metadata.yaml, MCAP cut before its summary
        killed = Path(tmp) / "killed"
        killed.mkdir()
        mcap = next(bag.glob("*.mcap"))
        data = mcap.read_bytes()
        (killed / mcap.name).write_bytes(data[: int(len(data) * 0.9)])
        t0 = time.thread_time()
        r = reindex_bag(killed)
        out["reindex_cpu_s"] = round(time.thread_time() - t0, 4)
        out["reindex_messages"] = sum(r.counts.values())
        shutil.rmtree(killed)
    return [{"op": "write", "cpu_s": out["write_cpu_s"], "messages": 2 * n},
            {"op": "read", "cpu_s": out["read_cpu_s"], "messages": out["read_messages"],
             "complete": out["read_complete"]},
            {"op": "reindex", "cpu_s": out["reindex_cpu_s"], "messages": out["reindex_messages"]}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", nargs=2, metavar=("OLD", "NEW"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--micro", action="store_true",
                      help="CPU time per optimize on fixed linear problems instead of part A")
    mode.add_argument("--bagio", action="store_true",
                      help="CPU time of bag writing, reading and reindexing instead of part A")
    a = ap.parse_args()
    flag = ["--micro"] if a.micro else ["--bagio"] if a.bagio else []
    if not a.trees:
        import mbrl_ros.core.data.bag as bag
        import mbrl_ros.core.planners.casadi_mpc as cm
        fn = micro if a.micro else bagio if a.bagio else rows
        print(json.dumps({"module": (bag if a.bagio else cm).__file__, "rows": fn()}))
        return
    runs = []
    for r in range(a.rounds):
        for label, tree in zip(("old", "new"), a.trees):
            env = dict(os.environ, PYTHONPATH=tree)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            t0 = time.time()
            p = subprocess.run([sys.executable, os.path.abspath(__file__)] + flag, env=env,
                               capture_output=True, text=True, timeout=1800, cwd="/")
            if p.returncode:
                raise RuntimeError(p.stderr[-3000:])
            res = json.loads(p.stdout.strip().splitlines()[-1])
            res.update(tree=label, round=r, load_before=float(load), wall_s=time.time() - t0)
            runs.append(res)
            print(label, r, res["rows"], file=sys.stderr)
    key, val = ((("problem", "solver"), "optimize_cpu_ms_median") if a.micro else
                (("op",), "cpu_s") if a.bagio else (("model",), "replan_ms_median"))
    ratio = {}
    for row in runs[0]["rows"]:
        name = "/".join(str(row[k]) for k in key)
        med = {lab: [x[val] for run in runs if run["tree"] == lab for x in run["rows"]
                     if all(x[k] == row[k] for k in key)] for lab in ("old", "new")}
        ratio[name] = round(sum(med["new"]) / sum(med["old"]), 3)
    out = {"runs": runs, f"{val}_ratio_new_over_old": ratio}
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(json.dumps(ratio), file=sys.stderr)


if __name__ == "__main__":
    main()
