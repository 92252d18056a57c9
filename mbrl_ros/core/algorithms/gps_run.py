"""One GPS experiment in simulation, as ``mbrl-ros gps`` and ``bench/gps.py`` run it.

* **Conditions** are (start, target) pairs; the global policy is target-conditioned (its
  input is [state, target joint positions]), so one network serves every target; it is
  also evaluated on *held-out* conditions it never trained on.
* **Checkpoints**: after every iteration ``OUT/checkpoint/itNNNN/`` (the algorithm's
  whole state without the simulator, and the run's bookkeeping) and, right after sampling,
  ``pending-NNNN/`` (this iteration's samples and the random states): ``resume=True``
  continues at the next iteration and reuses samples already drawn. They are plain data
  (JSON, ``.npz`` without pickles, torch state_dicts loaded ``weights_only``), written
  atomically; a damaged one is refused naming the file, and the previous iteration's is
  used instead (:mod:`.gps_checkpoint`).
* **Artifacts**: every iteration's policy is published as ``OUT/NAME/vNNNN``; ``latest``
  points at the best one so far by the held-out end-effector distance (training
  conditions when there are no held-out ones).
* **Report**: ``OUT/metrics.json`` (rewritten after every iteration) and ``OUT/gps.png``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mbrl_ros.core.policies.neural import PolicySettings, publish_policy
from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings, IterationRecord
from mbrl_ros.core.algorithms.gps_checkpoint import (CheckpointError, drop_pending,
                                                     load_latest, load_pending,
                                                     save_checkpoint, save_pending)
from mbrl_ros.core.algorithms.sampler import EnvSampler
from mbrl_ros.core.algorithms.sim_env import (ARM7_HOME, DEFAULT_STARTS, MujocoEnv, ReachTask,
                                              reach_task)
from mbrl_ros.core.costs.task import CostSettings, default_conditions
from mbrl_ros.core.lqr.kl_step import TrajOptSettings, sample_costs
from mbrl_ros.core.models.base import FitReport
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.core.settings import as_dict, from_mapping
from mbrl_ros.core.store import point_latest

__all__ = ["GPSRunConfig", "run_gps", "time_policy_action", "load_config",
           "evaluate_conditions", "evaluate_through", "DEFAULT_CONDITIONS"]

_A7 = np.array(ARM7_HOME)


def _a7(**d) -> list[float]:
    q = _A7.copy()
    for k, v in d.items():
        q[int(k[1:]) - 1] += v
    return [round(float(x), 4) for x in q]


# Default (start, target) pairs per shipped robot: training and held-out conditions. The
# held-out targets lie between the training ones (interpolation, not extrapolation).
DEFAULT_CONDITIONS: dict[str, dict[str, list]] = {
    "arm2": {
        "train": [(DEFAULT_STARTS["arm2"][0], (0.5, 0.6)), (DEFAULT_STARTS["arm2"][1], (0.9, -0.2)),
                  (DEFAULT_STARTS["arm2"][2], (-0.2, 0.9)), (DEFAULT_STARTS["arm2"][3], (0.3, 1.1))],
        "heldout": [((0.3, 0.3), (0.6, 0.3)), ((0.8, 0.5), (0.2, 0.8)),
                    ((0.0, 0.8), (0.7, 0.7)), ((0.6, -0.2), (0.3, 0.5))],
    },
    "arm7": {
        "train": [(ARM7_HOME, _a7(j1=0.4, j2=0.25, j4=0.3)),
                  (ARM7_HOME, _a7(j1=-0.4, j2=0.25, j4=-0.3)),
                  (ARM7_HOME, _a7(j1=0.4, j2=-0.25, j4=-0.3)),
                  (ARM7_HOME, _a7(j1=-0.4, j2=-0.25, j4=0.3))],
        "heldout": [(ARM7_HOME, _a7(j1=0.2, j2=0.1, j4=0.1)),
                    (ARM7_HOME, _a7(j1=-0.2, j2=0.15, j4=-0.1)),
                    (ARM7_HOME, _a7(j1=0.25, j2=-0.1, j4=-0.15)),
                    (ARM7_HOME, _a7(j1=-0.1, j2=-0.15, j4=0.2))],
    },
}


@dataclass
class GPSRunConfig:
    """What to run (``quick`` shrinks the defaults for a short run).

    Attributes:
        robot: shipped name or MJCF path.
        out: output directory (metrics.json, gps.png, checkpoint/, NAME/vNNNN artifacts).
        iterations: MDGPS iterations (0: 8, quick 3).
        conditions: training conditions used (0: all given / 4 defaults, quick 2).
        samples: trajectories per condition and iteration (0: 5, quick 4).
        horizon: steps per trajectory; control_period: seconds per step.
        starts, targets: training conditions, one (n_joints,) each [rad|m] (None: the
            robot's defaults, :data:`DEFAULT_CONDITIONS`, or drawn around ``home``).
        heldout_starts, heldout_targets: held-out conditions (same defaults).
        init_std, init_damping, init_kp: initial controllers (:func:`reach_task`; None:
            per-robot default).
        limit_margin, max_velocity: invalid-sample checks (:class:`MujocoEnv`).
        resume: continue from OUT/checkpoint.
    """
    robot: str = "arm2"
    out: Path = Path("gps_out")
    iterations: int = 0
    quick: bool = False
    conditions: int = 0
    samples: int = 0
    horizon: int = 40
    control_period: float = 0.05
    seed: int = 0
    name: str = "gps_policy"
    progress: bool = True
    write: bool = True
    resume: bool = False
    starts: list | None = None
    targets: list | None = None
    heldout_starts: list | None = None
    heldout_targets: list | None = None
    init_std: float | None = None
    init_damping: float | None = None
    init_kp: float | None = None
    limit_margin: float | None = 0.1
    max_velocity: float = 50.0
    cost: CostSettings = field(default_factory=CostSettings)
    gps: dict = field(default_factory=dict)
    traj_opt: TrajOptSettings = field(default_factory=TrajOptSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)

    def resolved(self) -> "GPSRunConfig":
        q = self.quick
        pol = self.policy
        if q and pol == PolicySettings():
            pol = dataclasses.replace(pol, iterations=250)
        defaults = {"arm2": (0.5, 0.5, 0.0), "arm7": (0.05, 5.0, 0.3)}.get(
            self.robot, (0.1, 1.0, 0.3))
        starts, targets = self.starts, self.targets
        hs, ht = self.heldout_starts, self.heldout_targets
        dc = DEFAULT_CONDITIONS.get(self.robot)
        if targets is None:
            if dc is not None:
                starts = starts or [list(s) for s, _ in dc["train"]]
                targets = [list(t) for _, t in dc["train"]]
            else:
                s0, targets = default_conditions(RobotDescription.load(self.robot),
                                                 self.conditions or 4, seed=self.seed)
                starts = starts or s0.tolist()
                targets = targets.tolist()
        if starts is None:
            raise ValueError("targets given without starts")
        if ht is None and hs is None:
            if dc is not None:
                hs, ht = [list(s) for s, _ in dc["heldout"]], [list(t) for _, t in dc["heldout"]]
            else:
                s0, t0 = default_conditions(RobotDescription.load(self.robot), 4,
                                            seed=self.seed + 1000)
                hs, ht = s0.tolist(), t0.tolist()
        if (hs is None) != (ht is None) or (hs is not None and len(hs) != len(ht)):
            raise ValueError("heldout_starts and heldout_targets must be given together, "
                             "one start per target")
        if len(starts) != len(targets):
            raise ValueError(f"{len(starts)} starts but {len(targets)} targets")
        n_cond = self.conditions or (2 if q else len(targets))
        if not 1 <= n_cond <= len(targets):
            raise ValueError(f"conditions must be 1..{len(targets)}, got {n_cond}")
        return dataclasses.replace(
            self, iterations=self.iterations or (3 if q else 8), conditions=n_cond,
            samples=self.samples or (4 if q else 5), policy=pol,
            starts=[list(map(float, s)) for s in starts[:n_cond]],
            targets=[list(map(float, t)) for t in targets[:n_cond]],
            heldout_starts=[list(map(float, s)) for s in (hs or [])],
            heldout_targets=[list(map(float, t)) for t in (ht or [])],
            init_std=defaults[0] if self.init_std is None else self.init_std,
            init_damping=defaults[1] if self.init_damping is None else self.init_damping,
            init_kp=defaults[2] if self.init_kp is None else self.init_kp)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["out"] = str(d["out"])
        for k in ("cost", "traj_opt", "policy"):
            d[k] = as_dict(d[k])
        return d


_RUN_KEYS = {"robot", "iterations", "conditions", "samples", "horizon", "control_period",
             "seed", "name", "init_std", "init_damping", "init_kp", "limit_margin",
             "max_velocity"}


def load_config(path: str | Path, **overrides) -> GPSRunConfig:
    """A :class:`GPSRunConfig` from a YAML file (``config/gps_arm7.yaml`` documents the
    keys); ``overrides`` (not None) win over the file.

    Raises:
        ValueError: unreadable file, unknown keys, bad values.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the GPS config {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    known = _RUN_KEYS | {"conditions_list", "train", "heldout", "cost", "gps", "traj_opt",
                         "policy"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(known)}")
    kw: dict[str, Any] = {k: data[k] for k in _RUN_KEYS if k in data}
    for key, (sk, tk) in (("train", ("starts", "targets")),
                          ("heldout", ("heldout_starts", "heldout_targets"))):
        if key in data:
            rows = data[key] or []
            try:
                kw[sk] = [list(map(float, r["start"])) for r in rows]
                kw[tk] = [list(map(float, r["target"])) for r in rows]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: '{key}' must be a list of {{start: [...], "
                                 f"target: [...]}} ({e})") from e
    try:
        if "cost" in data:
            kw["cost"] = from_mapping(CostSettings, data["cost"] or {})
        if "traj_opt" in data:
            kw["traj_opt"] = from_mapping(TrajOptSettings, data["traj_opt"] or {})
        if "policy" in data:
            kw["policy"] = from_mapping(PolicySettings, data["policy"] or {})
        if "gps" in data:
            g = dict(data["gps"] or {})
            from_mapping(GPSSettings, g)            # validate now
            kw["gps"] = g
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return GPSRunConfig(**kw)


def time_policy_action(policy, x: np.ndarray, n: int = 2000) -> float:
    """Mean seconds of one ``policy.action(x, t)`` call (after a warm-up)."""
    for _ in range(50):
        policy.action(x, 0.0)
    t0 = time.perf_counter()
    for _ in range(n):
        policy.action(x, 0.0)
    return (time.perf_counter() - t0) / n


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def evaluate_conditions(env: MujocoEnv, policy, targets: np.ndarray, costs: Sequence,
                        horizon: int) -> tuple[list[float], list[float]]:
    """Deterministic rollouts of the target-conditioned ``policy`` from every condition
    of ``env`` (in-process, :class:`~mbrl_ros.core.algorithms.sampler.EnvSampler`):
    (end-effector distances [m], trajectory costs)."""
    return evaluate_through(EnvSampler(env, env.u_min, env.u_max), policy, targets, costs,
                            horizon, lambda x, m: env.ee_distance(x, targets[m]))


def evaluate_through(sampler, policy, targets: np.ndarray, costs: Sequence, horizon: int,
                     distance) -> tuple[list[float], list[float]]:
    """One deterministic rollout of the target-conditioned ``policy`` per condition of
    ``sampler``, executed where the sampler executes its samples (the ROS nodes; in-process:
    :func:`evaluate_conditions`): (end-effector distances [m], trajectory costs).
    ``distance(x, m)``: end-effector distance [m] of the final state x of condition m."""
    dist, cost = [], []
    unused = np.random.default_rng(0)        # noisy=False draws nothing
    for m in range(len(targets)):
        b = sampler.sample(m, policy.with_task(targets[m]), 1, horizon, unused, noisy=False)
        dist.append(float(distance(b.X[0, -1], m)))
        cost.append(float(sample_costs(costs[m], b.X[:1], b.U[:1]).sum()))
    return dist, cost


def _num(v: float) -> float | None:
    """NaN (a failed C-step's KL) as null: metrics.json stays strict JSON."""
    return None if v is None or not np.isfinite(v) else float(v)


def _entry(rec: IterationRecord, gps: MDGPS, heldout: list[float] | None,
           heldout_cost: list[float] | None, local: list[float]) -> dict:
    t = rec.timings
    return {
        "iteration": rec.iteration, "samples": rec.samples,
        "interaction_seconds": rec.interaction_seconds,
        "local_cost": float(np.mean(rec.cost_lg)),
        "policy_cost": None if rec.cost_policy is None else float(np.mean(rec.cost_policy)),
        "policy_heldout_cost": None if heldout_cost is None else float(np.mean(heldout_cost)),
        "final_distance_m": local,
        "policy_final_distance_m": rec.policy_final_distance,
        "policy_heldout_distance_m": heldout,
        "kl_bound": rec.epsilon, "kl_model": [_num(k) for k in rec.kl],
        "kl_samples": None if rec.kl_samples is None else [_num(k) for k in rec.kl_samples],
        "kl_correction": rec.kl_correction,
        "step_mult": rec.step_mult, "eta": rec.eta, "traj_opt_status": rec.traj_opt_status,
        "policy_rmse": rec.policy_rmse, "discarded_samples": rec.discarded_samples,
        "discard_reasons": rec.discard_reasons, "warnings": rec.warnings,
        "timings": {"sampling": t.get("sampling", 0.0), "dynamics": t.get("dynamics", 0.0),
                    "policy_linearisation": t.get("policy_linearization", 0.0),
                    "c_step": t.get("c_step", 0.0), "s_step": t.get("s_step", 0.0),
                    "evaluation": t.get("evaluation", 0.0) + t.get("heldout", 0.0)},
    }


def run_gps(cfg: GPSRunConfig, stop_after: int | None = None,
            sampler_factory: Callable[[ReachTask], Any] | None = None) -> dict[str, Any]:
    """Run (or, with ``cfg.resume``, continue) the experiment; returns the metrics (also
    written to ``out/metrics.json`` when ``cfg.write``).

    Args:
        stop_after: end after this many iterations *of this call* (tests: a run that is
            interrupted and resumed); None: run to ``cfg.iterations``.
        sampler_factory: ``factory(task) -> Sampler`` drawing the training samples (and
            evaluating the global policy on the training conditions) instead of the
            in-process environment, e.g. the ROS node sampler
            (:class:`mbrl_ros.ros.gps_driver.NodeSampler`; ``mbrl-ros gps --through-nodes``;
            :class:`~mbrl_ros.ros.gps_remote.RemoteSampler` in the ``gps_trainer`` node).
            A sampler with ``with_conditions(env, targets)`` runs the held-out evaluation
            too; otherwise it stays in-process. The caller closes it.

    Raises:
        ValueError: unknown robot, bad sizes, a resume without a checkpoint or with another
            configuration.
    """
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    cfg = cfg.resolved()
    t_wall = time.perf_counter()
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    task = reach_task(cfg.robot, conditions=cfg.conditions, horizon=cfg.horizon,
                      control_period=cfg.control_period, seed=cfg.seed, starts=cfg.starts,
                      targets=cfg.targets, cost=cfg.cost, init_std=cfg.init_std,
                      init_damping=cfg.init_damping, init_kp=cfg.init_kp,
                      limit_margin=cfg.limit_margin, max_velocity=cfg.max_velocity)
    held = None
    if cfg.heldout_targets:
        held = reach_task(cfg.robot, conditions=len(cfg.heldout_targets), horizon=cfg.horizon,
                          control_period=cfg.control_period, seed=cfg.seed,
                          starts=cfg.heldout_starts, targets=cfg.heldout_targets,
                          cost=cfg.cost, limit_margin=None)
    gps_settings = from_mapping(GPSSettings, dict({"horizon": cfg.horizon,
                                                   "samples": cfg.samples, "seed": cfg.seed},
                                                  **cfg.gps))
    cfg_json = cfg.to_json()
    state: dict[str, Any]

    sampler = sampler_factory(task) if sampler_factory is not None else None

    def new_gps() -> MDGPS:
        return MDGPS(task.env, task.costs, gps_settings, traj_opt=cfg.traj_opt,
                     policy=cfg.policy, initial_controllers=task.initial_controllers,
                     distance=task.distances(), tasks=task.targets, sampler=sampler)

    def warn(msg: str) -> None:
        print(msg, file=sys.stderr)

    if cfg.resume:
        try:
            gps, state, _ = load_latest(ckpt, new_gps, warn=warn)
        except CheckpointError as e:
            raise ValueError(str(e)) from e
        skip = ("resume", "progress", "iterations")
        mine = {k: v for k, v in cfg_json.items() if k not in skip}
        theirs = {k: v for k, v in state["config"].items() if k not in skip}
        if json.loads(json.dumps(mine)) != json.loads(json.dumps(theirs)):
            diff = sorted(k for k in mine if mine.get(k) != theirs.get(k))
            raise ValueError(f"--resume: the checkpoint in {ckpt} is for another "
                             f"configuration (differs in {diff})")
        task.env._rng.bit_generator.state = state["env_rng"]
    else:
        gps = new_gps()
        state = {"config": cfg_json, "iterations": [], "best": None, "versions": []}
    done = gps.iteration_count
    todo = max(0, cfg.iterations - done)
    if stop_after is not None:
        todo = min(todo, stop_after)
    if cfg.write:
        ckpt.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.iterations, initial=done, desc=f"gps {Path(cfg.robot).stem}",
               disable=not cfg.progress, unit="it")
    try:
        for _ in range(todo):
            samples = None
            if cfg.resume:
                p = load_pending(ckpt, gps.iteration_count + 1, warn=warn)
                if p is not None:
                    samples, rng_state, env_rng_state = p
                    gps.rng.bit_generator.state = rng_state
                    task.env._rng.bit_generator.state = env_rng_state
            if samples is None:
                samples = gps.draw_samples()
                if cfg.write:
                    save_pending(ckpt, gps.iteration_count + 1, samples,
                                 gps.rng.bit_generator.state,
                                 task.env._rng.bit_generator.state)
            rec = gps.iteration(samples)
            X = gps.last_samples[0]
            local = [float(np.mean([task.ee_distance(X[m, i, -1], m)
                                    for i in range(X.shape[1])])) for m in range(gps.M)]
            t0 = time.perf_counter()
            hd = hc = None
            if held is not None and hasattr(sampler, "with_conditions"):
                # trained through the nodes: evaluated through them too
                hd, hc = evaluate_through(
                    sampler.with_conditions(held.env, held.targets), gps.policy,
                    held.targets, held.costs, cfg.horizon,
                    lambda x, m: held.env.ee_distance(x, held.targets[m]))
            elif held is not None:
                hd, hc = evaluate_conditions(held.env, gps.policy, held.targets, held.costs,
                                             cfg.horizon)
            rec.timings["heldout"] = round(time.perf_counter() - t0, 6)
            if state["iterations"]:              # kl_samples of the last C-step came in
                ks = gps.history[-2].kl_samples
                state["iterations"][-1]["kl_samples"] = None if ks is None else \
                    [_num(k) for k in ks]
            entry = _entry(rec, gps, hd, hc, local)
            score = float(np.mean(hd if hd else (rec.policy_final_distance or [np.inf])))
            entry["score_m"] = score
            if cfg.write:
                policy = gps.policy
                fit = FitReport(n_train=int(rec.samples * cfg.horizon), n_val=0,
                                fit_seconds=float(sum(rec.timings.values())),
                                metrics={"interaction_seconds": float(rec.interaction_seconds),
                                         "iteration": float(rec.iteration),
                                         "heldout_distance_mean_m": score},
                                notes=[f"MDGPS on {cfg.robot}, iteration {rec.iteration}: "
                                       f"target-conditioned policy (input: state + "
                                       f"{gps.n_task} target joint positions)"])
                info = publish_policy(policy, out, cfg.name, task.env.spec, cfg.policy, fit,
                                      {"targets": task.targets, "start_positions": task.env.q0})
                entry["artifact_version"] = info.version
                best = state["best"]
                if best is None or score < best["score_m"]:
                    state["best"] = {"iteration": rec.iteration, "version": info.version,
                                     "score_m": score, "uri": info.uri}
                else:
                    point_latest(Path(info.uri).parent, best["version"])
            state["iterations"].append(entry)
            if cfg.write:
                state["env_rng"] = task.env._rng.bit_generator.state
                save_checkpoint(ckpt, gps, state)
                drop_pending(ckpt)
                _write_report(cfg, out, state, task, gps, t_wall)
            post = {"local": f"{max(local) * 100:.2g}cm"}
            if hd:
                post["heldout"] = f"{max(hd) * 100:.2g}cm"
            bar.set_postfix(post)
            bar.update(1)
    finally:
        bar.close()
    return _write_report(cfg, out, state, task, gps, t_wall, final=True)


def _write_report(cfg: GPSRunConfig, out: Path, state: dict, task, gps: MDGPS, t_wall: float,
                  final: bool = False) -> dict[str, Any]:
    its = state["iterations"]
    report: dict[str, Any] = {
        "robot": cfg.robot, "iterations_planned": cfg.iterations,
        "conditions": cfg.conditions, "samples_per_condition": cfg.samples,
        "horizon": cfg.horizon, "dt": task.env.dt,
        "train": [{"start": s, "target": t} for s, t in zip(cfg.starts, cfg.targets)],
        "heldout": [{"start": s, "target": t}
                    for s, t in zip(cfg.heldout_starts, cfg.heldout_targets)],
        "do_nothing_distance_m": [task.ee_distance(np.r_[q, np.zeros(len(q))], m)
                                  for m, q in enumerate(task.env.q0)],
        "settings": {"gps": as_dict(gps.settings), "traj_opt": as_dict(cfg.traj_opt),
                     "policy": as_dict(cfg.policy), "cost": as_dict(cfg.cost)},
        "best": state["best"], "iterations": its,
    }
    if final and gps.trainer.net is not None:
        report["policy_action_seconds"] = time_policy_action(
            gps.policy_for(0), np.r_[task.env.q0[0], np.zeros(task.env.nx // 2)])
    report["wall_seconds"] = round(time.perf_counter() - t_wall, 3)
    if cfg.write and its:
        out.mkdir(parents=True, exist_ok=True)
        from mbrl_ros.core.plots import plot_gps_learning_curve   # matplotlib when needed
        report["plot"] = str(plot_gps_learning_curve(
            its, out / "gps.png", title=f"MDGPS on {Path(cfg.robot).stem}: {cfg.conditions} "
            f"conditions x {cfg.samples} samples, {len(cfg.heldout_targets)} held-out"))
        if state["best"]:
            report["latest"] = str(out / cfg.name / "latest")
        _atomic_text(json.dumps(report, indent=2), out / "metrics.json")
    return report
