#!/usr/bin/env python3
"""Our planners and models against the peers of ../shared/anchors, on identical problems,
timed side by side in one run (ratios = ours / peer; < 1 means we are faster).

  P1  iLQR (box-QP DDP) vs Crocoddyl DDP / BoxDDP / BoxFDDP on the LQ problem
  P2  our MPPI and CEM over the same 5-member ensemble vs pytorch_mppi and mbrl-lib CEM
  P3  one training epoch of our ensemble vs mbrl-lib's ModelTrainer
  P4  our exact GP vs GPyTorch's batch exact GP (train 50 iterations, predict)

The peers need their own environment (shared/anchors/requirements.txt): run this file
with that venv's python; `make bench-anchors` creates it as .venv-anchors. Our package is
imported from this checkout (its core needs only numpy/scipy/torch/gpytorch).
Usage: .venv-anchors/bin/python bench/anchors.py [--quick] [--problems p1,p2,p3,p4]
       [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = Path(os.environ.get("MBRL_ROS_ANCHORS", ROOT.parent / "shared" / "anchors"))
sys.path[:0] = [str(ROOT), str(ANCHORS)]
import anchors  # noqa: E402  (pins every thread pool to one thread before numpy/torch)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mbrl_ros.core.costs.quadratic import QuadraticCost  # noqa: E402
from mbrl_ros.core.models.base import Linearization, ModelSpec  # noqa: E402


# ------------------------------------------------------------------------------ P1: iLQR
class LinearDynamics:
    """x' = A x + B u as a model (exact, time-invariant)."""
    time_varying = False

    def __init__(self, A, B):
        self.A, self.B = A, B
        nx, nu = B.shape
        self.spec = ModelSpec(nx, nu, tuple(f"x{i}" for i in range(nx)),
                              tuple(f"u{i}" for i in range(nu)), 0.01)
        self._AT, self._BT = A.T.copy(), B.T.copy()

    def affine_dynamics(self):
        """(A, B, c): our iLQR rolls affine models out in one compiled call."""
        return self.A, self.B, np.zeros(self.A.shape[0])

    def predict(self, x, u, t=None):
        if x.ndim == 1:
            x, u = x[None], u[None]
        y = np.dot(x, self._AT)
        y += np.dot(u, self._BT)
        return y, None

    def linearize(self, xs, us):
        T = us.shape[0]
        return Linearization(np.broadcast_to(self.A, (T,) + self.A.shape),
                             np.broadcast_to(self.B, (T,) + self.B.shape),
                             np.zeros((T, self.A.shape[0])))


def p1_factory(p: dict) -> dict:
    from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings
    nx, nu, T, b = p["nx"], p["nu"], p["T"], p["u_bound"]
    model = LinearDynamics(p["A"], p["B"])
    cost = QuadraticCost(p["Q"], p["R"], p["Q"])
    inf = np.full(nu, 1e9)

    def unit(bounded: bool, iterations: int):
        planner = ILQRPlanner(ILQRSettings(horizon=T, max_iterations=iterations, mu_init=0.0,
                                           mu_min=0.0), nx, nu,
                              -b * np.ones(nu) if bounded else -inf,
                              b * np.ones(nu) if bounded else inf, 0.01)

        def run():
            planner.reset(T)                       # cold start every call, as crocoddyl's
            planner.optimize(p["x0"], 0.0, model, cost)
            xs, us = planner.nominal
            # The planner's own cost of its solution, as crocoddyl's units report theirs;
            # checked against the harness's rollout of `us` below (untimed).
            return {"cost": float(planner.stats["cost"]), "us": us, "xs": xs,
                    "iters": int(planner.stats["iterations"])}

        out = run()
        ref = anchors.lq_cost(p, out["us"])[0]
        if not abs(out["cost"] - ref) <= 1e-9 * abs(ref):
            raise AssertionError(f"P1: our cost {out['cost']} != the harness's {ref}")
        return run
    return {"lq": unit(False, 100), "lq_iter": unit(False, 1), "box": unit(True, 100),
            "box_fddp": unit(True, 100)}


