"""Model acceptance (issue 11 item 3): a model a controller could not use is refused at
load with the reason -- model.json against its schema, NaN/inf weights, a non-finite
one-step prediction, another robot's joint/action layout -- the fitter never publishes
one, nor one fitted on data without excitation, and stores clean up after killed writers."""
import json
import os
import time

import numpy as np
import pytest

from model_faults import arm2_linear, published, rewrite, with_nan
from mbrl_ros.core import store
from mbrl_ros.core.control.plan_process import load_model
from mbrl_ros.core.fitting import FitSettings, check_excitation, fit_model
from mbrl_ros.core.models.base import ModelError, ModelSpec, check_one_step
from mbrl_ros.core.types import TransitionBatch

ROBOT = dict(robot="arm2", control_period=0.01, joint_names=("shoulder", "elbow"))


def load(uri, **kw):
    return load_model(str(uri), **ROBOT, **kw)


def test_a_good_arm2_model_loads(tmp_path):
    info = published(tmp_path)
    model, v = load(info.uri, checksum=info.checksum)
    assert v == 1 and model.spec.nu == 2


# ------------------------------------------------------------------ weights
def test_nan_weights_with_a_valid_checksum_are_refused_naming_the_array(tmp_path):
    info = published(tmp_path)
    rewrite(info.uri, with_nan(arm2_linear().state_arrays(), "B"))
    weights = f"{info.uri}/weights.npz"
    with pytest.raises(ModelError, match=rf"{weights}: array 'B' has 1 NaN"):
        store.load(info.uri)
    with pytest.raises(ModelError, match="array 'B' has 1 NaN"):
        load(info.uri)


def test_inf_weights_are_refused_but_interval_bounds_may_be_infinite(tmp_path):
    from mbrl_ros.core.models.base import check_finite_arrays
    arrays = arm2_linear().state_arrays()
    arrays["c"] = arrays["c"].copy()
    arrays["c"][1] = np.inf
    with pytest.raises(ModelError, match="array 'c' has 1 infinite"):
        check_finite_arrays(arrays, "w.npz")
    # GPyTorch keeps "unbounded" as an inf upper bound: data, not a diverged weight
    check_finite_arrays({"gp.raw_noise_constraint.upper_bound": np.array(np.inf)}, "w.npz")
    with pytest.raises(ModelError, match="NaN"):
        check_finite_arrays({"gp.raw_noise_constraint.upper_bound": np.array(np.nan)}, "w")


def test_publish_never_writes_nan_weights(tmp_path):
    model = arm2_linear()
    model.A[0, 0] = np.nan
    with pytest.raises(ModelError, match="array 'A' has 1 NaN"):
        store.publish(model, tmp_path, "arm2")
    assert store.versions(tmp_path, "arm2") == []
    assert not (tmp_path / "arm2").exists()                # refused before writing anything


def test_finite_weights_with_a_non_finite_one_step_prediction_are_refused(tmp_path):
    model = arm2_linear()
    model.A[2, 0] = 1e308                                   # x' overflows for |q| > 1.8
    info = published(tmp_path, model)
    load(info.uri)                                         # from the home state (0): fine
    with pytest.raises(ModelError, match="one-step prediction from x=.* is not finite"):
        load(info.uri, state=np.array([2.0, 0.0, 0.0, 0.0]))  # from the current state
    with pytest.raises(ModelError, match="not finite"):
        store.load(info.uri, state=np.array([2.0, 0.0, 0.0, 0.0]))
    # a current state that is itself unusable falls back to the home keyframe
    assert load(info.uri, state=np.full(4, np.nan))[1] == 1


def test_one_step_check_uses_the_home_keyframe_when_no_state_is_given(tmp_path):
    # cart-pole's home keyframe has the pole down at pi: a model that overflows there is
    # refused even though it is finite at x = 0
    spec = ModelSpec(4, 1, ("slider/position", "hinge/position", "slider/velocity",
                            "hinge/velocity"), ("slider",), 0.01, "cartpole")
    from mbrl_ros.core.models.linear import LinearModel
    m = LinearModel(spec=spec)
    m.A, m.B, m.c, m.var = np.eye(4), np.zeros((4, 1)), np.zeros(4), np.full(4, 1e-8)
    m.A[3, 1] = 1e308
    check_one_step(m, np.zeros(4))
    info = store.publish(m, tmp_path, "cp")
    with pytest.raises(ModelError, match="not finite"):
        load_model(info.uri, robot="cartpole", control_period=0.01,
                   joint_names=("slider", "hinge"))


