#!/usr/bin/env python3
"""Figures of the GP and linear models that a refactoring must not change.

Fits ``linear`` and every GP mode (exact independent, exact Matérn 5/2, exact multitask,
sparse independent, sparse multitask with ELBO steps) on fixed seeded data sets (arm2
without, cartpole with a continuous joint) and reports, per model: predictions (mean and
variance) on fixed inputs, ``predict_mean``, the linearisation (fx, fu, f0, cov) at three
points, the noise variance, the one-step RMSE on held-out transitions and the same
predictions after an artifact round trip (``state_arrays`` -> ``load_state_arrays``).
Fit time, the median time of one predict() and of a 50-step linearize() are reported, not
compared.

The data sets are stored in ``test/resources/model_equivalence.npz`` (made once with
``--make-data`` from ``mbrl_ros.sim`` excitation rollouts), so the figures do not depend on
the simulator. ``test/core/test_model_equivalence.py`` compares a fresh run with the figures
saved in ``test/resources/model_equivalence.json`` (rtol 1e-9, atol 1e-10).

Usage:
    python bench/model_equivalence.py [--make-data] [--json PATH] [--compare PATH]
    python bench/model_equivalence.py --fit-cpu     # median CPU seconds of arm2 fits
    python bench/model_equivalence.py --save-artifacts DIR   # at one commit, then
    python bench/model_equivalence.py --load-artifacts DIR   # at another
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test" / "resources" / "model_equivalence.npz"
REFERENCE = ROOT / "test" / "resources" / "model_equivalence.json"
N_TRAIN = 400
N_VAL = 200

# name -> (model kind, settings); small budgets so the whole run takes seconds
MODELS = {
    "linear": ("linear", {}),
    "linear_ridge": ("linear", {"ridge": 1e-2}),
    "gp_exact": ("gp", {"iterations": 30, "hyper_subset": 200}),
    "gp_exact_var_rank": ("gp", {"iterations": 30, "hyper_subset": 200, "var_rank": 32,
                                 "outlier_threshold": 2.0}),
    "gp_exact_matern52_adam": ("gp", {"iterations": 15, "hyper_subset": 100,
                                      "kernel": "matern52", "optimizer": "adam",
                                      "mean": "zero"}),
    "gp_multitask": ("gp", {"iterations": 15, "hyper_subset": 100, "outputs": "multitask",
                            "rank": 2}),
    "gp_sparse": ("gp", {"iterations": 20, "hyper_subset": 100, "max_exact": 100,
                         "n_inducing": 40}),
    "gp_sparse_multitask": ("gp", {"iterations": 10, "hyper_subset": 100, "max_exact": 100,
                                   "n_inducing": 30, "outputs": "multitask",
                                   "sparse_iterations": 5, "batch_size": 64}),
}


def make_data(path: Path = DATA) -> None:
    """Excitation rollouts of arm2 and cartpole (seeded), saved as plain arrays."""
    from mbrl_ros.core.control.closed_loop import simulate_excitation
    arrays = {}
    for robot in ("arm2", "cartpole"):
        b = simulate_excitation(robot, 6.0, 2, seed=7)
        for name in ("states", "actions", "next_states", "dt", "time", "episode"):
            arrays[f"{robot}.{name}"] = np.asarray(getattr(b, name))
        arrays[f"{robot}.state_names"] = np.array(b.state_names)
        arrays[f"{robot}.action_names"] = np.array(b.action_names)
        arrays[f"{robot}.continuous_joints"] = np.array(
            list(b.meta.get("continuous_joints", [])), dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_data(path: Path = DATA) -> dict:
    """robot -> (train, validation) TransitionBatch."""
    from mbrl_ros.core.types import TransitionBatch
    out = {}
    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    for robot in ("arm2", "cartpole"):
        b = TransitionBatch(a[f"{robot}.states"], a[f"{robot}.actions"],
                            a[f"{robot}.next_states"], a[f"{robot}.dt"], a[f"{robot}.time"],
                            a[f"{robot}.episode"],
                            tuple(str(s) for s in a[f"{robot}.state_names"]),
                            tuple(str(s) for s in a[f"{robot}.action_names"]),
                            meta={"robot": robot, "continuous_joints": [
                                str(j) for j in a[f"{robot}.continuous_joints"]]})
        # train on the first N_TRAIN of a shuffled order (both episodes), validate on the
        # last N_VAL
        order = np.random.default_rng(3).permutation(len(b))
        out[robot] = (b.subset(np.sort(order[:N_TRAIN])), b.subset(np.sort(order[-N_VAL:])))
    return out


def _probe(val) -> tuple[np.ndarray, np.ndarray]:
    """Fixed query points: 6 validation transitions and 2 points off the data."""
    idx = np.arange(0, len(val), len(val) // 6)[:6]
    x, u = val.states[idx], val.actions[idx]
    x = np.concatenate([x, x[:2] + 0.3], axis=0)
    u = np.concatenate([u, u[:2] - 0.5], axis=0)
    return x, u


def model_figures(kind: str, settings: dict, train, val) -> dict:
    import mbrl_ros.core.models  # noqa: F401  (registers the model providers)
    from mbrl_ros.core import registry
    from mbrl_ros.core.settings import from_mapping
    cls = registry.lookup("model", kind)
    model = cls(from_mapping(cls.Settings, settings))
    t0 = time.perf_counter()
    report = model.fit(train, rng=np.random.default_rng(11))
    fit_s = time.perf_counter() - t0
    x, u = _probe(val)
    mean, var = model.predict(x, u)
    lin = model.linearize(x[:3], u[:3])
    pred_val, _ = model.predict(val.states, val.actions)
    out = {"predict_mean": mean, "predict_var": var,
           "fx": lin.fx, "fu": lin.fu, "f0": lin.f0,
           "one_step_rmse": float(np.sqrt(np.mean((pred_val - val.next_states) ** 2)))}
    if lin.cov is not None:
        out["cov"] = lin.cov
    if kind == "gp":
        out["predict_mean_only"] = model.predict_mean(x, u)
        out["noise_variance"] = model.noise_variance()
        out["n_outliers"] = float(model.n_outliers)
        out["train_nll"] = float(report.metrics["train_nll"])
        ref_mean, ref_var = model.predict_reference(x[:4], u[:4])
        out["reference_mean"], out["reference_var"] = ref_mean, ref_var
    times = []
    for i in range(100):
        t1 = time.perf_counter()
        model.predict(x[i % len(x)], u[i % len(u)])
        times.append(time.perf_counter() - t1)
    t1 = time.perf_counter()
    model.linearize(np.repeat(x[:1], 50, axis=0), np.repeat(u[:1], 50, axis=0))
    lin_s = time.perf_counter() - t1
    clone = cls(model.settings, model.spec)
    clone.load_state_arrays(model.state_arrays())
    m2, v2 = clone.predict(x, u)
    out["reloaded_mean"], out["reloaded_var"] = m2, v2
    out = {k: (np.asarray(v).tolist() if not isinstance(v, float) else v)
           for k, v in out.items()}
    return {"values": out, "fit_seconds": fit_s, "predict_1_ms": 1e3 * float(np.median(times)),
            "linearize_50_ms": 1e3 * lin_s}


def run(models: dict = MODELS) -> dict:
    import torch
    torch.set_num_threads(1)
    data = load_data()
    res = {}
    for robot, (train, val) in data.items():
        for name, (kind, settings) in models.items():
            res[f"{robot}/{name}"] = model_figures(kind, settings, train, val)
    return res


def fit_cpu_times(robot: str = "arm2", names=("gp_exact", "gp_multitask", "gp_sparse",
                                              "linear"), repeats: int = 5) -> dict:
    """Median CPU time (s, ``time.process_time``: less sensitive to other processes than
    wall time) of one fit of each model on ``robot``'s data, after one warm-up fit."""
    import mbrl_ros.core.models  # noqa: F401  (registers the model providers)
    import torch
    from mbrl_ros.core import registry
    from mbrl_ros.core.settings import from_mapping
    torch.set_num_threads(1)
    train, _ = load_data()[robot]
    out = {}
    for name in names:
        kind, settings = MODELS[name]
        cls = registry.lookup("model", kind)
        cpu = []
        for _ in range(repeats + 1):
            model = cls(from_mapping(cls.Settings, settings))
            c0 = time.process_time()
            model.fit(train, rng=np.random.default_rng(11))
            cpu.append(time.process_time() - c0)
        out[name] = float(np.median(cpu[1:]))
    return out


