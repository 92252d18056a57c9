"""GPS checkpoints as plain data: nothing in them is code, so loading one runs none.

A checkpoint is a directory written under a hidden temporary name and renamed into place
(the files fsynced first, the parent directory after; :mod:`mbrl_ros.core.store`'s
helpers), so a reader sees a whole checkpoint or none::

    OUT/checkpoint/it0003/state.json    small structures: run state (metrics, best policy),
                                        MDGPS scalars, iteration records, random states,
                                        SHA-256 of the two files below
    OUT/checkpoint/it0003/arrays.npz    every array (np.savez, read with allow_pickle=False)
    OUT/checkpoint/it0003/torch.pt      policy network, Adam and torch generator state
                                        (torch.save of state_dicts, read weights_only=True)
    OUT/checkpoint/pending-0004/        this iteration's samples and random states, written
                                        right after sampling (state.json + arrays.npz)

What an :class:`~mbrl_ros.core.algorithms.gps.MDGPS` holds between iterations is written
field by field (:data:`_MDGPS_FIELDS` lists them; saving refuses an MDGPS with a field it
does not know, so a new one cannot be lost silently): the conditions' controllers, the
step-size state (eta, step multiplier), the shared dynamics prior (kept transitions and
mixture) and the fitted TVLG models, the policy prior, the policy trainer, the random
generators, the iteration records and the previous iteration's quantities the step
adaptation compares against. The environment, the costs and the settings come from the run
configuration (a resume checks it is the same).

A damaged checkpoint (truncated, edited, missing a file) is refused with
:class:`CheckpointError` naming the file; :func:`load_latest` then falls back to the one
before it and says so (the two newest are kept).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mbrl_ros.core.algorithms.gps import MDGPS, IterationRecord
from mbrl_ros.core.algorithms.gps_step import StepState
from mbrl_ros.core.lqr.kl_step import CostExpansion
from mbrl_ros.core.models.base import Linearization, ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.store import _fsync_dir, _sha256, remove_stale

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_latest",
           "save_pending", "load_pending", "drop_pending", "checkpoints", "KEEP"]

FORMAT = 1
KEEP = 2                    # newest iteration checkpoints kept (the older one: fallback)

# Every attribute of an MDGPS and how a checkpoint treats it.
_MDGPS_FIELDS = {
    # rebuilt from the run configuration / re-attached
    "env", "sampler", "settings", "M", "nx", "nu", "T", "dt", "u_min", "u_max", "costs",
    "traj_opt_settings", "tasks", "n_task", "distances", "distance",
    # saved
    "models", "prior", "trainer", "policy_prior", "controllers", "eta", "step_mult", "rng",
    "_gmm_rng", "iteration_count", "n_samples", "interaction_seconds", "history",
    "last_samples", "_prev", "_pending_discards",
    # results of the last C-step only used within an iteration: not saved (empty on resume)
    "last_results",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (the message names the file)."""


