"""Versioned artifacts (atomic, verified) and the shared fit pipeline."""
import os

import numpy as np
import pytest

from mbrl_ros.core import store
from mbrl_ros.core.fitting import (FitSettings, accept, drop_nonfinite, fit_model,
                                   rescore, split_episodes)
from mbrl_ros.core.models.base import FitReport, ModelError, ModelSpec
from mbrl_ros.core.types import TransitionBatch

NAMES_X = ("j1/position", "j2/position", "j1/velocity", "j2/velocity")
NAMES_U = ("j1", "j2")


def linear_data(n_episodes=5, T=60, seed=0, noise=1e-3):
    rng = np.random.default_rng(seed)
    A = np.eye(4) + 0.01 * rng.normal(size=(4, 4))
    B = 0.05 * rng.normal(size=(4, 2))
    xs, us, xn, ep = [], [], [], []
    for e in range(n_episodes):
        x = rng.normal(size=4)
        for _ in range(T):
            u = rng.normal(size=2)
            x_next = A @ x + B @ u + noise * rng.normal(size=4)
            xs.append(x), us.append(u), xn.append(x_next), ep.append(e)
            x = x_next
    n = len(xs)
    return TransitionBatch(np.array(xs), np.array(us), np.array(xn), np.full(n, 0.01),
                           np.arange(n) * 0.01, np.array(ep), NAMES_X, NAMES_U,
                           {"robot": "toy"})


def fitted(seed=0):
    return fit_model(linear_data(seed=seed), FitSettings(model="linear"))


def test_publish_load_roundtrip_versions_and_latest(tmp_path):
    r1, r2 = fitted(0), fitted(1)
    a = store.publish(r1.model, tmp_path, "m", r1.report)
    b = store.publish(r2.model, tmp_path, "m", r2.report)
    assert (a.version, b.version) == (1, 2)
    assert store.versions(tmp_path, "m") == [1, 2]
    assert os.readlink(tmp_path / "m" / "latest") == "v0002"
    x, u = np.ones((3, 4)), np.ones((3, 2))
    loaded = store.load(tmp_path / "m" / "latest", checksum=b.checksum)
    np.testing.assert_array_equal(loaded.predict(x, u)[0], r2.model.predict(x, u)[0])
    assert store.ArtifactInfo.from_json(b.to_json()) == b
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_latest_repointed_during_a_load_gives_one_consistent_version(tmp_path, monkeypatch):
    r1, r2 = fitted(0), fitted(1)
    store.publish(r1.model, tmp_path, "m", r1.report)
    read_meta = store.read_meta

    def read_then_publish(path):            # a fitter publishes v2 right after the read
        meta = read_meta(path)
        monkeypatch.setattr(store, "read_meta", read_meta)
        store.publish(r2.model, tmp_path, "m", r2.report)
        return meta

    monkeypatch.setattr(store, "read_meta", read_then_publish)
    loaded = store.load(tmp_path / "m" / "latest")      # v1 throughout, not v1 meta + v2 weights
    x, u = np.ones((3, 4)), np.ones((3, 2))
    np.testing.assert_array_equal(loaded.predict(x, u)[0], r1.model.predict(x, u)[0])
    assert os.readlink(tmp_path / "m" / "latest") == "v0002"


def test_truncated_or_modified_weights_are_refused(tmp_path):
    r = fitted()
    info = store.publish(r.model, tmp_path, "m", r.report)
    w = tmp_path / "m" / "v0001" / "weights.npz"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or modified"):
        store.load(info.uri)
    w.write_bytes(data)
    store.load(info.uri)                              # intact again: loads
    with pytest.raises(ModelError, match="announced"):
        store.load(info.uri, checksum="0" * 64)