ARTIFACT_MODELS = ("gp_exact", "gp_multitask", "gp_sparse", "gp_sparse_multitask", "linear")


def artifacts(directory: str, save: bool) -> dict:
    """Artifact compatibility across commits: ``save`` fits the models and writes their
    ``state_arrays`` (npz), spec and predictions on the probe inputs to ``directory``; else
    loads them with the code at hand and returns the largest |prediction difference| (mean
    and variance) per model."""
    import mbrl_ros.core.models  # noqa: F401  (registers the model providers)
    import torch
    from mbrl_ros.core import registry
    from mbrl_ros.core.models.base import ModelSpec
    from mbrl_ros.core.settings import from_mapping
    torch.set_num_threads(1)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for robot, (train, val) in load_data().items():
        x, u = _probe(val)
        for name in ARTIFACT_MODELS:
            kind, settings = MODELS[name]
            cls = registry.lookup("model", kind)
            path = root / f"{robot}_{name}"
            if save:
                model = cls(from_mapping(cls.Settings, settings))
                model.fit(train, rng=np.random.default_rng(11))
                np.savez(path.with_suffix(".npz"), **model.state_arrays())
                np.save(path.with_suffix(".pred.npy"), np.concatenate(model.predict(x, u), 1))
                path.with_suffix(".spec.json").write_text(json.dumps(model.spec.to_json()))
                continue
            spec = ModelSpec.from_json(json.loads(path.with_suffix(".spec.json").read_text()))
            model = cls(from_mapping(cls.Settings, settings), spec)
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as f:
                model.load_state_arrays({k: f[k] for k in f.files})
            got = np.concatenate(model.predict(x, u), 1)
            out[f"{robot}/{name}"] = float(np.max(np.abs(got - np.load(
                path.with_suffix(".pred.npy")))))
    return out


