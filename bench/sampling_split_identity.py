"""Seeded MPPI and CEM solves on fixed models, hashed: run it on two trees (before and after
a refactor of the sampling planners) and compare the printed JSON; identical hashes mean
bit-identical plans (k, K, xbar) and stats.

    PYTHONPATH=<tree> .venv/bin/python bench/sampling_split_identity.py --out run.json

Models: a numpy two-link pendulum-like model with an analytic linearisation (the numpy
predict path, warm-start 'hold', feedback 'lqr', refine 'newton') and a small PETS ensemble
trained with a fixed seed (the torch whole-horizon rollout path, TS-1 / TS-inf /
expectation, aleatoric samples). Each planner solves three times in sequence (warm starts
shift the previous plan by one step).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np
import torch

from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import Linearization
from mbrl_ros.core.planners.cem import CEMPlanner, CEMSettings
from mbrl_ros.core.planners.mppi import MPPIPlanner, MPPISettings

DT = 0.05
NX, NU = 4, 2


class Pendulums:
    """Two independent damped pendulums, x = [q1, q2, qd1, qd2], semi-implicit Euler."""
    time_varying = False

    def predict(self, x, u, t=None):
        x, u = np.atleast_2d(x).astype(float), np.atleast_2d(u).astype(float)
        q, qd = x[:, :2], x[:, 2:]
        qd2 = qd + DT * (u - 4.0 * np.sin(q) - 0.2 * qd)
        return np.concatenate([q + DT * qd2, qd2], axis=1), None

    def linearize(self, xs, us):
        T = us.shape[0]
        fx = np.zeros((T, NX, NX))
        fu = np.zeros((T, NX, NU))
        for t in range(T):
            dqd_dq = np.diag(-DT * 4.0 * np.cos(xs[t, :2]))
            dqd_dqd = np.eye(2) * (1 - 0.2 * DT)
            fx[t, 2:, :2], fx[t, 2:, 2:] = dqd_dq, dqd_dqd
            fx[t, :2, :2] = np.eye(2) + DT * dqd_dq
            fx[t, :2, 2:] = DT * dqd_dqd
            fu[t, 2:] = DT * np.eye(2)
            fu[t, :2] = DT * DT * np.eye(2)
        f0 = self.predict(xs, us)[0] - np.einsum("tij,tj->ti", fx, xs) - np.einsum(
            "tij,tj->ti", fu, us)
        return Linearization(fx, fu, f0)


def trained_ensemble():
    from mbrl_ros.core.models.ensemble import EnsembleModel
    from mbrl_ros.core.types import TransitionBatch
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (400, NX))
    u = rng.uniform(-1, 1, (400, NU))
    data = TransitionBatch(states=x, actions=u, next_states=Pendulums().predict(x, u)[0],
                           dt=np.full(400, DT), time=np.arange(400) * DT,
                           episode=np.zeros(400, dtype=np.int64),
                           state_names=("q1", "q2", "qd1", "qd2"), action_names=("u1", "u2"))
    model = EnsembleModel(EnsembleModel.Settings(members=3, n_elites=3, hidden_layers=2,
                                                 hidden_units=16, epochs=3, dtype="float64"))
    model.fit(data)
    return model


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def solve(planner, model, cost, x0, n=3):
    out = []
    planner.reset(planner.settings.horizon)
    for i in range(n):
        pol = planner.optimize(x0, i * DT, model, cost)
        st = {k: v for k, v in planner.stats.items()
              if not k.startswith("time_") and k not in ("solve_time_s",)}
        out.append(dict(plan=digest(pol.k, pol.K, pol.xbar),
                        stats=digest([float(v) for v in st.values()
                                      if isinstance(v, (int, float))]),
                        cost=float(planner.stats["cost"]), status=planner.stats["status"]))
        x0 = pol.xbar[1] if pol.xbar.shape[0] > 1 else x0
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lo, hi = -np.full(NU, 3.0), np.full(NU, 3.0)
    cost = QuadraticCost.diagonal([10.0, 10.0, 0.1, 0.1], [0.01, 0.01],
                                  qf=[100.0, 100.0, 1.0, 1.0], x_target=[0.5, -0.3, 0.0, 0.0])
    x0 = np.array([0.0, 0.2, 0.0, 0.0])
    models = {"numpy": Pendulums(), "ensemble": trained_ensemble()}
    probe = models["ensemble"].predict(np.tile(x0, (3, 1)), np.ones((3, NU)))[0]
    results = {"ensemble_probe": digest(probe)}
    configs = {
        "default": {},
        "pink_lqr_newton": dict(noise_beta=1.0, feedback="lqr", refine="newton",
                                dtype="float64"),
        "tsinf_aleatoric": dict(propagation="tsinf", aleatoric=True, n_particles=2,
                                warm_start_fill="zero"),
    }
    for mname, model in models.items():
        for cname, cfg in configs.items():
            if mname == "numpy" and cname == "tsinf_aleatoric":
                continue
            mppi = MPPIPlanner(MPPISettings(horizon=20, samples=96, iterations=2, seed=3, **cfg),
                               NX, NU, lo, hi, DT)
            cem = CEMPlanner(CEMSettings(horizon=20, population=64, iterations=3, seed=3,
                                         **cfg), NX, NU, lo, hi, DT)
            results[f"mppi/{mname}/{cname}"] = solve(mppi, model, cost, x0)
            results[f"cem/{mname}/{cname}"] = solve(cem, model, cost, x0)
    text = json.dumps(results, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