def test_model_of_another_robot_is_refused(tmp_path):
    r = fitted()
    info = store.publish(r.model, tmp_path, "m", r.report)
    other = ModelSpec(4, 2, ("a/position", "b/position", "a/velocity", "b/velocity"),
                      ("a", "b"), 0.01)
    with pytest.raises(ModelError, match="names differ"):
        store.load(info.uri, expect=other)


def test_missing_or_corrupt_metadata(tmp_path):
    with pytest.raises(ModelError, match="no model.json"):
        store.load(tmp_path)
    r = fitted()
    info = store.publish(r.model, tmp_path, "m", r.report)
    meta = tmp_path / "m" / "v0001" / "model.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(ModelError, match="corrupt"):
        store.load(info.uri)


def test_pack_unpack_for_remote_hosts(tmp_path):
    r = fitted()
    info = store.publish(r.model, tmp_path / "a", "m", r.report)
    blob = store.pack(info.uri)
    path = store.unpack(blob, tmp_path / "b", "m", info.version)
    assert store.load(path, checksum=info.checksum).spec == r.model.spec
    with pytest.raises(ModelError, match="corrupt"):
        store.unpack(blob[:100], tmp_path / "c", "m", 1)


def test_split_holds_out_whole_last_episodes():
    batch = linear_data(n_episodes=5)
    train, val = split_episodes(batch, 0.2)
    assert set(val.episode.tolist()) == {4} and set(train.episode.tolist()) == {0, 1, 2, 3}
    one = batch.subset(batch.episode == 0)
    train, val = split_episodes(one, 0.25)
    assert len(val) == 15 and train.time.max() < val.time.min()


def test_fit_reports_validation_metrics_and_recovers_linear_system():
    r = fitted()
    m = r.report.metrics
    assert r.report.n_train == 240 and r.report.n_val == 60
    assert m["one_step_rmse"] < 3e-3 and m["rollout_rmse"] < 0.05
    data = linear_data()          # the region the model saw: every column's [min, max]
    columns = np.concatenate([data.states, data.actions], axis=1)
    expect = {n: [c.min(), c.max()] for n, c in zip(NAMES_X + NAMES_U, columns.T)}
    assert r.report.ranges == expect
    assert r.report.to_json()["ranges"] == expect      # stored with the published model


def test_nonfinite_rows_dropped_and_counted():
    batch = linear_data()
    states = batch.states.copy()
    states[[3, 50]] = np.nan
    dirty = batch.replace(states=states)
    clean, n = drop_nonfinite(dirty)
    assert n == 2 and len(clean) == len(batch) - 2
    assert fit_model(dirty, FitSettings(model="linear")).n_dropped_nonfinite == 2


def test_too_few_samples_and_wrong_dimensions_are_clear():
    tiny = linear_data(n_episodes=2, T=3)
    with pytest.raises(ModelError, match="needs"):
        fit_model(tiny, FitSettings(model="linear"))
    expect = ModelSpec(14, 7, tuple(f"x{i}" for i in range(14)), tuple(f"u{i}" for i in range(7)),
                       0.01)
    with pytest.raises(ModelError, match=r"\(4, 2\).*\(14, 7\)"):
        fit_model(linear_data(), FitSettings(model="linear"), expect=expect)


def test_accept_rejects_much_worse_models():
    good = FitReport(1, 1, 0.0, {"rollout_rmse": 0.1})
    ok, why = accept(FitReport(1, 1, 0.0, {"rollout_rmse": 0.15}), good, 2.0)
    assert ok
    ok, why = accept(FitReport(1, 1, 0.0, {"rollout_rmse": 0.5}), good, 2.0)
    assert not ok and "keeping the last good model" in why
    ok, _ = accept(FitReport(1, 1, 0.0, {"rollout_rmse": float("nan")}), None, 2.0)
    assert not ok