def compare(new: dict, ref: dict, rtol: float = 1e-9, atol: float = 1e-10) -> list[str]:
    """Differences beyond tolerance, one line each (empty: equivalent)."""
    bad = []
    for key, entry in ref.items():
        if key not in new:
            bad.append(f"{key}: missing")
            continue
        for name, want in entry["values"].items():
            got = new[key]["values"].get(name)
            if got is None:
                bad.append(f"{key}.{name}: missing")
                continue
            w, g = np.asarray(want, dtype=float), np.asarray(got, dtype=float)
            if w.shape != g.shape:
                bad.append(f"{key}.{name}: shape {g.shape} != {w.shape}")
            elif not np.allclose(g, w, rtol=rtol, atol=atol):
                err = np.max(np.abs(g - w) / (atol + rtol * np.abs(w)))
                bad.append(f"{key}.{name}: max |diff| {np.max(np.abs(g - w)):.3g} "
                           f"({err:.3g} x tolerance)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make-data", action="store_true", help="regenerate the data set")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--compare", help="compare with figures saved by --json")
    ap.add_argument("--fit-cpu", action="store_true",
                    help="only print the median CPU time of arm2 fits (JSON)")
    ap.add_argument("--save-artifacts", metavar="DIR",
                    help="only fit and save artifacts + predictions to DIR")
    ap.add_argument("--load-artifacts", metavar="DIR",
                    help="only load DIR's artifacts and print |prediction differences|")
    a = ap.parse_args()
    if a.save_artifacts or a.load_artifacts:
        res = artifacts(a.save_artifacts or a.load_artifacts, save=bool(a.save_artifacts))
        print(json.dumps(res))
        return 0
    if a.fit_cpu:
        print(json.dumps(fit_cpu_times()))
        return 0
    if a.make_data:
        make_data()
    res = run()
    for key, entry in res.items():
        v = entry["values"]
        print(f"{key:36s} fit {entry['fit_seconds']:6.3f} s  one-step RMSE "
              f"{v['one_step_rmse']:.10g}  mean[0,0] {v['predict_mean'][0][0]:.15g}  "
              f"fx[0,0,0] {v['fx'][0][0][0]:.15g}")
    if a.json:
        Path(a.json).write_text(json.dumps(res))
    if a.compare:
        bad = compare(res, json.loads(Path(a.compare).read_text()))
        print("\n".join(bad) if bad else "equivalent: every figure within rtol 1e-9, "
              "atol 1e-10")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
