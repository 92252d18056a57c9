"""Live learning as a user launches it (issue 12): end-effector distance vs live steps.

Runs ``mbrl-ros bringup sim robot:=ROBOT model:=MODEL record:=false`` -- the plan
``sim.launch.py`` uses -- and measures, from the joint states it publishes, the distance
of the end effector to the controller's target (``config/<robot>.yaml``) at every
simulation step: the controller explores (excitation planner) until the fitter's first
model, then runs MPC on it while the fitter refits. Steps are simulation steps from the
joint states' stamps (1 step = 1 control period, 10 ms on the shipped arms), counted from
the first non-zero effort command (the controller's start-up before it is not interaction;
reported as ``steps_before_first_command``).

Figures per run: first step at which the distance is below ``--tolerance`` (2 cm), the
first step from which it stays below it for ``--hold`` steps, the distance at
``--budget`` steps (1,000) and at the end, the same first steps for 1 cm and 2 cm
(``below``), the step of the first model announcement and the number of models, the
control steps while exploring (from /diagnostics), and the machine's load average. Real
time by default (the simulator at ``realtime_factor`` 1, as launched: a fit that takes 3 s
costs 300 steps of exploration); ``--lockstep`` runs the simulator one step per command
and the controller replans on every state before it acts (``plan_mode: sync``, as the
lockstep tests do), so the load cannot change the control in simulated time -- only the
fits, which take wall time while the loop runs on, can land at other steps.
``--planner`` is the bring-up's ``planner:=`` (the controller's active planner).

    python bench/live_learning.py --robot arm2 --models gp,ensemble --json out.json
    python bench/live_learning.py --robot arm7 --models ensemble,gp --lockstep --max-steps 3000
    python bench/live_learning.py --robot arm7 --models ensemble --planner mppi --lockstep
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, Probe, Proc, ros_env, wait_for, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def target_of(robot: str) -> np.ndarray:
    cfg = yaml.safe_load((ROOT / "config" / f"{robot}.yaml").read_text())
    return np.asarray(cfg["/**/controller"]["ros__parameters"]["target_joint_positions"])


def first_below(d: np.ndarray, tol: float, hold: int = 1) -> int | None:
    """Index of the first sample from which ``d`` stays below ``tol`` for ``hold``
    samples (None: never)."""
    below = d < tol
    run = 0
    for i, b in enumerate(below):
        run = run + 1 if b else 0
        if run >= hold:
            return i - hold + 1
    return None


def run(robot: str, model: str, max_steps: int, lockstep: bool, timeout: float,
        workdir: Path, tolerance: float, hold: int, budget: int,
        params_file: str = "", planner: str = "ilqr") -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from mbrl_ros.core.robot import RobotDescription

    sim = RobotDescription.load(robot)
    target = target_of(robot)
    dt = 1.0 / 100.0
    env = ros_env()
    domain = int(env["ROS_DOMAIN_ID"])
    args = ["bringup", "sim", f"robot:={robot}", f"model:={model}", "record:=false",
            f"planner:={planner}"]
    if lockstep:
        f = workdir / "lockstep.yaml"
        text = Path(params_file).read_text() if params_file else ""
        # time stands still while the controller plans: no stale-state holds; it plans on
        # every state before acting (deterministic in simulated time)
        f.write_text(text + "\n/**/sim:\n  ros__parameters:\n    lockstep: true\n"
                     "/**/controller:\n  ros__parameters:\n    state_timeout: 60.0\n"
                     "    plan_mode: sync\n")
        args.append(f"params_file:={f}")
    elif params_file:
        args.append(f"params_file:={Path(params_file).resolve()}")
    log = workdir / f"bringup_{robot}_{model}.log"
    cwd = os.getcwd()
    os.chdir(workdir)                          # the fitter's models/ go there
    try:
        proc = Proc([str(BIN / "mbrl-ros"), *args], env, log)
    finally:
        os.chdir(cwd)
    probe = Probe(domain, "live_learning_probe")
    states: list[tuple[float, np.ndarray]] = []
    models: list[tuple[float, dict]] = []
    exploring: dict[str, int] = {"exploring": 0, "controlling": 0}
    diag: list[tuple[float, dict]] = []
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    n = sim.n_joints
    probe.node.create_subscription(
        JointState, "/joint_states",
        lambda m: states.append((m.header.stamp.sec + m.header.stamp.nanosec * 1e-9,
                                 np.array(m.position[:n]))), reliable)
    first_command: list[float] = []       # stamp of the state the first effort answered

    def on_command(m):
        if not first_command and states and np.any(np.abs(np.asarray(m.data)) > 1e-9):
            first_command.append(states[-1][0])
    probe.node.create_subscription(Float64MultiArray, "/effort_controller/commands",
                                   on_command, reliable)
    probe.node.create_subscription(
        String, "/model_fitter/model",
        lambda m: models.append((states[-1][0] if states else 0.0, json.loads(m.data))),
        latched)

    def on_diag(msg):
        for st in msg.status:
            if st.name == "mbrl_ros/controller":
                v = {kv.key: kv.value for kv in st.values}
                key = "exploring" if v.get("exploring") == "True" else "controlling"
                exploring[key] += 1
                if states:
                    diag.append((states[-1][0], {k: v.get(k) for k in (
                        "exploring", "active_planner", "model_version", "uncertainty",
                        "replan_failures", "fallbacks", "replans", "stale", "holds",
                        "solve_ms_median", "solve_ms_p99", "plan_latency_ms_median",
                        "lookahead_steps", "late_states_unplanned")}))
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    t_wall = time.monotonic()
    load0 = os.getloadavg()
    try:
        def done() -> bool:
            return (proc.p.poll() is not None or
                    (first_command and (states[-1][0] - first_command[0]) / dt >= max_steps))
        wait_for(done, timeout, lambda: probe.spin(0.05))
    finally:
        load1 = os.getloadavg()
        exited = proc.p.poll()
        proc.stop()
        probe.close()
    wall = time.monotonic() - t_wall
    out = {"robot": robot, "model": model, "planner": planner, "lockstep": lockstep,
           "target": target.tolist(),
           "wall_seconds": round(wall, 1), "loadavg_start": load0, "loadavg_end": load1,
           "log": str(log), "bringup_exited": exited}
    if len(states) < 2:
        return {**out, "error": "no joint states"}
    t = np.array([s[0] for s in states])
    order = np.argsort(t, kind="stable")
    t = t[order]
    qs = np.array([states[i][1] for i in order])
    if not first_command:
        return {**out, "error": "the controller never commanded a non-zero effort"}
    live = t >= first_command[0] - 1e-9          # live interaction: from the first effort
    idle_steps = int(np.count_nonzero(~live))
    t, qs = t[live], qs[live]
    steps = np.round((t - t[0]) / dt).astype(int)
    dist = np.array([sim.ee_distance(q, target) for q in qs])
    first = first_below(dist, tolerance)
    stay = first_below(dist, tolerance, hold)
    at_budget = dist[steps <= budget][-1]
    first_model = int(round((models[0][0] - t[0]) / dt)) if models else None
    timeline = [{"step": int(round((ts - t[0]) / dt)), **v} for ts, v in diag]
    curve = [{"step": int(s), "distance_m": round(float(d), 4)}
             for s, d in zip(steps[::50], dist[::50])]
    return {**out,
            "steps": int(steps[-1]), "states_received": len(states),
            "steps_before_first_command": idle_steps,
            "first_step_below_tol": None if first is None else int(steps[first]),
            "first_step_staying_below_tol": None if stay is None else int(steps[stay]),
            "reached_within_budget": stay is not None and int(steps[stay]) <= budget,
            "below": {f"{tol * 100:g} cm": {
                "first_step": _step(steps, first_below(dist, tol)),
                f"first_step_staying_{hold}": _step(steps, first_below(dist, tol, hold))}
                for tol in (0.01, 0.02)},
            "distance_at_budget_m": round(float(at_budget), 4),
            "final_distance_m": round(float(dist[-1]), 4),
            "final_q": [round(float(v), 4) for v in qs[-1]],
            "min_distance_m": round(float(dist.min()), 4),
            "first_model_step": first_model, "models": len(models),
            "last_model": models[-1][1].get("version") if models else None,
            "last_model_metrics": models[-1][1].get("metrics") if models else None,
            "diagnostics_exploring_vs_controlling": exploring,
            "controller_timeline": timeline,
            "curve_every_50_steps": curve}


def _step(steps: np.ndarray, i: int | None) -> int | None:
    return None if i is None else int(steps[i])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robot", default="arm2")
    ap.add_argument("--models", default="gp,ensemble")
    ap.add_argument("--planner", default="ilqr", help="the controller's active planner")
    ap.add_argument("--max-steps", type=int, default=2000, help="live steps per run")
    ap.add_argument("--budget", type=int, default=1000, help="steps the target allows")
    ap.add_argument("--tolerance", type=float, default=0.02, help="m")
    ap.add_argument("--hold", type=int, default=50,
                    help="steps the distance must stay below the tolerance")
    ap.add_argument("--lockstep", action="store_true")
    ap.add_argument("--params-file", default="", help="passed to bringup as params_file")
    ap.add_argument("--timeout", type=float, default=600.0, help="wall s per run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None,
                    help="keep the logs and models here (default: a temporary folder)")
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="live_learning_") as tmp:
        if a.workdir:
            tmp = a.workdir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for model in [m for m in a.models.split(",") if m]:
            r = run(a.robot, model, a.max_steps, a.lockstep, a.timeout, Path(tmp),
                    a.tolerance, a.hold, a.budget, a.params_file, a.planner)
            if not a.workdir:
                r.pop("log")
            runs.append(r)
            print(f"{a.robot} {model} {a.planner}: first model at step "
                  f"{r.get('first_model_step')}, below {r.get('below')}, "
                  f"< {a.tolerance * 100:g} cm (held {a.hold}) from step "
                  f"{r.get('first_step_staying_below_tol')}, at {a.budget}: "
                  f"{r.get('distance_at_budget_m')} m, final {r.get('final_distance_m')} m, "
                  f"{r.get('models')} models, load {r['loadavg_start'][0]:.1f}->"
                  f"{r['loadavg_end'][0]:.1f}", file=sys.stderr)
    write_json(a.json, {"benchmark": "live_learning", "args": vars(a), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