# ---------------------------------------------------------------------- writing
def _write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    with open(path, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _publish_dir(parent: Path, name: str, files: dict[str, Callable[[Path], None]]) -> Path:
    """Write ``files`` into a temporary directory of ``parent`` and rename it to ``name``
    (replacing an older one of that name)."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    target = parent / name
    try:
        for fname, writer in files.items():
            writer(tmp / fname)
        _fsync_dir(tmp)
        if target.exists():
            old = parent / f".tmp-old-{name}-{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_bundle(parent: Path, name: str, meta: dict, arrays: dict[str, np.ndarray],
                 torch_state: dict | None) -> Path:
    def w_npz(p: Path):
        _write(p, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))

    def w_pt(p: Path):
        import torch
        _write(p, lambda f: torch.save(torch_state, f))

    def w_json(p: Path):
        meta["checksums"] = {n: _sha256(p.parent / n) for n in files if n != "state.json"}
        _write(p, lambda f: f.write(json.dumps(meta, indent=1)), "w")

    files: dict[str, Callable[[Path], None]] = {"arrays.npz": w_npz}
    if torch_state is not None:
        files["torch.pt"] = w_pt
    files["state.json"] = w_json                # last: it holds the others' checksums
    return _publish_dir(parent, name, files)


# ---------------------------------------------------------------------- reading
def _load_bundle(d: Path) -> tuple[dict, dict[str, np.ndarray], dict | None]:
    meta_path = d / "state.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint file {meta_path} cannot be read: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or \
            not isinstance(meta.get("checksums"), dict):
        raise CheckpointError(f"checkpoint file {meta_path} is not a GPS checkpoint of "
                              f"format {FORMAT}")
    for name, want in meta["checksums"].items():
        p = d / name
        try:
            got = _sha256(p)
        except OSError as e:
            raise CheckpointError(f"checkpoint file {p} cannot be read: {e}") from e
        if got != want:
            raise CheckpointError(f"checkpoint file {p} is damaged (SHA-256 {got[:12]}... "
                                  f"differs from {want[:12]}... recorded in {meta_path})")
    try:
        with np.load(d / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise CheckpointError(f"checkpoint file {d / 'arrays.npz'} cannot be read: {e}") from e
    torch_state = None
    if "torch.pt" in meta["checksums"]:
        import torch
        try:
            torch_state = torch.load(d / "torch.pt", weights_only=True)
        except Exception as e:        # torch raises many types for a bad file
            raise CheckpointError(f"checkpoint file {d / 'torch.pt'} cannot be read: "
                                  f"{e}") from e
    return meta, arrays, torch_state


# ---------------------------------------------------------------------- MDGPS pieces
def _put_lg(arrays: dict, meta: dict, key: str, c: LinearGaussianPolicy) -> None:
    arrays[f"{key}.K"], arrays[f"{key}.k"], arrays[f"{key}.xbar"] = c.K, c.k, c.xbar
    arrays[f"{key}.u_min"], arrays[f"{key}.u_max"] = c.u_min, c.u_max
    if c.cov is not None:
        arrays[f"{key}.cov"] = c.cov
    meta[key] = {"t0": float(c.t0), "dt": float(c.dt)}


def _get_lg(arrays: dict, meta: dict, key: str) -> LinearGaussianPolicy:
    return LinearGaussianPolicy(K=arrays[f"{key}.K"], k=arrays[f"{key}.k"],
                                xbar=arrays[f"{key}.xbar"], cov=arrays.get(f"{key}.cov"),
                                t0=meta[key]["t0"], dt=meta[key]["dt"],
                                u_min=arrays[f"{key}.u_min"], u_max=arrays[f"{key}.u_max"])


def _rng_state(g: np.random.Generator) -> dict:
    return g.bit_generator.state


def _set_rng(g: np.random.Generator, state: dict) -> None:
    g.bit_generator.state = state


def mdgps_state(gps: MDGPS) -> tuple[dict, dict[str, np.ndarray], dict | None]:
    """(JSON-able dict, arrays, torch state) of everything an MDGPS carries between
    iterations.

    Raises:
        CheckpointError: the MDGPS has an attribute this module does not know.
    """
    unknown = sorted(set(vars(gps)) - _MDGPS_FIELDS)
    if unknown:
        raise CheckpointError(f"MDGPS has attributes the checkpoint does not cover: "
                              f"{unknown} (add them to gps_checkpoint)")
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for m, c in enumerate(gps.controllers):
        _put_lg(arrays, meta, f"ctrl{m}", c)
    fitted = []
    for m, mdl in enumerate(gps.models):
        fitted.append(mdl.fx is not None)
        if mdl.fx is not None:
            for k in ("fx", "fu", "f0", "cov", "x0_mean", "x0_cov"):
                arrays[f"model{m}.{k}"] = getattr(mdl, k)
    meta["models_fitted"] = fitted
    meta["models_share_prior"] = all(mdl.prior is gps.prior for mdl in gps.models)
    arrays.update({f"dyn.{k}": v for k, v in gps.prior.to_arrays().items()})
    pp = gps.policy_prior
    meta["policy_prior"] = pp is not None
    if pp is not None:
        arrays.update({f"pol.{k}": v for k, v in pp.gmm.to_arrays("gmm").items()})
        if pp.X is not None:
            arrays["pol.X"] = pp.X
        if pp.C is not None:
            arrays["pol.C"] = pp.C
    tr = gps.trainer
    meta["trainer"] = {"steps": int(tr.steps), "built": tr.net is not None}
    for k in ("x_mean", "x_std", "u_mean", "u_scale", "std"):
        v = getattr(tr, k)
        if v is not None:
            arrays[f"trainer.{k}"] = v
    torch_state = None
    if tr.net is not None:
        torch_state = {"net": tr.net.state_dict(), "opt": tr._opt.state_dict(),
                       "gen": tr._gen.get_state()}
    meta.update(eta=[float(e) for e in gps.eta], step_mult=float(gps.step_mult),
                rng=_rng_state(gps.rng), gmm_rng=_rng_state(gps._gmm_rng),
                iteration_count=int(gps.iteration_count), n_samples=int(gps.n_samples),
                interaction_seconds=float(gps.interaction_seconds),
                history=[r.to_json() for r in gps.history],
                pending_discards=[int(gps._pending_discards[0]),
                                  list(gps._pending_discards[1]),
                                  float(gps._pending_discards[2])])
    if gps.last_samples is not None:
        arrays["last.X"], arrays["last.U"] = gps.last_samples
    prev = gps._prev
    meta["prev"] = prev is not None
    if prev is not None:
        meta["prev_new_ctrl"] = prev.new_ctrl is not None
        arrays["prev.sample_cost"] = prev.sample_cost
        meta["prev_cc_final"] = []
        for m in range(len(prev.dyn)):
            d = prev.dyn[m]
            arrays[f"prev{m}.fx"], arrays[f"prev{m}.fu"], arrays[f"prev{m}.f0"] = \
                d.fx, d.fu, d.f0
            if d.cov is not None:
                arrays[f"prev{m}.dcov"] = d.cov
            arrays[f"prev{m}.x0_mean"], arrays[f"prev{m}.x0_cov"] = prev.x0[m]
            e = prev.expansion[m]
            for k in ("Cm", "cv", "cc", "Cm_final", "cv_final"):
                arrays[f"prev{m}.{k}"] = getattr(e, k)
            meta["prev_cc_final"].append(float(e.cc_final))
            _put_lg(arrays, meta, f"prev{m}.pol_lin", prev.pol_lin[m])
            if prev.new_ctrl is not None:
                _put_lg(arrays, meta, f"prev{m}.new_ctrl", prev.new_ctrl[m])
    return meta, arrays, torch_state


def restore_mdgps(gps: MDGPS, meta: dict, arrays: dict[str, np.ndarray],
                  torch_state: dict | None) -> None:
    """Load :func:`mdgps_state` output into ``gps``, built from the same configuration.

    Raises:
        KeyError, ValueError, TypeError, RuntimeError: inconsistent contents (the caller
            names the file).
    """
    M = gps.M
    if len(meta["eta"]) != M:
        raise ValueError(f"checkpoint has {len(meta['eta'])} conditions, the run {M}")
    gps.controllers = [_get_lg(arrays, meta, f"ctrl{m}") for m in range(M)]
    gps.prior.load_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("dyn.")})
    for m, mdl in enumerate(gps.models):
        if meta["models_fitted"][m]:
            for k in ("fx", "fu", "f0", "cov", "x0_mean", "x0_cov"):
                setattr(mdl, k, arrays[f"model{m}.{k}"])
            nx, nu = gps.nx, gps.nu
            mdl.spec = ModelSpec(nx, nu, tuple(f"x{i}" for i in range(nx)),
                                 tuple(f"u{i}" for i in range(nu)), 0.0)
    pp = gps.policy_prior
    if (pp is not None) != meta["policy_prior"]:
        raise ValueError("the checkpoint and the run disagree on the policy prior")
    if pp is not None:
        pp.load_gmm_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("pol.gmm")},
                           "gmm")
        pp.X, pp.C = arrays.get("pol.X"), arrays.get("pol.C")
    tr = gps.trainer
    if meta["trainer"]["built"]:
        if torch_state is None:
            raise ValueError("the policy network's state is missing")
        nin = tr.nx + tr.n_task
        tr._build(np.zeros((2, nin)), np.zeros((2, tr.nu)))      # the architecture
        tr.net.load_state_dict(torch_state["net"])
        tr._opt.load_state_dict(torch_state["opt"])
        tr._gen.set_state(torch_state["gen"])
    for k in ("x_mean", "x_std", "u_mean", "u_scale", "std"):
        if f"trainer.{k}" in arrays:
            setattr(tr, k, arrays[f"trainer.{k}"])
    tr.steps = int(meta["trainer"]["steps"])
    gps.eta = [float(e) for e in meta["eta"]]
    gps.step_mult = float(meta["step_mult"])
    _set_rng(gps.rng, meta["rng"])
    _set_rng(gps._gmm_rng, meta["gmm_rng"])
    gps.iteration_count = int(meta["iteration_count"])
    gps.n_samples = int(meta["n_samples"])
    gps.interaction_seconds = float(meta["interaction_seconds"])
    gps.history = [IterationRecord(**r) for r in meta["history"]]
    d, reasons, lost = meta["pending_discards"]
    gps._pending_discards = (int(d), list(reasons), float(lost))
    gps.last_samples = (arrays["last.X"], arrays["last.U"]) if "last.X" in arrays else None
    gps.last_results = []
    gps._prev = None
    if meta["prev"]:
        dyn, x0, exp, pol_lin, new_ctrl = [], [], [], [], []
        for m in range(M):
            dyn.append(Linearization(arrays[f"prev{m}.fx"], arrays[f"prev{m}.fu"],
                                     arrays[f"prev{m}.f0"], arrays.get(f"prev{m}.dcov")))
            x0.append((arrays[f"prev{m}.x0_mean"], arrays[f"prev{m}.x0_cov"]))
            exp.append(CostExpansion(*(arrays[f"prev{m}.{k}"] for k in
                                       ("Cm", "cv", "cc", "Cm_final", "cv_final")),
                                     float(meta["prev_cc_final"][m])))
            pol_lin.append(_get_lg(arrays, meta, f"prev{m}.pol_lin"))
            if meta["prev_new_ctrl"]:
                new_ctrl.append(_get_lg(arrays, meta, f"prev{m}.new_ctrl"))
        gps._prev = StepState(dyn, x0, exp, pol_lin,
                              new_ctrl if meta["prev_new_ctrl"] else None,
                              arrays["prev.sample_cost"])


# ---------------------------------------------------------------------- checkpoints
def checkpoints(ckpt: Path) -> list[int]:
    """Iterations with a checkpoint directory in ``ckpt``, oldest first."""
    if not ckpt.is_dir():
        return []
    out = []
    for p in ckpt.iterdir():
        if p.name.startswith("it") and p.name[2:].isdigit() and p.is_dir():
            out.append(int(p.name[2:]))
    return sorted(out)


def save_checkpoint(ckpt: Path, gps: MDGPS, run_state: dict) -> Path:
    """Write the checkpoint of iteration ``gps.iteration_count`` (MDGPS state plus
    ``run_state``: JSON-able run bookkeeping) and keep the :data:`KEEP` newest."""
    meta, arrays, torch_state = mdgps_state(gps)
    it = gps.iteration_count
    doc = {"format": FORMAT, "iteration": it, "run": run_state, "mdgps": meta}
    path = _save_bundle(ckpt, f"it{it:04d}", doc, arrays, torch_state)
    for old in checkpoints(ckpt)[:-KEEP]:
        shutil.rmtree(ckpt / f"it{old:04d}", ignore_errors=True)
    return path


def load_checkpoint(d: Path, gps: MDGPS) -> dict:
    """Restore ``gps`` from checkpoint directory ``d``; returns the run state.

    Raises:
        CheckpointError: unreadable, damaged or inconsistent (names the file).
    """
    meta, arrays, torch_state = _load_bundle(d)
    try:
        if meta.get("iteration") != meta["mdgps"]["iteration_count"]:
            raise ValueError("iteration numbers disagree")
        restore_mdgps(gps, meta["mdgps"], arrays, torch_state)
        run = meta["run"]
        if not isinstance(run, dict):
            raise TypeError("the run state is not a mapping")
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {d} is inconsistent ({type(e).__name__}: {e}); "
                              f"files {d / 'state.json'}, {d / 'arrays.npz'}") from e
    return run


def load_latest(ckpt: Path, make_gps: Callable[[], MDGPS],
                warn: Callable[[str], None] = print) -> tuple[MDGPS, dict, int]:
    """The newest usable checkpoint in ``ckpt``: (restored MDGPS, run state, iteration).
    A damaged newest one is reported through ``warn`` and the one before it used.

    Raises:
        CheckpointError: no checkpoint, or none usable (every failure named).
    """
    its = checkpoints(ckpt)
    if not its:
        raise CheckpointError(f"--resume: no checkpoint in {ckpt}")
    errors = []
    for it in reversed(its):
        gps = make_gps()
        try:
            run = load_checkpoint(ckpt / f"it{it:04d}", gps)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"warning: {e}; trying the previous iteration's checkpoint")
            continue
        if errors:
            warn(f"warning: resuming from the checkpoint of iteration {it} (a newer one is "
                 f"damaged); iteration {it + 1} runs again")
        return gps, run, it
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))


# ---------------------------------------------------------------------- pending samples
def save_pending(ckpt: Path, iteration: int, samples: tuple, gps_rng: dict,
                 env_rng: dict) -> Path:
    """This iteration's samples (:meth:`MDGPS.draw_samples` output) and the random states
    after drawing them."""
    X, U, seconds, (discarded, reasons, lost) = samples
    doc = {"format": FORMAT, "iteration": int(iteration), "seconds": float(seconds),
           "discarded": int(discarded), "reasons": list(reasons), "lost": float(lost),
           "rng": gps_rng, "env_rng": env_rng}
    return _save_bundle(ckpt, f"pending-{iteration:04d}", doc, {"X": X, "U": U}, None)


def load_pending(ckpt: Path, iteration: int, warn: Callable[[str], None] = print
                 ) -> tuple[tuple, dict, dict] | None:
    """(samples, gps rng state, env rng state) saved for ``iteration``, or None (none
    saved, or damaged: reported through ``warn`` and redrawn)."""
    d = ckpt / f"pending-{iteration:04d}"
    if not d.is_dir():
        return None
    try:
        meta, arrays, _ = _load_bundle(d)
        samples = (arrays["X"], arrays["U"], float(meta["seconds"]),
                   (int(meta["discarded"]), list(meta["reasons"]), float(meta["lost"])))
        return samples, meta["rng"], meta["env_rng"]
    except (CheckpointError, KeyError, TypeError, ValueError) as e:
        warn(f"warning: the saved samples of iteration {iteration} are unusable ({e}); "
             "drawing them again")
        return None


def drop_pending(ckpt: Path) -> None:
    """Remove every pending-samples directory (after a checkpoint covers them)."""
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if p.name.startswith("pending-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
