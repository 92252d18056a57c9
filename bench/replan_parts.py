#!/usr/bin/env python3
"""iLQR replan time per part over the learned models on arm7 (issue 15 item 2): the
planner's fast paths against its reference paths, side by side in one run.

The arm7 reaching task of ``bench/arm7_learned.py`` (models fitted on simulated excitation
with the ``config/arm7.yaml`` tuning; the same perturbed start, the task target, horizon
50, replanning on every control step in lockstep), run once per *variant*; the variants
are stepped round-robin (step k of every variant, then step k + 1), so the machine's load
falls on all of them alike and the ratios come from one run. Variants:

* ``reference``: the model behind a wrapper that offers only ``predict`` (and the GP's
  ``predict_mean``) and the autograd ``linearize_reference``, line search batched over
  the step sizes -- the planner's path before the fast paths;
* ``fast``: the model itself with the planner's defaults (ensemble: compiled rollout of
  the MLP mean, one step size at a time, analytic Jacobian; GP: analytic Jacobian without
  the variance, the compiled rollout of the posterior mean where it has at most
  ``compiled_gp_max_centers`` kernel rows, else ``predict_mean``, the full step first);
* ``fast_uncompiled_rollout`` (GP): ``fast`` with the GP rolled out by ``predict_mean``
  instead of the compiled kernel rollout (``ilqr.compiled_gp_max_centers: 0``);
* ``fast_batched_ls``: ``fast`` with every step size in one batched rollout
  (``parallel_line_search: always``, as the reference), which separates the gain of the
  line-search order from that of the rollout and Jacobian paths.

Reported per variant: replan wall-clock and process-CPU medians (p90), the parts from
``Planner.stats`` (linearisation, cost derivatives, backward pass, rollouts), iterations,
the final and minimum end-effector distance (deterministic: the quality check), the
ratios reference / variant, the load average at start and end, machine and commit.

Usage:
  python bench/replan_parts.py [--quick] [--models ensemble,gp] [--steps N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import percentile  # noqa: E402
from arm7_learned import PARTS, TARGET, fit  # noqa: E402

from mbrl_ros.core import registry  # noqa: E402
from mbrl_ros.core.control.closed_loop import simulate_excitation  # noqa: E402
from mbrl_ros.core.control.mpc import CostSettings, MPCController  # noqa: E402
from mbrl_ros.core.policies.excitation import ExcitationSettings  # noqa: E402
from mbrl_ros.core.robot import RobotDescription  # noqa: E402
from mbrl_ros.core.settings import from_mapping  # noqa: E402
from mbrl_ros.core.threads import limit_threads  # noqa: E402
from mbrl_ros.sim.env import MujocoSim  # noqa: E402

# config/arm7.yaml: the excitation near the task, and the live ensemble's network
EXCITATION = dict(bandwidth=1.5, damping_ratio=0.7, target_margin=0.3, noise_std=0.15)
ENSEMBLE = dict(hidden_units=64, hidden_layers=3)


class Reference:
    """A learned model through its reference paths only: ``predict`` (and ``predict_mean``
    where the model has one) and the autograd Jacobian; no ``mlp_dynamics`` and no
    ``linearize_mean``, so the planner takes the path it took before the fast paths."""

    def __init__(self, model):
        self.model = model
        self.spec = model.spec
        self.time_varying = False
        self.vectorized = True
        if hasattr(model, "predict_mean"):
            self.predict_mean = model.predict_mean

    def predict(self, x, u, t=None):
        return self.model.predict(x, u)

    def linearize(self, xs, us):
        return self.model.linearize_reference(xs, us)


def loadavg() -> list[float]:
    return [float(v) for v in open("/proc/loadavg").read().split()[:3]]


class Variant:
    def __init__(self, name: str, model, settings: dict, horizon: int, seed: int):
        cls = registry.lookup("planner", "ilqr")
        s = from_mapping(cls.Settings, settings)
        self.name, self.model, self.settings = name, model, settings
        self.sim = MujocoSim("arm7", seed=seed, initial_noise=0.05)
        self.sim.reset()

        def factory(pid, nx, nu, u_min, u_max, dt):
            return cls(s, nx, nu, u_min, u_max, dt)
        self.mpc = MPCController(factory, ["ilqr"], "ilqr", horizon, self.sim.effort_limits,
                                 self.sim.position_limits, CostSettings())
        self.mpc.set_model(model)
        self.mpc.set_target(TARGET)
        self.wall, self.cpu, self.iters, self.dists = [], [], [], []
        self.parts = {p: [] for p in PARTS}
        self.failed = None

    def step(self, robot: RobotDescription, ee_target: np.ndarray) -> None:
        if self.failed:
            return
        x, t = self.sim.state(), self.sim.time
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            policy = self.mpc.replan(x, t)
        except Exception as e:            # a diverging model: report, stop this variant
            self.failed = f"{type(e).__name__}: {e}"
            return
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        for p in PARTS:
            self.parts[p].append(float(self.mpc.stats.get(p, np.nan)))
        self.iters.append(float(self.mpc.stats.get("iterations", np.nan)))
        u = np.clip(policy.action(x, t), -self.sim.effort_limits, self.sim.effort_limits)
        self.sim.step(u)
        n = self.sim.n_joints
        self.dists.append(float(np.linalg.norm(robot.ee_position(self.sim.state()[:n])
                                               - ee_target)))

    def summary(self) -> dict:
        def ms(v):
            v = np.asarray(v[1:]) * 1e3                 # the first (cold) replan excluded
            return (round(float(np.median(v)), 3), round(percentile(v, 90), 3)) if v.size \
                else (None, None)
        d = np.asarray(self.dists)
        out = {"variant": self.name, "settings": self.settings, "steps": len(self.dists),
               "failed": self.failed,
               "final_ee_distance_m": round(float(d[-1]), 6) if d.size else None,
               "min_ee_distance_m": round(float(d.min()), 6) if d.size else None,
               "iterations_median": float(np.median(self.iters[1:])) if len(self.iters) > 1
               else None}
        out["replan_ms_median"], out["replan_ms_p90"] = ms(self.wall)
        out["replan_cpu_ms_median"], out["replan_cpu_ms_p90"] = ms(self.cpu)
        for p in PARTS:
            out[p.replace("time_", "").replace("_s", "") + "_ms_median"] = ms(self.parts[p])[0]
        return out


def part_cpu_times(fast: Variant, reference: Reference, repeats: int) -> dict:
    """Process-CPU medians [ms] of the parts on the fast variant's last plan (the nominal,
    its gains and Newton step replayed), reference and fast paths interleaved: the
    linearisation (reference: autograd with the variance; fast: what the planner calls) and
    closed-loop rollouts of 1 and of 9 rows (the line search's step sizes)."""
    planner = fast.mpc.planners["ilqr"]
    xs, us = planner.nominal
    T = us.shape[0]
    K = planner._K
    model = fast.model
    lin_fast = getattr(model, "linearize_mean", None) or model.linearize
    alphas = np.asarray(planner.settings.line_search_alphas)
    kff = 0.01 * np.ones_like(us)
    x0 = xs[0]
    planner._fast = None
    jobs = {
        "linearize": (lambda: reference.linearize(xs[:T], us), lambda: lin_fast(xs[:T], us)),
        "rollout_1_row": (lambda: planner._rollout(reference, x0, us, xs, K, kff, alphas[:1]),
                          lambda: planner._rollout(model, x0, us, xs, K, kff, alphas[:1])),
        "rollout_9_rows": (lambda: planner._rollout(reference, x0, us, xs, K, kff, alphas),
                           lambda: planner._rollout(model, x0, us, xs, K, kff, alphas)),
    }
    out = {}
    for name, (ref_f, fast_f) in jobs.items():
        ref_f(), fast_f()
        t = {"reference": [], "fast": []}
        for _ in range(repeats):
            for key, f in (("reference", ref_f), ("fast", fast_f)):
                c = time.process_time()
                f()
                t[key].append(time.process_time() - c)
        r, f = (float(np.median(t[k])) * 1e3 for k in ("reference", "fast"))
        out[name] = {"reference": round(r, 3), "fast": round(f, 3), "ratio": round(r / f, 2)}
    return out


def run_model(kind: str, data, args, robot, ee_target) -> dict:
    settings = ENSEMBLE if kind == "ensemble" else json.loads(args.gp)
    model, metrics, fit_s = fit(kind, data, settings)
    base = json.loads(args.ilqr)
    # the reference: the path before the fast paths, whose 'auto' line search batched
    # every step size for these (vectorized) models
    variants = [Variant("reference", Reference(model), {**base, "parallel_line_search": "always"},
                        args.horizon, args.seed),
                Variant("fast", model, base, args.horizon, args.seed),
                Variant("fast_batched_ls", model, {**base, "parallel_line_search": "always"},
                        args.horizon, args.seed)]
    if kind == "gp":        # the compiled mean rollout's own share: the same without it
        variants.append(Variant("fast_uncompiled_rollout", model,
                                {**base, "compiled_gp_max_centers": 0}, args.horizon,
                                args.seed))
    load0 = loadavg()
    t0 = time.time()
    for _ in range(args.steps):
        for v in variants:
            v.step(robot, ee_target)
    rows = [v.summary() for v in variants]
    parts_cpu = part_cpu_times(variants[1], variants[0].model, args.repeats)
    ref = rows[0]
    for r in rows[1:]:
        r["ratio_reference_over_this"] = {
            k: round(ref[k] / r[k], 2) for k in r
            if k.endswith("_ms_median") and isinstance(r[k], (int, float)) and r[k] > 0
            and isinstance(ref.get(k), (int, float))}
    return {"model": kind, "transitions": int(data.states.shape[0]),
            "fit_seconds": round(fit_s, 1), "mode": getattr(model, "mode", ""),
            "val_rmse": metrics.get("val_rmse"), "variants": rows, "parts_cpu_ms": parts_cpu,
            "loadavg_start": load0, "loadavg_end": loadavg(),
            "wall_seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="60 replans per variant and 20 s of excitation for both models "
                    "(default: 300 replans; ensemble 60 s / 6 episodes, GP 20 s / 4)")
    ap.add_argument("--models", default="ensemble,gp")
    ap.add_argument("--steps", type=int, help="replans per variant (overrides --quick)")
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--ilqr", default='{"max_iterations": 1}', help="iLQR settings, JSON")
    ap.add_argument("--gp", default="{}", help="GP settings, JSON")
    ap.add_argument("--seed", type=int, default=1, help="seed of the reaching start")
    ap.add_argument("--repeats", type=int, default=20,
                    help="repeats of each part's CPU-time measurement")
    ap.add_argument("--json", help="append the result (one JSON object per line)")
    a = ap.parse_args()
    a.steps = a.steps or (60 if a.quick else 300)
    limit_threads()
    import torch
    torch.set_num_threads(1)
    robot = RobotDescription.load("arm7")
    ee_target = robot.ee_position(TARGET)
    exc = ExcitationSettings(**EXCITATION)
    result = {"args": vars(a), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model(),
                          "python": platform.python_version()},
              "commit": _commit(), "models": []}
    for kind in a.models.split(","):
        seconds, episodes = (60.0, 6) if kind == "ensemble" and not a.quick else (20.0, 4)
        data = simulate_excitation("arm7", seconds, episodes, seed=0, settings=exc)
        r = run_model(kind, data, a, robot, ee_target)
        result["models"].append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
