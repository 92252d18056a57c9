"""TransitionBatch: validation, selection, concatenation, atomic save/load."""

import json
import os

import numpy as np
import pytest

from mbrl_ros.core.types import TransitionBatch

SN = ("a/position", "b/position", "a/velocity", "b/velocity")
AN = ("a", "b")


def make_batch(n=6, episode=None, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 1, 4))
    return TransitionBatch(
        states=x[:-1], actions=rng.normal(size=(n, 2)), next_states=x[1:],
        dt=np.full(n, 0.01), time=1.7e9 + 0.01 * np.arange(n),
        episode=np.zeros(n, dtype=np.int64) if episode is None else np.asarray(episode),
        state_names=SN, action_names=AN, meta=meta if meta is not None else {"source_bags": ["x"], "robot": "arm"},
    )


def test_basic_properties():
    b = make_batch(6)
    assert len(b) == 6 and b.nx == 4 and b.nu == 2
    assert b.states.dtype == np.float64 and b.episode.dtype == np.int64
    assert isinstance(b.state_names, tuple) and b.action_names == AN


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(states=np.zeros((6,))), "states must be 2-D"),
        (dict(actions=np.zeros((5, 2))), "actions must be"),
        (dict(next_states=np.zeros((6, 3))), "next_states shape"),
        (dict(dt=np.zeros(5)), "dt must have shape"),
        (dict(time=np.zeros((6, 1))), "time must have shape"),
        (dict(episode=np.zeros(7, dtype=int)), "episode must have shape"),
        (dict(episode=np.full(6, 0.5)), "episode must hold integer"),
        (dict(state_names=SN[:3]), "state_names for nx=4"),
        (dict(action_names=("a",)), "action_names for nu=2"),
        (dict(action_names="ab"), "sequence of strings"),
        (dict(meta={"bad": object()}), "JSON"),
    ],
)
def test_shape_validation(change, match):
    b = make_batch(6)
    with pytest.raises(ValueError, match=match):
        b.replace(**change)


def test_save_load_roundtrip_atomic(tmp_path):
    b = make_batch(7, episode=[0, 0, 0, 1, 1, 2, 2], meta={"source_bags": ["/x/bag_0000"], "nested": {"k": [1, 2.5]}})
    path = tmp_path / "sub" / "data.npz"
    b.save(path)
    assert sorted(os.listdir(path.parent)) == ["data.npz"]  # no temp file left behind
    c = TransitionBatch.load(path)
    for name in ("states", "actions", "next_states", "dt", "time", "episode"):
        np.testing.assert_array_equal(getattr(c, name), getattr(b, name))
    assert c.episode.dtype == np.int64
    assert c.state_names == SN and c.action_names == AN
    assert c.meta == b.meta
    # overwrite in place: still one file, new content
    make_batch(3).save(path)
    assert sorted(os.listdir(path.parent)) == ["data.npz"]
    assert len(TransitionBatch.load(path)) == 3
    # meta is stored as a JSON string (no pickle needed)
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["robot"] == "arm"


def test_save_failure_leaves_no_temp(tmp_path, monkeypatch):
    b = make_batch(3)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        b.save(tmp_path / "d.npz")
    assert os.listdir(tmp_path) == []


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a TransitionBatch"):
        TransitionBatch.load(p)


def test_empty_batch_roundtrip(tmp_path):
    e = TransitionBatch.empty(SN, AN)
    assert len(e) == 0 and e.nx == 4 and e.nu == 2
    e.save(tmp_path / "e.npz")
    assert len(TransitionBatch.load(tmp_path / "e.npz")) == 0


def test_concat_and_name_mismatch():
    a, b = make_batch(4, seed=1), make_batch(3, episode=[0, 1, 1], seed=2)
    c = TransitionBatch.concat([a, b])
    assert len(c) == 7
    np.testing.assert_array_equal(c.states[4:], b.states)
    np.testing.assert_array_equal(c.episode, [0, 0, 0, 0, 1, 2, 2])  # renumbered: no id shared
    assert TransitionBatch.concat([a, b], renumber_episodes=False).episode.tolist() == [0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="state_names of batch 1"):
        TransitionBatch.concat([a, b.replace(state_names=("q1", "q2", "v1", "v2"))])
    with pytest.raises(ValueError, match="action_names of batch 1"):
        TransitionBatch.concat([a, b.replace(action_names=("b", "a"))])
    with pytest.raises(ValueError, match="no batches"):
        TransitionBatch.concat([])


def test_concat_meta_parts():
    a, b = make_batch(2, meta={"bag": "1"}), make_batch(2, meta={"bag": "2"})
    c = TransitionBatch.concat([a, b])
    assert c.meta["parts"] == [{"bag": "1"}, {"bag": "2"}]


def test_episodes_and_subset():
    b = make_batch(6, episode=[2, 2, 5, 5, 5, 7])
    eps = b.episodes()
    assert [len(e) for e in eps] == [2, 3, 1]
    assert [int(e.episode[0]) for e in eps] == [2, 5, 7]
    np.testing.assert_array_equal(eps[1].states, b.states[2:5])
    s = b.subset(b.episode == 5)
    assert len(s) == 3 and s.meta == b.meta
    np.testing.assert_array_equal(b.subset([5, 0]).time, b.time[[5, 0]])
    assert len(b.subset(slice(1, 3))) == 2
    with pytest.raises(ValueError, match="mask shape"):
        b.subset(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="out of range"):
        b.subset([6])