def test_unpack_does_not_reuse_a_different_model_with_the_same_version(tmp_path):
    a, b = fitted(0), fitted(1)
    ia = store.publish(a.model, tmp_path / "s1", "m", a.report)
    ib = store.publish(b.model, tmp_path / "s2", "m", b.report)   # a restarted fitter: v1 again
    assert ia.version == ib.version == 1
    pa = store.unpack(store.pack(ia.uri), tmp_path / "cache", "m", 1, ia.checksum)
    pb = store.unpack(store.pack(ib.uri), tmp_path / "cache", "m", 1, ib.checksum)
    assert pa != pb
    assert store.load(pb, checksum=ib.checksum).spec == b.model.spec
    with pytest.raises(ModelError, match="plain name"):
        store.unpack(store.pack(ia.uri), tmp_path / "cache", "../evil", 1, ia.checksum)


def test_short_validation_episodes_still_validate():
    batch = linear_data(n_episodes=6, T=12)          # episodes shorter than the horizon 20
    r = fit_model(batch, FitSettings(model="linear", horizon=20))
    assert np.isfinite(r.report.metrics["rollout_rmse"])
    assert r.report.metrics["rollout_horizon"] == 12
    ok, _ = accept(r.report, None, 2.0)
    assert ok


def test_rollouts_do_not_cross_holes_in_an_episode():
    from mbrl_ros.core.models.evaluate import rollouts
    batch = linear_data(n_episodes=1, T=80, noise=0.0)
    model = fit_model(batch, FitSettings(model="linear", val_fraction=0.0)).model
    holed = batch.subset(np.r_[0:30, 35:80])          # 5 transitions dropped mid-episode
    ro = rollouts(model, holed, 10)
    assert len(ro.predicted) == 3 + 4                   # runs of 30 and 45 transitions
    assert ro.rmse() < 1e-6                             # exact model: exact rollouts


def test_previous_model_is_judged_on_the_new_validation_data():
    # The first model saw quiet data; the new data is 100x noisier. The new model's error
    # is far above the old model's *own* report, but on the new held-out data the old
    # model does no better: comparing like with like accepts the new one.
    fs = FitSettings(model="linear")
    old = fit_model(linear_data(seed=0, noise=1e-3), fs)
    new = fit_model(linear_data(seed=0, noise=1e-1), fs)
    assert not accept(new.report, old.report, 2.0)[0]            # different data: misleading
    prev = rescore(old.model, new, fs.horizon)
    assert prev.n_val == len(new.validation) > 0
    ok, why = accept(new.report, prev, 2.0)
    assert ok, why
    # and a genuinely worse model is still rejected on the same data
    quiet = fit_model(linear_data(seed=1, noise=1e-3), fs)
    quiet.model.A = quiet.model.A + 0.05                        # a broken fit
    quiet.report.metrics.update(rescore(quiet.model, quiet, fs.horizon).metrics)
    ok, why = accept(quiet.report, rescore(old.model, quiet, fs.horizon), 2.0)
    assert not ok and "same held-out data" in why


def test_a_fit_asked_to_stop_is_cancelled_at_its_next_progress_report():
    """``should_stop`` cancels a long training run at its next epoch (a node shutting
    down), and a fit nobody stops is unaffected."""
    import time as _time
    from mbrl_ros.core.fitting import FitCancelled
    asked = []

    def stop_after_two():
        asked.append(_time.perf_counter())
        return len(asked) > 2
    many = {"epochs": 100000, "min_epochs": 100000, "patience": 100000, "max_seconds": 0,
            "hidden_units": 8, "hidden_layers": 1, "members": 2}
    t0 = _time.perf_counter()
    with pytest.raises(FitCancelled, match="ensemble fit cancelled"):
        fit_model(linear_data(), FitSettings(model="ensemble"), many,
                  should_stop=stop_after_two)
    assert len(asked) == 3 and _time.perf_counter() - t0 < 60
    r = fit_model(linear_data(), FitSettings(model="linear"), should_stop=lambda: False)
    assert r.report.metrics["one_step_rmse"] < 0.01