# ------------------------------------------------------------------ layout
def test_three_action_model_for_the_two_motor_arm_is_refused(tmp_path):
    info = published(tmp_path, arm2_linear(actions=("shoulder", "elbow", "wrist")))
    with pytest.raises(ModelError, match=r"3 action\(s\).*2 command joint\(s\)"):
        load(info.uri)


def test_actions_in_another_order_or_other_joints_are_refused(tmp_path):
    swapped = published(tmp_path, arm2_linear(actions=("elbow", "shoulder")), "a")
    with pytest.raises(ModelError, match="not the robot's command joints"):
        load(swapped.uri)
    other = published(tmp_path, arm2_linear(joints=("hip", "knee")), "b")
    with pytest.raises(ModelError, match="not a model of robot 'arm2'.*hip/position"):
        load(other.uri)
    # unnamed command columns (u0, u1: a dataset whose commands were not one per joint)
    # are taken in command order
    generic = published(tmp_path, arm2_linear(actions=("u0", "u1")), "c")
    assert load(generic.uri)[0].spec.action_names == ("u0", "u1")


# ------------------------------------------------------------------ model.json schema
def test_missing_checksum_names_the_file_and_key(tmp_path):
    info = published(tmp_path)
    rewrite(info.uri, meta=lambda d: d.pop("checksum"))
    with pytest.raises(ModelError, match=rf"{info.uri}/model.json: key 'checksum' .*missing"):
        load(info.uri)


def test_missing_weights_array_names_the_file_and_array(tmp_path):
    info = published(tmp_path)
    arrays = arm2_linear().state_arrays()
    del arrays["var"]
    rewrite(info.uri, arrays)
    with pytest.raises(ModelError, match=rf"{info.uri}/weights.npz: lacks array 'var'"):
        load(info.uri)


def test_nx_as_a_string_names_the_file_and_key(tmp_path):
    info = published(tmp_path)
    rewrite(info.uri, meta=lambda d: d["spec"].update(nx="four"))
    with pytest.raises(ModelError,
                       match=rf"{info.uri}/model.json: key 'spec.nx' must be an integer.*"
                             r"got 'four'"):
        load(info.uri)


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.update(format=2), "format"),
    (lambda d: d.update(kind=""), "kind"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d.update(checksum="abc"), "checksum"),
    (lambda d: d.update(spec=[]), "spec"),
    (lambda d: d["spec"].update(nu=True), "spec.nu"),
    (lambda d: d["spec"].update(state_names=["a"] * 4), "spec.state_names"),
    (lambda d: d["spec"].pop("action_names"), "spec.action_names"),
    (lambda d: d["spec"].update(dt=float("nan")), "spec.dt"),
    (lambda d: d["spec"].update(dt=0), "spec.dt"),
    (lambda d: d["spec"].update(periodic=[7]), "spec.periodic"),
    (lambda d: d["spec"].update(robot=3), "spec.robot"),
    (lambda d: d.update(settings=[1]), "settings"),
    (lambda d: d.update(report="good"), "report"),
])
def test_schema_errors_name_the_key(tmp_path, edit, key):
    info = published(tmp_path)
    rewrite(info.uri, meta=edit)
    with pytest.raises(ModelError, match=rf"model.json: key '{key}' must be"):
        store.load(info.uri)


def test_settings_of_the_wrong_type_name_the_file_and_key(tmp_path):
    info = published(tmp_path)
    rewrite(info.uri, meta=lambda d: d.update(settings={"ridge": "lots"}))
    with pytest.raises(ModelError, match=r"model.json: key 'settings'.*ridge"):
        store.load(info.uri)
    rewrite(info.uri, meta=lambda d: d.update(kind="no_such_model"))
    with pytest.raises(ModelError, match=r"model.json: key 'kind'.*no_such_model"):
        store.load(info.uri)


def test_arrays_of_the_wrong_shape_name_the_weights_file(tmp_path):
    info = published(tmp_path)
    arrays = arm2_linear().state_arrays()
    arrays["B"] = np.zeros((4, 3))
    rewrite(info.uri, arrays)
    with pytest.raises(ModelError, match=rf"{info.uri}/weights.npz: linear arrays do not"):
        store.load(info.uri)


