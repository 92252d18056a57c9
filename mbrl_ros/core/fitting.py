"""Fit a dynamics model on a dataset, validate it, and decide whether to publish it.

One implementation used by the model-fitting node, ``mbrl-ros fit`` and the benchmarks:

1. clean: rows with NaN/inf are dropped and counted (the dataset converter drops most), a
   transition identical to the one before it counts once (:func:`drop_repeats`: a robot
   at rest before its first command; not for time-varying models);
   data without excitation (every action, or every state, constant: an arm at rest) is
   refused, since no model can be identified from it (:func:`check_excitation`);
2. hold out the last ``val_fraction`` of the transitions, as whole episodes where they
   allow it, so the validation rollouts are on trajectories the model never saw; a single
   episode, or episodes so unequal that the last whole ones would hold far more than
   that share, are split in time instead (:func:`split_episodes`);
3. fit on the training part, then validate: one-step and ``horizon``-step open-loop RMSE;
   a model with a NaN/inf weight, a non-finite one-step prediction (from the validation
   states and the robot's home state) or, for a robot whose MJCF loads, other joints or
   command joints than the robot's is refused (:func:`check_fitted`);
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
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, ModelError, ModelSpec,
                                       check_finite_arrays, check_one_step)
from mbrl_ros.core.models.evaluate import validation_metrics
from mbrl_ros.core.settings import SettingsError, from_mapping, setting
from mbrl_ros.core.types import TransitionBatch


class FitCancelled(ModelError):
    """The caller cancelled a fit (``fit_model``'s ``should_stop`` answered True): a node
    shutting down does not wait for a whole training run, nor publish its result."""


@dataclass(frozen=True)
class FitSettings:
    model: str = setting("linear", "model family", choices=registry.names("model"))
    val_fraction: float = setting(0.2, "fraction of episodes held out for validation",
                                  low=0.0, high=0.9)
    horizon: int = setting(20, "open-loop validation rollout length", unit="steps", low=1,
                           high=10000)
    reject_factor: float = setting(2.0, "refuse a new model whose rollout error exceeds this "
                                   "times the last good model's", low=1.0, high=1e6)
    seed: int = setting(0, "random seed of the split and the model's fit", low=0)
    min_excitation: float = setting(
        1e-6, "refuse data in which every action, or every state, varies less than this "
        "(standard deviation, in the data's units: N·m or N; rad, m, rad/s, m/s): an arm at "
        "rest identifies no model", low=0.0, high=1e6)
    continuous_joints: tuple[str, ...] = setting(
        (), "joints whose position is a wrapping angle (URDF 'continuous'; learned models "
        "see its sine and cosine); empty: the unlimited hinge joints of the robot's MJCF, "
        "if the robot is a known model or MJCF file")


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


def drop_repeats(data: TransitionBatch) -> tuple[TransitionBatch, int]:
    """Drop every transition identical to the one before it (state, action, next state and
    episode equal bit for bit), keeping the first of each run.

    Such runs are a robot at rest under a constant effort: a simulated arm before its
    controller's first command, or a held robot. One copy tells all they tell; thousands
    (a live fitter on a busy machine gets several thousand before the first command)
    fill a training split -- the time split of a single live episode can leave nothing
    else in it --, shrink the normalisers' spread, fill the minibatches and turn held-out
    blocks into blocks at rest that any model predicts exactly. The kept copy still joins
    its neighbours (its next state is the next kept state), so contiguous runs stay
    contiguous for rollouts.

    Returns:
        (the batch without the repeats, the number dropped).
    """
    n = len(data)
    if n < 2:
        return data, 0
    same = ((data.states[1:] == data.states[:-1]).all(axis=1)
            & (data.actions[1:] == data.actions[:-1]).all(axis=1)
            & (data.next_states[1:] == data.next_states[:-1]).all(axis=1)
            & (data.episode[1:] == data.episode[:-1]))
    n_rep = int(same.sum())
    if not n_rep:
        return data, 0
    return data.subset(np.concatenate([[True], ~same])), n_rep


def data_ranges(batch: TransitionBatch) -> dict[str, list[float]]:
    """Each state and action name -> [min, max] over the batch (empty for no data)."""
    if not len(batch):
        return {}
    columns = zip(tuple(batch.state_names) + tuple(batch.action_names),
                  np.concatenate([batch.states, batch.actions], axis=1).T)
    return {name: [float(c.min()), float(c.max())] for name, c in columns}


def check_excitation(batch: TransitionBatch, min_std: float) -> list[str]:
    """Refuse data that cannot identify a dynamics model.

    Args:
        batch: the transitions (finite).
        min_std: a column whose standard deviation is not above this is constant (units
            of the column: N·m or N for actions; rad, m, rad/s, m/s for states).

    Returns:
        Notes naming single constant action columns (e.g. an unactuated joint's zero
        effort, legitimate but unidentified), for the fit report.

    Raises:
        ModelError: every action column, or every state column, is constant (an arm at
            rest; commands that never change): the effect of an action or the motion of
            the state cannot be learned.
    """
    if not len(batch):
        return []
    u_std = batch.actions.std(axis=0)
    x_std = np.concatenate([batch.states, batch.next_states]).std(axis=0)
    if np.all(u_std <= min_std):
        raise ModelError(f"data without excitation: no action varies (std "
                         f"{np.round(u_std, 9).tolist()} of {list(batch.action_names)} <= "
                         f"min_excitation {min_std:g}) in {len(batch)} transitions; the "
                         "effect of the efforts cannot be learned (an arm at rest?)")
    if np.all(x_std <= min_std):
        raise ModelError(f"data without excitation: no state varies (std <= min_excitation "
                         f"{min_std:g} for all of {list(batch.state_names)}) in "
                         f"{len(batch)} transitions: the robot did not move")
    constant = [n for n, v in zip(batch.action_names, u_std) if v <= min_std]
    return ([f"action(s) {constant} never vary in the data: their effect is not learned"]
            if constant else [])


def _robot(robot: str):
    """The :class:`RobotDescription` of ``robot`` (a shipped model name or MJCF path), or
    None when it is only a label this machine cannot load."""
    if not robot:
        return None
    from mbrl_ros.core.robot import RobotDescription
    try:
        return RobotDescription.load(robot)
    except (ValueError, TypeError, OSError):
        return None


def check_fitted(model: DynamicsModel, states: np.ndarray, robot: str = "") -> None:
    """Refuse a fitted model that a controller could not use.

    Args:
        model: the fitted model.
        states: (N, nx) states [rad, m, rad/s, m/s] its one-step prediction (zero effort)
            must be finite from (the first and the last are tried).
        robot: shipped model name or MJCF path; when it loads, the model must be for its
            joints and command joints (:meth:`ModelSpec.check_robot`) and predict a finite
            step from its home state. A label that does not load is not checked.

    Raises:
        ModelError: NaN/inf weights, a non-finite one-step prediction, other joints.
    """
    where = f"fitted {model.kind} model"
    check_finite_arrays(model.state_arrays(), where)
    states = np.asarray(states, dtype=np.float64).reshape(-1, model.spec.nx)
    for x in states[[0, -1]] if len(states) else ():
        check_one_step(model, x, where)
    desc = _robot(robot)
    if desc is not None:
        try:
            model.spec.check_robot(desc.joint_names, desc.command_names)
        except ModelError as e:
            raise ModelError(f"{where} is not a model of robot {robot!r}: {e}") from e
        check_one_step(model, desc.home_state, f"{where} (from the home state of {robot!r})")


def split_episodes(batch: TransitionBatch, val_fraction: float,
                   rng: np.random.Generator | None = None, *, keep_whole: bool = False
                   ) -> tuple[TransitionBatch, TransitionBatch]:
    """Hold out the last ``val_fraction`` of the transitions for validation, as whole
    episodes (the last ones in time) where the episodes allow it.

    Whole episodes are added from the last one back until they hold ``val_fraction`` of
    the transitions. Episodes can be very unequal -- a live stream is cut into episodes at
    every gap in its stamps, so a robot at rest before its first command (one transition
    once repeats count once) can be an episode of its own beside one with all the motion
    -- so when the last whole episodes would hold more than twice that share and more
    than half of the data, the split is made in time instead: the last ``val_fraction`` of the
    transitions, cutting the episode that straddles the point. With a single episode the
    split is in time too. ``keep_whole`` (time-varying models, which index the steps of
    each episode) never cuts an episode: at least one is held out if there are two. With
    ``val_fraction == 0`` the validation batch is empty.
    """
    if val_fraction <= 0 or len(batch) == 0:
        return batch, batch.subset(np.zeros(len(batch), bool))
    n = len(batch)
    eps, counts = np.unique(batch.episode, return_counts=True)
    target = val_fraction * n
    if eps.size >= 2:
        n_val_eps, held = 0, 0
        while held < target and n_val_eps < eps.size - 1:
            n_val_eps += 1
            held += int(counts[-n_val_eps])
        if keep_whole or held <= max(2.0 * target, 0.5 * n):
            return (batch.subset(~np.isin(batch.episode, eps[-n_val_eps:])),
                    batch.subset(np.isin(batch.episode, eps[-n_val_eps:])))
    n_val = max(1, int(round(target)))
    # the last n_val transitions in time (rows of one episode are in time order; the
    # episodes are numbered in time order)
    order = np.lexsort((np.arange(n), batch.episode))
    mask = np.zeros(n, bool)
    mask[order[-n_val:]] = True
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


def warm_up(kind: str, model_settings: dict[str, Any] | None, nx: int, nu: int,
            n: int = 64, seed: int = 0) -> float:
    """Fit, predict with and linearise a throwaway model of family ``kind`` on ``n``
    transitions of a synthetic stable linear system (``nx`` states, ``nu`` actions), and
    return the seconds it took.

    The first fit of a torch model in a process pays for one-time initialisation (kernel
    compilation, lazy imports): arm2's GP on 460 transitions took 2.9 s the first time
    and 0.5 s the second. A live fitter calls this at start-up, while the robot explores,
    so its first real model comes that much sooner. Failures are the caller's to ignore.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, nx))
    u = rng.normal(size=(n, nu))
    a = 0.9 * np.eye(nx)
    b = 0.1 * rng.normal(size=(nx, nu))
    y = x @ a.T + u @ b.T + 1e-3 * rng.normal(size=(n, nx))
    n_joints = max(1, nx // 2)
    names = tuple(f"j{i}/position" for i in range(n_joints)) + \
        tuple(f"j{i}/velocity" for i in range(nx - n_joints))
    # two episodes of equal length: a time-varying family (tvlg) needs them
    batch = TransitionBatch(x, u, y, np.full(n, 0.01), np.arange(n) * 0.01,
                            (np.arange(n) >= n // 2).astype(np.int64), names,
                            tuple(f"j{i}" for i in range(nu)))
    t0 = time.perf_counter()
    model = build_model(kind, model_settings)
    model.fit(batch, rng=rng)
    if not getattr(model, "time_varying", False):     # tvlg: numpy only, nothing to warm
        model.predict(x[:4], u[:4])
        model.linearize(x[:3], u[:3])
    return time.perf_counter() - t0


def fit_model(batch: TransitionBatch, settings: FitSettings = FitSettings(),
              model_settings: dict[str, Any] | None = None, *, robot: str = "",
              expect: ModelSpec | None = None,
              progress: Callable[[float], None] | None = None,
              previous: DynamicsModel | None = None,
              should_stop: Callable[[], bool] | None = None) -> FitResult:
    """Clean, split, fit and validate. Raises ModelError with the reason on failure
    (too few samples, data without excitation, dimensions not matching ``expect``,
    non-finite weights or predictions, a model of other joints than ``robot``'s).

    ``previous``: the last model of the same family (a live refit); a family with a
    ``warm_start_from`` method may start training from it (the ensemble's
    ``warm_start`` setting).

    ``should_stop``: asked whenever the model reports progress (every epoch of the
    ensemble, every optimiser step of the GP) and once after the fit; True raises
    :class:`FitCancelled` there (a family that reports no progress runs to its end)."""
    batch, n_bad = drop_nonfinite(batch)
    excitation_notes = check_excitation(batch, settings.min_excitation)
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
    # a time-varying model indexes the steps of each episode: nothing may be removed
    batch, n_repeats = (batch, 0) if model.time_varying else drop_repeats(batch)
    rng = np.random.default_rng(settings.seed)
    train, val = split_episodes(batch, settings.val_fraction, rng,
                                keep_whole=model.time_varying)
    if len(train) < model.min_transitions:
        raise ModelError(f"{settings.model} needs at least {model.min_transitions} training "
                         f"transitions, got {len(train)} ({len(batch)} in all, {n_bad} "
                         f"dropped as NaN/inf, {n_repeats} repeats of the one before "
                         "counted once)")
    warm = previous is not None and hasattr(model, "warm_start_from") and \
        model.warm_start_from(previous)
    if should_stop is not None:
        def progress(fraction: float, _report=progress) -> None:
            if should_stop():
                raise FitCancelled(f"{settings.model} fit cancelled at {fraction:.0%}")
            if _report is not None:
                _report(fraction)
    t0 = time.perf_counter()
    report = model.fit(train, rng=rng, progress=progress)
    fit_seconds = time.perf_counter() - t0
    if should_stop is not None and should_stop():
        raise FitCancelled(f"{settings.model} fit cancelled after {fit_seconds:.1f} s")
    if robot and model.spec is not None:       # fit() takes the spec from the data
        model.spec = dataclasses.replace(model.spec, robot=robot)
    metrics = dict(report.metrics)
    validation = val if len(val) else train
    metrics.update(validation_metrics(model, validation, settings.horizon))
    if not len(val):
        report.notes.append("no held-out episodes: validation metrics are on training data")
    if not math.isfinite(metrics["one_step_rmse"]):
        raise ModelError(f"{settings.model} fit produced non-finite predictions")
    check_fitted(model, validation.states, robot)
    report = FitReport(n_train=len(train), n_val=len(val), fit_seconds=fit_seconds,
                       metrics=metrics, notes=list(report.notes) + excitation_notes,
                       ranges=data_ranges(batch))
    if n_bad:
        report.notes.append(f"{n_bad} transitions with NaN/inf dropped")
    if warm:
        report.notes.append("warm-started from the previous model's weights")
    if n_repeats:
        report.notes.append(f"{n_repeats} transitions identical to the one before them (a "
                            "robot at rest under a constant effort) counted once")
    return FitResult(model, report, n_bad, validation=validation,
                     extra={"repeats_dropped": n_repeats})


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
        desc = _robot(robot)
        if desc is None:
            return ()
        names = desc.continuous_joints
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
