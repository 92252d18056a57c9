"""Fit a dynamics model on a dataset, validate it, and decide whether to publish it.

One implementation used by the model-fitting node, ``mbrl-ros fit`` and the benchmarks:

1. clean: rows with NaN/inf are dropped and counted (the dataset converter drops most);
2. split by whole episodes (the last ``val_fraction`` of episodes, at least one) so the
   validation rollouts are on trajectories the model never saw; a single-episode dataset
   is split in time instead;
3. fit on the training part, then validate: one-step and ``horizon``-step open-loop RMSE;
4. :func:`accept` compares with the last good model: a new model whose rollout error is
   worse than ``reject_factor`` x the previous one is refused (the previous one is kept).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import DynamicsModel, FitReport, ModelError, ModelSpec
from mbrl_ros.core.models.evaluate import validation_metrics
from mbrl_ros.core.settings import SettingsError, from_mapping, setting
from mbrl_ros.core.types import TransitionBatch


@dataclass(frozen=True)
class FitSettings:
    model: str = setting("linear", "model family", choices=("linear", "tvlg", "gp", "ensemble",
                                                             "mujoco"))
    val_fraction: float = setting(0.2, "fraction of episodes held out for validation",
                                  low=0.0, high=0.9)
    horizon: int = setting(20, "open-loop validation rollout length", unit="steps", low=1,
                           high=10000)
    reject_factor: float = setting(2.0, "refuse a new model whose rollout error exceeds this "
                                   "times the last good model's", low=1.0, high=1e6)
    seed: int = setting(0, "random seed of the split and the model's fit", low=0)
    continuous_joints: tuple[str, ...] = setting(
        (), "joints whose position is an angle that wraps (URDF 'continuous'; learned models "
        "see its sine and cosine); empty: the unlimited hinge joints of the robot's MJCF, "
        "when the robot is a known model or MJCF file")


@dataclass
class FitResult:
    """A fitted model with its report (``report.metrics`` holds the validation metrics)."""
    model: DynamicsModel
    report: FitReport
    n_dropped_nonfinite: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # the transitions the validation metrics were computed on (held-out episodes, or the
    # training set when none were held out): to score another model on the same data
    validation: TransitionBatch | None = None


def drop_nonfinite(batch: TransitionBatch) -> tuple[TransitionBatch, int]:
    """Remove transitions with NaN/inf anywhere; returns (clean batch, number removed)."""
    ok = (np.isfinite(batch.states).all(1) & np.isfinite(batch.actions).all(1)
          & np.isfinite(batch.next_states).all(1) & np.isfinite(batch.dt))
    n_bad = int((~ok).sum())
    return (batch.subset(ok) if n_bad else batch), n_bad


def split_episodes(batch: TransitionBatch, val_fraction: float,
                   rng: np.random.Generator | None = None
                   ) -> tuple[TransitionBatch, TransitionBatch]:
    """Hold out whole episodes (the last ones in time) for validation.

    With a single episode the last ``val_fraction`` of its transitions are held out. With
    ``val_fraction == 0`` the validation batch is empty.
    """
    if val_fraction <= 0 or len(batch) == 0:
        return batch, batch.subset(np.zeros(len(batch), bool))
    eps = np.unique(batch.episode)
    if eps.size >= 2:
        n_val = max(1, int(round(val_fraction * eps.size)))
        n_val = min(n_val, eps.size - 1)
        val_eps = eps[-n_val:]
        mask = np.isin(batch.episode, val_eps)
    else:
        n_val = max(1, int(round(val_fraction * len(batch))))
        mask = np.zeros(len(batch), bool)
        mask[-n_val:] = True
    return batch.subset(~mask), batch.subset(mask)


def build_model(kind: str, settings: dict[str, Any] | None = None,
                spec: ModelSpec | None = None) -> DynamicsModel:
    """A model of family ``kind`` with its hyper-parameters validated from ``settings``."""
    try:
        cls = registry.lookup("model", kind)
    except KeyError as e:
        raise ModelError(str(e)) from e
    try:
        s = from_mapping(cls.Settings, settings or {}, prefix=f"{kind}.")
    except SettingsError as e:
        raise ModelError(str(e)) from e
    return cls(s, spec)


def fit_model(batch: TransitionBatch, settings: FitSettings = FitSettings(),
              model_settings: dict[str, Any] | None = None, *, robot: str = "",
              expect: ModelSpec | None = None,
              progress: Callable[[float], None] | None = None) -> FitResult:
    """Clean, split, fit and validate. Raises ModelError with the reason on failure
    (too few samples, dimensions not matching ``expect``, non-finite fit)."""
    batch, n_bad = drop_nonfinite(batch)
    continuous = continuous_joints(batch, settings, robot)
    batch = batch.replace(meta={**batch.meta, "continuous_joints": list(continuous)})
    data_spec = ModelSpec.from_batch(batch, robot=robot) if len(batch) else None
    if expect is not None and data_spec is not None:
        if (data_spec.nx, data_spec.nu) != (expect.nx, expect.nu):
            raise ModelError(f"the data has state/action dimensions ({data_spec.nx}, "
                             f"{data_spec.nu}) but the configuration expects ({expect.nx}, "
                             f"{expect.nu}): x={list(data_spec.state_names)}, "
                             f"u={list(data_spec.action_names)} vs "
                             f"x={list(expect.state_names)}, u={list(expect.action_names)}")
        expect.check_compatible(data_spec)
    model = build_model(settings.model, model_settings)
    rng = np.random.default_rng(settings.seed)
    train, val = split_episodes(batch, settings.val_fraction, rng)
    if len(train) < model.min_transitions:
        raise ModelError(f"{settings.model} needs at least {model.min_transitions} training "
                         f"transitions, got {len(train)} ({len(batch)} in all, {n_bad} "
                         f"dropped as NaN/inf)")
    t0 = time.perf_counter()
    report = model.fit(train, rng=rng, progress=progress)
    fit_seconds = time.perf_counter() - t0
    if robot and model.spec is not None:       # fit() takes the spec from the data
        model.spec = dataclasses.replace(model.spec, robot=robot)
    metrics = dict(report.metrics)
    validation = val if len(val) else train
    metrics.update(validation_metrics(model, validation, settings.horizon))
    if not len(val):
        report.notes.append("no held-out episodes: validation metrics are on training data")
    if not math.isfinite(metrics["one_step_rmse"]):
        raise ModelError(f"{settings.model} fit produced non-finite predictions")
    report = FitReport(n_train=len(train), n_val=len(val), fit_seconds=fit_seconds,
                       metrics=metrics, notes=list(report.notes))
    if n_bad:
        report.notes.append(f"{n_bad} transitions with NaN/inf dropped")
    return FitResult(model, report, n_bad, validation=validation)


def rescore(previous: DynamicsModel, result: FitResult, horizon: int) -> FitReport:
    """``previous`` evaluated on the held-out data of a new fit ``result``, as a report
    :func:`accept` can compare with ``result.report`` (errors on different validation sets
    are not comparable: the new data may simply be harder)."""
    if result.validation is None:
        raise ModelError("the fit result has no validation data to rescore on")
    metrics = validation_metrics(previous, result.validation, horizon)
    return FitReport(n_train=0, n_val=len(result.validation), fit_seconds=0.0,
                     metrics=metrics, notes=["previous model on the new validation data"])


def continuous_joints(batch: TransitionBatch, settings: FitSettings, robot: str = ""
                      ) -> tuple[str, ...]:
    """The continuous joints of ``batch``: from ``settings.continuous_joints``, else the
    batch's metadata, else the unlimited hinges of ``robot``'s MJCF (none if it has none or
    ``robot`` is not a model this machine can load). ModelError for a name with no
    '<joint>/position' state."""
    names: tuple[str, ...] = tuple(settings.continuous_joints)
    if not names and "continuous_joints" in batch.meta:
        names = tuple(batch.meta["continuous_joints"])
    elif not names and robot:
        from mbrl_ros.sim.env import MujocoSim
        try:
            sim = MujocoSim(robot)
        except (ValueError, FileNotFoundError, OSError):
            return ()
        names = tuple(j for j, c in zip(sim.joint_names, sim.continuous) if c)
        names = tuple(j for j in names if f"{j}/position" in batch.state_names)
    missing = [j for j in names if f"{j}/position" not in batch.state_names]
    if missing:
        raise ModelError(f"continuous joint(s) {missing} have no '<joint>/position' state; "
                         f"states: {list(batch.state_names)}")
    return names


def accept(new: FitReport, previous: FitReport | None, reject_factor: float) -> tuple[bool, str]:
    """Whether a new model may replace the previous one, and why (for logs and replies)."""
    err = new.metrics.get("rollout_rmse", float("nan"))
    if not math.isfinite(err):
        return False, f"rollout error is {err}"
    if previous is None:
        return True, "first model"
    prev = previous.metrics.get("rollout_rmse", float("nan"))
    if math.isfinite(prev) and err > reject_factor * prev:
        return False, (f"rollout RMSE {err:.4g} is worse than {reject_factor:g} x the last good "
                       f"model's {prev:.4g} (on the same held-out data when the fitter could rescore it): "
                       "keeping the last good model")
    return True, f"rollout RMSE {err:.4g} (previous {prev:.4g})"
