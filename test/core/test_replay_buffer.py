"""ReplayBuffer: FIFO wrap-around, reproducible sampling, validation, persistence."""

import os

import numpy as np
import pytest

from mbrl_ros.core.data import ReplayBuffer
from mbrl_ros.core.types import TransitionBatch

SN = ("a/position", "a/velocity")
AN = ("a",)


def batch(start, n, episode=0):
    """Transitions numbered start..start+n-1: every field encodes the number (easy to check order)."""
    k = np.arange(start, start + n, dtype=float)
    return TransitionBatch(
        states=np.stack([k, -k], 1), actions=k[:, None] * 10, next_states=np.stack([k + 1, -k - 1], 1),
        dt=np.full(n, 0.01), time=k, episode=np.full(n, episode, dtype=np.int64),
        state_names=SN, action_names=AN, meta={"src": "test"},
    )


def test_wraparound_keeps_newest():
    rb = ReplayBuffer(10, 2, 1)
    for i in range(0, 25, 5):  # 25 transitions in 5 adds, capacity 10
        rb.add(batch(i, 5, episode=i // 5))
        assert len(rb) == min(i + 5, 10)
    allb = rb.all()
    np.testing.assert_array_equal(allb.time, np.arange(15, 25))  # newest 10, chronological
    np.testing.assert_array_equal(allb.actions[:, 0], np.arange(15, 25) * 10)
    np.testing.assert_array_equal(allb.episode, [3] * 5 + [4] * 5)
    assert allb.state_names == SN and rb.n_added == 25


def test_batch_larger_than_capacity():
    rb = ReplayBuffer(4, 2, 1)
    rb.add(batch(0, 3))
    rb.add(batch(3, 9))
    np.testing.assert_array_equal(rb.all().time, [8, 9, 10, 11])
    rb.add(batch(12, 1))
    np.testing.assert_array_equal(rb.all().time, [9, 10, 11, 12])


def test_sampling_reproducible():
    rb = ReplayBuffer(100, 2, 1)
    rb.add(batch(0, 60))
    s1 = rb.sample(32, np.random.default_rng(7))
    s2 = rb.sample(32, np.random.default_rng(7))
    s3 = rb.sample(32, np.random.default_rng(8))
    np.testing.assert_array_equal(s1.time, s2.time)
    assert not np.array_equal(s1.time, s3.time)
    assert len(s1) == 32 and set(s1.time) <= set(range(60))
    np.testing.assert_array_equal(s1.actions[:, 0], s1.time * 10)  # rows stay consistent
    u = rb.sample(60, np.random.default_rng(0), replace=False)
    assert sorted(u.time) == list(range(60))


def test_sample_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(5, 2, 1).sample(3, np.random.default_rng(0))


def test_shape_and_name_mismatch():
    rb = ReplayBuffer(10, 3, 1)
    with pytest.raises(ValueError, match=r"batch has nx=2, nu=1 but the buffer has nx=3, nu=1"):
        rb.add(batch(0, 2))
    rb2 = ReplayBuffer(10, 2, 1, state_names=("q", "qd"))
    with pytest.raises(ValueError, match=r"state_names \('a/position', 'a/velocity'\) != buffer state_names \('q', 'qd'\)"):
        rb2.add(batch(0, 2))
    with pytest.raises(ValueError, match="state_names for nx"):
        ReplayBuffer(10, 2, 1, state_names=("q",))


def test_episodes_by_id_and_renumber():
    rb = ReplayBuffer(50, 2, 1)
    rb.add(batch(0, 4, episode=0))
    rb.add(batch(4, 3, episode=1))
    rb.add(batch(7, 2, episode=0), renumber_episodes=True)  # a new dataset whose ids restart at 0
    assert rb.episode_ids().tolist() == [0, 1, 2]
    np.testing.assert_array_equal(rb.episode(2).time, [7, 8])
    np.testing.assert_array_equal(rb.episode(1).time, [4, 5, 6])
    assert rb.next_episode_id == 3


def test_save_load(tmp_path):
    rb = ReplayBuffer(8, 2, 1)
    rb.add(batch(0, 11))
    p = tmp_path / "rb.npz"
    rb.save(p)
    assert os.listdir(tmp_path) == ["rb.npz"]
    rb2 = ReplayBuffer.load(p)
    assert rb2.capacity == 8 and len(rb2) == 8 and rb2.n_added == 11
    np.testing.assert_array_equal(rb2.all().time, rb.all().time)
    assert rb2.all().meta == rb.all().meta == {}
    rb2.add(batch(11, 1))
    np.testing.assert_array_equal(rb2.all().time, np.arange(4, 12))