# ------------------------------------------------------------------------------ P2: sampling
def p2_model(p: dict):
    """Our EnsembleModel holding the anchors' P2 weights (identity normalisers, the
    log-variance head pinned low so it predicts the same deltas as the peers' network)."""
    from mbrl_ros.core.models.ensemble import EnsembleModel
    nx, nu = p["nx"], p["nu"]
    spec = ModelSpec(nx, nu, tuple(f"x{i}" for i in range(nx)),
                     tuple(f"u{i}" for i in range(nu)), 0.01)
    model = EnsembleModel(EnsembleModel.Settings(linear_prior=False), spec)
    arrays = {}
    layers = p["layers"]
    for i, (W, bias) in enumerate(layers):
        if i == len(layers) - 1:          # mean head + a log-variance head
            W = np.concatenate([W, np.zeros_like(W)], axis=2)
            bias = np.concatenate([bias, np.full_like(bias, -10.0)], axis=1)
        arrays[f"W{i}"], arrays[f"b{i}"] = W, bias[:, None, :]
    E = layers[0][0].shape[0]
    arrays.update(max_logvar=np.full((E, 1, nx), 0.5, np.float32),
                  min_logvar=np.full((E, 1, nx), -10.0, np.float32),
                  elites=np.arange(E), val_mse=np.zeros(E),
                  in_mean=np.zeros(nx + nu), in_std=np.ones(nx + nu),
                  out_mean=np.zeros(nx), out_std=np.ones(nx))
    model.load_state_arrays(arrays)
    return model


def p2_factory(p: dict) -> dict:
    """Our MPPI and CEM on P2. The variants named as the peers' use the peers' settings
    (TS-inf, row r -> member r % 5; MPPI: noise 0.25, lambda 1 in cost units, the
    control-cost term; CEM: mbrl-lib's PETS configuration; the peers' algorithm: no Newton
    refinement, no feedback gains); '*_default' are our planners' defaults (refine newton,
    feedback lqr: no peer, absolute times only)."""
    from mbrl_ros.core.planners.cem import CEMPlanner, CEMSettings
    from mbrl_ros.core.planners.mppi import MPPIPlanner, MPPISettings
    model = p2_model(p)
    nx, nu, T, b = p["nx"], p["nu"], p["horizon"], p["u_bound"]
    # |x_{t+1} - goal|^2 + w|u_t|^2 = our stage cost on x_1..x_T (x_0's term is constant)
    cost = QuadraticCost(2 * np.eye(nx), 2 * p["w_u"] * np.eye(nu), 2 * np.eye(nx),
                         x_target=p["goal"].astype(np.float64))
    x0 = p["x0"].astype(np.float64)

    def unit(planner):
        clock = {"t": 0.0}

        def run():       # repeated MPC steps at the same x0, warm-started (as the peers)
            planner.optimize(x0, clock["t"], model, cost)
            clock["t"] += 0.01
            st = planner.stats
            return {"plan": planner.nominal[1], "model_calls": st.get("model_calls"),
                    "rows_per_call": st.get("rows_per_call")}
        return run

    def mppi(**kw):
        peer = dict(temperature=1.0, temperature_units="absolute", noise_sigma=(0.25,),
                    noise_units="absolute", control_cost=1.0, keep_nominal=False,
                    propagation="tsinf", refine="none", feedback="none")
        return MPPIPlanner(MPPISettings(horizon=T, samples=p["samples"], **{**peer, **kw}),
                           nx, nu, -b, b, 0.01)

    def cem(**kw):
        peer = dict(population=p["samples"], iterations=5, elite_ratio=0.1, alpha=0.1,
                    init_std=(0.5,), keep_elites=0.0, keep_mean=False, aleatoric=True,
                    propagation="tsinf", refine="none", feedback="none")
        return CEMPlanner(CEMSettings(horizon=T, **{**peer, **kw}), nx, nu, -b, b, 0.01)

    return {"mppi": unit(mppi()), "mppi_no_mean_rollout": unit(mppi(nominal_rollout=False)),
            "mppi_M20": unit(mppi(n_particles=20)),
            "mppi_default": unit(MPPIPlanner(MPPISettings(horizon=T), nx, nu, -b, b, 0.01)),
            "cem": unit(cem(n_particles=20)), "cem_1particle": unit(cem(n_particles=1)),
            "cem_default": unit(CEMPlanner(CEMSettings(horizon=T), nx, nu, -b, b, 0.01))}


