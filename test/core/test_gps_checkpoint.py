"""GPS checkpoints as plain data (no pickles): an MDGPS restored from one continues
exactly as the uninterrupted one does, and a damaged checkpoint is refused naming the file
(or the previous iteration's is used, saying so)."""
import json

import numpy as np
import pytest
import torch

from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
from mbrl_ros.core.algorithms.gps_checkpoint import (CheckpointError, checkpoints,
                                                     load_checkpoint, load_latest,
                                                     load_pending, save_checkpoint,
                                                     save_pending)
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.policies.neural import PolicySettings
from test_gps import LinearEnv

TARGETS = np.array([[0.8, -0.5], [-0.6, 0.7]])


def _make(env=None):
    env = env or LinearEnv([[0, 0, 0, 0], [0.2, 0, 0, 0]])
    costs = [QuadraticCost.diagonal([1, 1, 0.1, 0.1], [0.01, 0.01], [100, 100, 10, 10],
                                    x_target=np.r_[t, 0.0, 0.0]) for t in TARGETS]
    return MDGPS(env, costs, GPSSettings(horizon=8, samples=3, seed=0, init_std=3.0),
                 policy=PolicySettings(hidden=(8,), iterations=30), tasks=TARGETS)


def _record(r):
    return [r.cost_lg, r.kl, r.eta, r.step_mult, r.epsilon, r.policy_rmse,
            r.dynamics_rmse, r.predicted_improvement, r.actual_improvement,
            r.policy_final_distance, r.cost_policy]


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory):
    torch.set_num_threads(1)
    ckpt = tmp_path_factory.mktemp("ckpt")
    gps = _make()
    gps.iteration()
    save_checkpoint(ckpt, gps, {"note": "one"})
    gps.iteration()
    env_state = gps.env.rng.bit_generator.state
    save_checkpoint(ckpt, gps, {"note": "two"})
    return ckpt, gps, env_state


def test_a_restored_mdgps_continues_exactly_like_the_uninterrupted_one(two_iterations):
    ckpt, gps, env_state = two_iterations
    assert checkpoints(ckpt) == [1, 2]
    assert not list(ckpt.rglob("*.pkl"))
    env = LinearEnv([[0, 0, 0, 0], [0.2, 0, 0, 0]])
    env.rng.bit_generator.state = env_state
    resumed = _make(env)
    assert load_checkpoint(ckpt / "it0002", resumed) == {"note": "two"}
    assert resumed.iteration_count == 2 and len(resumed.history) == 2
    assert [_record(r) for r in resumed.history] == [_record(r) for r in gps.history]
    a, b = gps.iteration(), resumed.iteration()
    for x, y in zip(_record(a), _record(b)):
        np.testing.assert_allclose(np.asarray(y, dtype=float), np.asarray(x, dtype=float),
                                   rtol=0, atol=0)
    for ca, cb in zip(gps.controllers, resumed.controllers):
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_array_equal(ca.cov, cb.cov)
    x = np.r_[0.1, 0.2, 0.0, 0.0]
    np.testing.assert_array_equal(gps.policy_for(1).action(x, 0.0),
                                  resumed.policy_for(1).action(x, 0.0))


def test_the_files_hold_no_code(two_iterations):
    ckpt, _, _ = two_iterations
    d = ckpt / "it0002"
    assert sorted(p.name for p in d.iterdir()) == ["arrays.npz", "state.json", "torch.pt"]
    json.loads((d / "state.json").read_text())
    with np.load(d / "arrays.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    torch.load(d / "torch.pt", weights_only=True)


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate_npz", "garbage_json", "missing_torch",
                                    "pickle_in_npz"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_previous_one_used(
        two_iterations, tmp_path, damage):
    ckpt = _copy(two_iterations[0], tmp_path / "ckpt")
    d = ckpt / "it0002"
    if damage == "truncate_npz":
        data = (d / "arrays.npz").read_bytes()
        (d / "arrays.npz").write_bytes(data[:len(data) // 2])
        bad = "arrays.npz"
    elif damage == "garbage_json":
        (d / "state.json").write_text('{"format": 1, "iteration": ')
        bad = "state.json"
    elif damage == "missing_torch":
        (d / "torch.pt").unlink()
        bad = "torch.pt"
    else:   # an object array smuggled in (with a matching checksum): never unpickled
        meta = json.loads((d / "state.json").read_text())
        with np.load(d / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["evil"] = np.array([object()], dtype=object)
        np.savez(d / "arrays.npz", **arrays)
        from mbrl_ros.core.store import _sha256
        meta["checksums"]["arrays.npz"] = _sha256(d / "arrays.npz")
        (d / "state.json").write_text(json.dumps(meta))
        bad = "arrays.npz"
    with pytest.raises(CheckpointError, match=bad):
        load_checkpoint(d, _make())
    said = []
    gps, run, it = load_latest(ckpt, _make, warn=said.append)
    assert it == 1 and run == {"note": "one"} and gps.iteration_count == 1
    assert bad in said[0] and "previous iteration" in said[0]
    assert "iteration 2 runs again" in said[1]
    # with the older one damaged too there is nothing to resume from: a clear error
    (ckpt / "it0001" / "state.json").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="no usable checkpoint.*it0001"):
        load_latest(ckpt, _make, warn=said.append)


def test_pending_samples_round_trip_and_a_damaged_set_is_redrawn(tmp_path):
    rng = np.random.default_rng(0)
    X, U = rng.standard_normal((2, 3, 9, 4)), rng.standard_normal((2, 3, 8, 2))
    samples = (X, U, 0.25, (1, ["condition 0, step 3: diverging"], 0.15))
    state = np.random.default_rng(5).bit_generator.state
    save_pending(tmp_path, 3, samples, state, state)
    got, r1, r2 = load_pending(tmp_path, 3)
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], U)
    assert got[2:] == (0.25, (1, ["condition 0, step 3: diverging"], 0.15))
    assert r1 == state and r2 == state
    assert load_pending(tmp_path, 4) is None
    (tmp_path / "pending-0003" / "arrays.npz").write_bytes(b"PK\x03\x04junk")
    said = []
    assert load_pending(tmp_path, 3, warn=said.append) is None
    assert "pending-0003/arrays.npz" in said[0] and "drawing them again" in said[0]


def test_only_the_two_newest_checkpoints_are_kept_and_unknown_state_is_refused(tmp_path):
    torch.set_num_threads(1)
    gps = _make()
    gps.iteration()
    for it in (1, 2, 3):
        gps.iteration_count = it
        gps.history = gps.history[:1] * it
        save_checkpoint(tmp_path, gps, {})
    assert checkpoints(tmp_path) == [2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    gps.something_new = 1
    with pytest.raises(CheckpointError, match="something_new"):
        save_checkpoint(tmp_path, gps, {})
