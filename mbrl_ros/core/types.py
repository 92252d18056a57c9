"""Core data types shared by the ROS-free parts of mbrl_ros.

Nothing here imports ROS (rclpy or message packages); only numpy and the standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TransitionBatch"]

_FORMAT = "mbrl_ros.TransitionBatch/1"
_ARRAY_FIELDS = ("states", "actions", "next_states", "dt", "time", "episode")



def is_torch(a: Any) -> bool:
    """True for a torch tensor; checked by module name so callers need not import torch."""
    return type(a).__module__.startswith("torch")


def _as_names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"TransitionBatch: {what} must be a sequence of strings, got the string {value!r}")
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"TransitionBatch: {what} must be a sequence of strings, got {type(value).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"TransitionBatch: {what} must contain only strings, got {bad[:3]!r}")
    return names


@dataclass(frozen=True, eq=False)
class TransitionBatch:
    """N transitions (x_t, u_t, x_{t+1}), column-aligned numpy arrays.

    Fields:
        states:       (N, nx) float64, x_t.
        actions:      (N, nu) float64, u_t (the command applied, zero-order hold, over [t, t+dt)).
        next_states:  (N, nx) float64, x_{t+1}.
        dt:           (N,) float64 seconds between x_t and x_{t+1}, from the state header stamps
                      (robot / simulation time; may differ from wall clock in fast-forward sim).
        time:         (N,) float64 ABSOLUTE log time of x_t in seconds since the UNIX epoch
                      (the bag's receive time, ns / 1e9; float64 keeps ~0.4 us resolution), so batches
                      from different bags can be concatenated and ordered.
        episode:      (N,) int64 episode id of each transition.
        state_names:  nx names, e.g. ('shoulder/position', 'elbow/position', 'shoulder/velocity', ...):
                      positions of all joints, then velocities.
        action_names: nu names (the joint names of the command columns).
        meta:         JSON-able dict (source bags, robot, alignment settings, ...).

    Arrays are converted with ``np.asarray`` (not copied when they already have the right dtype);
    treat them as read-only. Shapes/dtypes are validated in ``__post_init__`` (ValueError).
    Equality is identity (numpy fields); compare arrays explicitly.
    """

    states: np.ndarray
    actions: np.ndarray
    next_states: np.ndarray
    dt: np.ndarray
    time: np.ndarray
    episode: np.ndarray
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("states", "actions", "next_states", "dt", "time"):
            try:
                arr = np.asarray(getattr(self, name), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"TransitionBatch: {name} is not convertible to float64: {exc}") from None
            set_(self, name, arr)
        episode = np.asarray(self.episode)
        if episode.dtype.kind == "b" or episode.dtype.kind not in "iuf":
            raise ValueError(f"TransitionBatch: episode must be integer, got dtype {episode.dtype}")
        if episode.dtype.kind == "f":
            if not np.all(np.isfinite(episode)) or not np.all(episode == np.round(episode)):
                raise ValueError("TransitionBatch: episode must hold integer values")
        set_(self, "episode", episode.astype(np.int64, copy=False))

        states, actions = self.states, self.actions
        if states.ndim != 2:
            raise ValueError(f"TransitionBatch: states must be 2-D (N, nx), got shape {states.shape}")
        n, nx = states.shape
        if actions.ndim != 2 or actions.shape[0] != n:
            raise ValueError(f"TransitionBatch: actions must be (N={n}, nu), got shape {actions.shape}")
        if self.next_states.shape != states.shape:
            raise ValueError(
                f"TransitionBatch: next_states shape {self.next_states.shape} != states shape {states.shape}"
            )
        for name in ("dt", "time", "episode"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"TransitionBatch: {name} must have shape (N,)=({n},), got {shape}")

        state_names = _as_names(self.state_names, "state_names")
        action_names = _as_names(self.action_names, "action_names")
        if len(state_names) != nx:
            raise ValueError(f"TransitionBatch: {len(state_names)} state_names for nx={nx} state columns")
        if len(action_names) != actions.shape[1]:
            raise ValueError(
                f"TransitionBatch: {len(action_names)} action_names for nu={actions.shape[1]} action columns"
            )
        set_(self, "state_names", state_names)
        set_(self, "action_names", action_names)

        meta = {} if self.meta is None else self.meta
        if not isinstance(meta, Mapping):
            raise ValueError(f"TransitionBatch: meta must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"TransitionBatch: meta must be JSON-serializable: {exc}") from None
        set_(self, "meta", dict(meta))

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def nx(self) -> int:
        return int(self.states.shape[1])

    @property
    def nu(self) -> int:
        return int(self.actions.shape[1])

    def __repr__(self) -> str:
        n_ep = len(np.unique(self.episode)) if len(self) else 0
        return f"TransitionBatch(N={len(self)}, nx={self.nx}, nu={self.nu}, episodes={n_ep})"

    def replace(self, **changes: Any) -> TransitionBatch:
        """A copy with some fields replaced (validated again)."""
        kw = {name: getattr(self, name) for name in (*_ARRAY_FIELDS, "state_names", "action_names", "meta")}
        kw.update(changes)
        return TransitionBatch(**kw)

    @classmethod
    def empty(cls, state_names: Sequence[str], action_names: Sequence[str], meta: dict | None = None) -> TransitionBatch:
        """A batch with zero transitions and the given columns."""
        nx, nu = len(tuple(state_names)), len(tuple(action_names))
        return cls(
            states=np.zeros((0, nx)), actions=np.zeros((0, nu)), next_states=np.zeros((0, nx)),
            dt=np.zeros(0), time=np.zeros(0), episode=np.zeros(0, dtype=np.int64),
            state_names=tuple(state_names), action_names=tuple(action_names), meta=meta or {},
        )

    # ------------------------------------------------------------------ selection
    def subset(self, mask_or_idx: Any) -> TransitionBatch:
        """Rows selected by a boolean mask of length N, an integer index array, or a slice."""
        if isinstance(mask_or_idx, slice):
            sel: Any = mask_or_idx
        else:
            sel = np.asarray(mask_or_idx)
            if sel.dtype == bool:
                if sel.shape != (len(self),):
                    raise ValueError(f"TransitionBatch.subset: mask shape {sel.shape} != ({len(self)},)")
            elif sel.dtype.kind in "iu" or sel.size == 0:
                sel = sel.astype(np.int64).reshape(-1)
                if sel.size and (sel.max() >= len(self) or sel.min() < -len(self)):
                    raise ValueError(f"TransitionBatch.subset: index out of range for N={len(self)}")
            else:
                raise ValueError(f"TransitionBatch.subset: expected a bool mask, int indices or slice, got {sel.dtype}")
        return self.replace(**{name: getattr(self, name)[sel] for name in _ARRAY_FIELDS})

    def episode_ids(self) -> np.ndarray:
        """Sorted unique episode ids."""
        return np.unique(self.episode)

    def episodes(self) -> list[TransitionBatch]:
        """One batch per episode id (sorted by id), rows in their original order."""
        return [self.subset(np.flatnonzero(self.episode == e)) for e in self.episode_ids()]

    # ------------------------------------------------------------------ combination
    @classmethod
    def concat(cls, batches: Sequence[TransitionBatch], renumber_episodes: bool = True) -> TransitionBatch:
        """Concatenate batches with identical state/action names (ValueError otherwise).

        renumber_episodes=True (default) offsets the episode ids of each batch so that episodes of
        different batches never share an id (ids stay in batch order). meta: the first batch's meta;
        if the metas differ, ``meta['parts']`` lists every batch's meta.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("TransitionBatch.concat: no batches given")
        first = batches[0]
        for i, b in enumerate(batches[1:], start=1):
            if not isinstance(b, TransitionBatch):
                raise ValueError(f"TransitionBatch.concat: item {i} is a {type(b).__name__}, not a TransitionBatch")
            if b.state_names != first.state_names:
                raise ValueError(
                    f"TransitionBatch.concat: state_names of batch {i} {b.state_names} "
                    f"differ from batch 0 {first.state_names}"
                )
            if b.action_names != first.action_names:
                raise ValueError(
                    f"TransitionBatch.concat: action_names of batch {i} {b.action_names} "
                    f"differ from batch 0 {first.action_names}"
                )
        episodes = []
        offset = 0
        for b in batches:
            if renumber_episodes and len(b):
                ids, inv = np.unique(b.episode, return_inverse=True)
                episodes.append(inv.astype(np.int64) + offset)
                offset += len(ids)
            else:
                episodes.append(b.episode)
        meta = dict(first.meta)
        if any(b.meta != first.meta for b in batches[1:]):
            meta["parts"] = [b.meta for b in batches]
        arrays = {name: np.concatenate([getattr(b, name) for b in batches]) for name in _ARRAY_FIELDS[:-1]}
        return cls(**arrays, episode=np.concatenate(episodes), state_names=first.state_names,
                   action_names=first.action_names, meta=meta)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz file at exactly ``path`` (no suffix added), atomically.

        The data goes to a temporary file in the same directory, which is fsynced and then
        ``os.replace``d onto ``path``; on any error the temporary file is removed. meta is stored as a
        JSON string, names as unicode arrays, so ``load`` never needs pickle.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    format=np.array(_FORMAT),
                    **{name: getattr(self, name) for name in _ARRAY_FIELDS},
                    state_names=np.array(self.state_names, dtype=np.str_).reshape(-1),
                    action_names=np.array(self.action_names, dtype=np.str_).reshape(-1),
                    meta=np.array(json.dumps(self.meta)),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> TransitionBatch:
        """Read a file written by ``save`` (ValueError if it is not one)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in (*_ARRAY_FIELDS, "state_names", "action_names", "meta") if k not in z.files]
                if missing:
                    raise ValueError(f"{path}: not a TransitionBatch file (missing {missing})")
                data = {k: z[k] for k in _ARRAY_FIELDS}
                state_names = tuple(str(s) for s in z["state_names"])
                action_names = tuple(str(s) for s in z["action_names"])
                meta = json.loads(str(z["meta"]))
        except (OSError, EOFError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ValueError(f"{path}: cannot read TransitionBatch: {exc}") from None
        return cls(**data, state_names=state_names, action_names=action_names, meta=meta)
