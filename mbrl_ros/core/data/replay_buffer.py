"""Fixed-capacity FIFO replay buffer of transitions (numpy ring buffer)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..types import TransitionBatch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Fixed-capacity FIFO of transitions (numpy ring buffer), episodes kept by id.

    When full, adding overwrites the oldest transitions, so the buffer always holds the newest
    ``capacity`` transitions. Episode ids are stored as given (``add(..., renumber_episodes=True)``
    shifts a batch's ids past every id seen so far, e.g. when adding datasets whose ids all start at 0;
    ``next_episode_id`` gives a fresh id for online collection). ``all()`` returns the contents in
    insertion (chronological) order. The ``meta`` of added batches is not kept; ``ReplayBuffer.meta``
    (a JSON-able dict you may set) is attached to every batch the buffer returns and saved with it.
    """

    def __init__(
        self,
        capacity: int,
        nx: int,
        nu: int,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
    ) -> None:
        if int(capacity) <= 0:
            raise ValueError(f"ReplayBuffer: capacity must be positive, got {capacity}")
        if int(nx) < 0 or int(nu) < 0:
            raise ValueError(f"ReplayBuffer: nx and nu must be >= 0, got nx={nx}, nu={nu}")
        self.capacity = int(capacity)
        self.nx = int(nx)
        self.nu = int(nu)
        self.state_names = None if state_names is None else tuple(state_names)
        self.action_names = None if action_names is None else tuple(action_names)
        if self.state_names is not None and len(self.state_names) != self.nx:
            raise ValueError(f"ReplayBuffer: {len(self.state_names)} state_names for nx={self.nx}")
        if self.action_names is not None and len(self.action_names) != self.nu:
            raise ValueError(f"ReplayBuffer: {len(self.action_names)} action_names for nu={self.nu}")
        c = self.capacity
        self._states = np.zeros((c, self.nx))
        self._actions = np.zeros((c, self.nu))
        self._next_states = np.zeros((c, self.nx))
        self._dt = np.zeros(c)
        self._time = np.zeros(c)
        self._episode = np.zeros(c, dtype=np.int64)
        self._ptr = 0  # next write position
        self._size = 0
        self.n_added = 0  # total transitions ever added
        self._max_episode = -1
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size == self.capacity

    @property
    def next_episode_id(self) -> int:
        """An episode id larger than every id ever added."""
        return self._max_episode + 1

    def __repr__(self) -> str:
        return f"ReplayBuffer({self._size}/{self.capacity}, nx={self.nx}, nu={self.nu})"

    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        sn = self.state_names or tuple(f"x{i}" for i in range(self.nx))
        an = self.action_names or tuple(f"u{i}" for i in range(self.nu))
        return sn, an

    # ------------------------------------------------------------------ add
    def add(self, batch: TransitionBatch, renumber_episodes: bool = False) -> None:
        """Append a batch (oldest transitions are overwritten when full).

        ValueError if its nx/nu or names differ from the buffer's (the buffer adopts the batch's names
        if it was created without names).
        """
        if not isinstance(batch, TransitionBatch):
            raise ValueError(f"ReplayBuffer.add: expected a TransitionBatch, got {type(batch).__name__}")
        if batch.nx != self.nx or batch.nu != self.nu:
            raise ValueError(
                f"ReplayBuffer.add: batch has nx={batch.nx}, nu={batch.nu} but the buffer has nx={self.nx}, nu={self.nu}"
            )
        if self.state_names is not None and batch.state_names != self.state_names:
            raise ValueError(
                f"ReplayBuffer.add: batch state_names {batch.state_names} != buffer state_names {self.state_names}"
            )
        if self.action_names is not None and batch.action_names != self.action_names:
            raise ValueError(
                f"ReplayBuffer.add: batch action_names {batch.action_names} != buffer action_names {self.action_names}"
            )
        if self.state_names is None:
            self.state_names = batch.state_names
        if self.action_names is None:
            self.action_names = batch.action_names
        n = len(batch)
        if n == 0:
            return
        episode = batch.episode
        if renumber_episodes:
            _, inv = np.unique(episode, return_inverse=True)
            episode = inv.astype(np.int64).reshape(-1) + self.next_episode_id
        self._max_episode = max(self._max_episode, int(episode.max()))
        self.n_added += n

        start = 0
        if n > self.capacity:  # only the newest `capacity` rows survive
            start = n - self.capacity
        rows = np.arange(start, n)
        idx = (self._ptr + np.arange(rows.size)) % self.capacity
        self._states[idx] = batch.states[rows]
        self._actions[idx] = batch.actions[rows]
        self._next_states[idx] = batch.next_states[rows]
        self._dt[idx] = batch.dt[rows]
        self._time[idx] = batch.time[rows]
        self._episode[idx] = episode[rows]
        self._ptr = int((self._ptr + rows.size) % self.capacity)
        self._size = min(self._size + rows.size, self.capacity)

    # ------------------------------------------------------------------ read
    def _chronological(self) -> np.ndarray:
        if self._size < self.capacity:
            return np.arange(self._size)
        return (self._ptr + np.arange(self.capacity)) % self.capacity

    def _batch(self, idx: np.ndarray, extra_meta: dict | None = None) -> TransitionBatch:
        sn, an = self._names()
        meta = dict(self.meta)
        if extra_meta:
            meta.update(extra_meta)
        return TransitionBatch(
            states=self._states[idx], actions=self._actions[idx], next_states=self._next_states[idx],
            dt=self._dt[idx], time=self._time[idx], episode=self._episode[idx],
            state_names=sn, action_names=an, meta=meta,
        )

    def all(self) -> TransitionBatch:
        """Every stored transition, oldest first (copies)."""
        return self._batch(self._chronological())

    def sample(self, n: int, rng: np.random.Generator, replace: bool = True) -> TransitionBatch:
        """n transitions drawn uniformly (with replacement by default); reproducible for a seeded rng."""
        if self._size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        if n < 0:
            raise ValueError(f"ReplayBuffer.sample: n must be >= 0, got {n}")
        if not replace and n > self._size:
            raise ValueError(f"ReplayBuffer.sample: n={n} > {self._size} stored transitions without replacement")
        pos = rng.choice(self._size, size=n, replace=replace) if not replace else rng.integers(0, self._size, size=n)
        return self._batch(self._chronological()[pos])

    def episode_ids(self) -> np.ndarray:
        """Sorted ids of the episodes (partly) present."""
        return np.unique(self._episode[: self._size])

    def episode(self, episode_id: int) -> TransitionBatch:
        """The stored transitions of one episode, oldest first (may be empty)."""
        chron = self._chronological()
        return self._batch(chron[self._episode[chron] == int(episode_id)])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomic .npz via TransitionBatch.save (contents in chronological order + capacity)."""
        self._batch(
            self._chronological(),
            {"replay_buffer": {"capacity": self.capacity, "n_added": self.n_added, "next_episode_id": self.next_episode_id}},
        ).save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, capacity: int | None = None) -> ReplayBuffer:
        """Load a buffer saved by ``save`` (or any TransitionBatch file; capacity = its length)."""
        batch = TransitionBatch.load(path)
        info = batch.meta.get("replay_buffer", {}) if isinstance(batch.meta.get("replay_buffer"), dict) else {}
        cap = int(capacity or info.get("capacity") or max(len(batch), 1))
        buf = cls(cap, batch.nx, batch.nu, batch.state_names, batch.action_names)
        buf.meta = {k: v for k, v in batch.meta.items() if k != "replay_buffer"}
        buf.add(batch)
        buf.n_added = int(info.get("n_added", len(batch)))
        buf._max_episode = max(buf._max_episode, int(info.get("next_episode_id", 0)) - 1)
        return buf