# ------------------------------------------------------------------ stale temporaries
def test_stale_tmp_folders_are_removed_when_the_store_opens(tmp_path):
    info = published(tmp_path)
    base = tmp_path / "arm2"
    old, fresh = base / ".tmp-killed", base / ".tmp-at-work"
    for d in (old, fresh):
        d.mkdir()
        (d / "weights.npz").write_bytes(b"half")
    link = base / ".latest-12345"
    os.symlink("v0001", link)
    past = time.time() - 120
    for p in (old / "weights.npz", old):
        os.utime(p, (past, past))
    os.utime(link, (past, past), follow_symlinks=False)
    store.open_store(tmp_path, "arm2")
    assert not old.exists() and not link.is_symlink()
    assert fresh.exists()                                 # may be a publish in progress
    assert (base / "v0001").is_dir() and os.readlink(base / "latest") == "v0001"
    # a tmp folder whose contents are still being written is not stale
    os.utime(fresh, (past, past))
    store.publish(arm2_linear(), tmp_path, "arm2")        # publish opens the store too
    assert fresh.exists() and store.versions(tmp_path, "arm2") == [1, 2]
    os.utime(fresh / "weights.npz", (past, past))
    store.publish(arm2_linear(), tmp_path, "arm2")
    assert not fresh.exists()
    assert store.load(info.uri).spec.nx == 4


# ------------------------------------------------------------------ fitter side
def _rest_data(n=300, moving_states=False, moving_actions=False, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 4)) + (rng.normal(size=(n, 4)) if moving_states else 0.0)
    u = np.full((n, 2), 0.3) + (rng.normal(size=(n, 2)) if moving_actions else 0.0)
    return TransitionBatch(x, u, x.copy(), np.full(n, 0.01), np.arange(n) * 0.01,
                           np.repeat(np.arange(5), n // 5),
                           ("shoulder/position", "elbow/position", "shoulder/velocity",
                            "elbow/velocity"), ("shoulder", "elbow"), {"robot": "arm2"})


def test_fit_refuses_data_without_excitation():
    with pytest.raises(ModelError, match="without excitation: no action varies"):
        fit_model(_rest_data(), FitSettings(model="linear"))
    with pytest.raises(ModelError, match="without excitation: no action varies"):
        fit_model(_rest_data(moving_states=True), FitSettings(model="linear"))
    with pytest.raises(ModelError, match="without excitation: no state varies"):
        fit_model(_rest_data(moving_actions=True), FitSettings(model="linear"))
    # one never-commanded motor is legitimate (e.g. an unactuated joint's zero effort)
    # but said in the report
    batch = _rest_data(moving_states=True, moving_actions=True)
    u = batch.actions.copy()
    u[:, 1] = 0.0
    notes = check_excitation(batch.replace(actions=u), 1e-6)
    assert notes and "['elbow'] never vary" in notes[0]


def test_fit_never_returns_a_model_of_other_joints_than_the_robot():
    from test_store_and_fitting import linear_data          # joints j1, j2
    r = fit_model(linear_data(), FitSettings(model="linear"), robot="toy")   # a label
    assert r.model.spec.robot == "toy"
    with pytest.raises(ModelError, match="not a model of robot 'arm2'"):
        fit_model(linear_data(), FitSettings(model="linear"), robot="arm2")


def test_fit_refuses_a_model_with_nan_weights(monkeypatch):
    from mbrl_ros.core.models.linear import LinearModel
    fit = LinearModel.fit

    def diverged(self, *a, **kw):
        report = fit(self, *a, **kw)
        self.var = self.var.copy()
        self.var[0] = np.nan               # predictions' means stay finite
        return report

    monkeypatch.setattr(LinearModel, "fit", diverged)
    data = _rest_data(moving_states=True, moving_actions=True)
    with pytest.raises(ModelError, match="(array 'var' has 1 NaN|variance .* not finite)"):
        fit_model(data, FitSettings(model="linear"))


def test_malformed_announcements_name_the_key():
    good = {"uri": "/m/v0001", "kind": "linear", "version": 1, "checksum": "a" * 64}
    assert store.ArtifactInfo.from_json(json.dumps(good)).version == 1
    with pytest.raises(ModelError, match="key 'version' must be an integer"):
        store.ArtifactInfo.from_json(json.dumps({**good, "version": "one"}))
    with pytest.raises(ModelError, match="key 'checksum' .*missing"):
        store.ArtifactInfo.from_json(json.dumps({k: v for k, v in good.items()
                                                 if k != "checksum"}))
    with pytest.raises(ModelError, match="key 'metrics' must be an object"):
        store.ArtifactInfo.from_json(json.dumps({**good, "metrics": 5}))
    with pytest.raises(ModelError, match="must be a JSON object"):
        store.ArtifactInfo.from_json("[1, 2]")
    with pytest.raises(ModelError, match="not JSON"):
        store.ArtifactInfo.from_json("{")