# ------------------------------------------------------------------------------ P3: ensemble
def p3_factory(p: dict) -> dict:
    """One epoch of our ensemble training (5 members, 4x200 SiLU, Gaussian NLL, Adam,
    bootstrap, batch 256) on the same 10k transitions. Conservative: the timed call is a
    whole ``fit`` limited to one epoch, so it also pays for normalisation, initialisation
    and a validation pass that the peer's timed epoch leaves out."""
    from mbrl_ros.core.models.ensemble import EnsembleModel
    from mbrl_ros.core.types import TransitionBatch
    n = p["obs"].shape[0]
    data = TransitionBatch(p["obs"].astype(np.float64), p["act"].astype(np.float64),
                           p["next_obs"].astype(np.float64), np.full(n, 0.01),
                           np.arange(n) * 0.01, np.zeros(n, np.int64),
                           [f"x{i}" for i in range(14)], [f"u{i}" for i in range(7)])
    settings = EnsembleModel.Settings(members=p["E"], n_elites=p["E"], batch_size=256,
                                      epochs=1, min_epochs=1, lr=p["lr"],
                                      weight_decay=p["weight_decay"], linear_prior=False,
                                      val_fraction=0.0, lr_half_life=0, threads=1)

    def epoch():
        model = EnsembleModel(settings)
        report = model.fit(data)
        return {"loss": report.metrics["train_nll"]}
    return {"epoch": epoch}


# ------------------------------------------------------------------------------ P4: GP
def p4_factory(p: dict) -> dict:
    """Our GP on the same data, read as dynamics: inputs X = [x (14), u (7)], targets
    Y (the next-state deltas). 'train50' is our whole fit (hyper-parameters by L-BFGS with
    50 evaluations on a 300-point subset, then the exact posterior on all N), where the
    peer runs 50 Adam steps on all N: compare the time together with rmse_test."""
    from mbrl_ros.core.models.gp import GPModel
    from mbrl_ros.core.types import TransitionBatch
    X, Y = p["X"].astype(np.float64), p["Y"].T.astype(np.float64)
    n = X.shape[0]
    data = TransitionBatch(X[:, :14], X[:, 14:], X[:, :14] + Y, np.full(n, 0.01),
                           np.arange(n) * 0.01, np.zeros(n, np.int64),
                           [f"x{i}" for i in range(14)], [f"u{i}" for i in range(7)])
    settings = GPModel.Settings(threads=1, val_fraction=0.0)
    Xq = p["Xq"].astype(np.float64)
    Yq = p["Yq"].T.astype(np.float64)
    state = {"model": GPModel(settings)}
    state["model"].fit(data)

    def train50():
        m = GPModel(settings)
        m.fit(data)
        state["model"] = m
        return {}

    def pred(k):
        def run():
            mean, var = state["model"].predict(Xq[:k, :14], Xq[:k, 14:])
            out = {"shape": [14, k]}
            if k > 1:
                out["rmse_test"] = float(np.sqrt(np.mean((mean - Xq[:k, :14] - Yq[:k]) ** 2)))
                out["min_var"] = float(var.min())
            return out
        return run
    return {"train50": train50, "pred_1": pred(1), "pred_256": pred(256)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--problems", default="p1,p2")
    ap.add_argument("--json", help="write the JSON lines (meta + one per problem) here")
    a = ap.parse_args()
    runs = {"p1": lambda: anchors.run_p1([anchors.Candidate("mbrl_ros", p1_factory)],
                                         quick=a.quick),
            "p2": lambda: anchors.run_p2([anchors.Candidate("mbrl_ros", p2_factory)],
                                         quick=a.quick)}
    runs.update(extra_problems(a.quick))
    lines = [anchors.environment()]
    print(json.dumps(lines[0]), flush=True)
    for key in a.problems.split(","):
        lines.append(runs[key.strip()]())
    if a.json:
        Path(a.json).write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x
                                          for x in lines) + "\n")


def extra_problems(quick: bool) -> dict:
    """P3/P4 with our ensemble and GP (see their factories below)."""
    return {"p3": lambda: anchors.run_p3([anchors.Candidate("mbrl_ros", p3_factory)],
                                         quick=quick),
            "p4": lambda: anchors.run_p4([anchors.Candidate("mbrl_ros", p4_factory)],
                                         quick=quick)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
