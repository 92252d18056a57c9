"""MujocoModel: the known-model baseline agrees with the simulator, its derivatives with
finite differences, and its names with what the dataset converter produces."""
import shutil

import numpy as np
import pytest

from mbrl_ros.core import registry, store
from mbrl_ros.core.data import AlignmentConfig, BagWriter, bag_to_dataset, default_typestore
from mbrl_ros.core.models.base import ModelError, finite_difference_linearization
from mbrl_ros.core.models.mujoco_model import MujocoModel
from mbrl_ros.core.types import TransitionBatch
from mbrl_ros.sim.env import MujocoSim

ROBOTS = ["arm2", "arm7", "cartpole"]


def _samples(sim: MujocoSim, n: int, seed: int = 0):
    """States well inside the joint limits (no active limit constraint) and efforts within
    half the effort limits; unlimited joints anywhere in [-pi, pi]."""
    rng = np.random.default_rng(seed)
    lim = sim.position_limits
    finite = np.isfinite(lim).all(axis=1)
    safe = np.where(finite[:, None], lim, 0.0)
    mid = safe.mean(axis=1)
    half = np.where(finite, 0.35 * (safe[:, 1] - safe[:, 0]), np.pi)
    q = mid + rng.uniform(-1, 1, (n, sim.n_joints)) * half
    v = rng.normal(0.0, 1.0, (n, sim.n_joints))
    u = rng.uniform(-0.5, 0.5, (n, sim.n_commands)) * sim.effort_limits
    return np.concatenate([q, v], axis=1), u


def _sim_step(sim: MujocoSim, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    n = sim.n_joints
    out = []
    for xi, ui in zip(x, u):
        sim.set_state(xi[:n], xi[n:])
        sim.step(ui)
        out.append(sim.state().copy())
    return np.array(out)


@pytest.mark.parametrize("robot", ROBOTS)
def test_predict_equals_stepping_the_simulator(robot):
    model = MujocoModel.from_sim(robot, control_period=0.01)
    sim = MujocoSim(robot, control_period=0.01)
    x, u = _samples(sim, 16)
    ref = _sim_step(sim, x, u)
    mean, var = model.predict(x, u)                 # batched: mujoco.rollout
    assert var is None and mean.shape == ref.shape and mean.dtype == np.float64
    np.testing.assert_array_equal(mean, ref)
    single = np.array([model.predict(xi, ui)[0][0] for xi, ui in zip(x, u)])  # mj_step
    np.testing.assert_array_equal(single, ref)
    # Pure function: a repeated query gives the same answer.
    np.testing.assert_array_equal(model.predict(x, u)[0], mean)


def test_predict_with_other_control_period_and_joint_subset():
    model = MujocoModel.from_sim("arm7", control_period=0.02, command_joints=("joint2", "joint4"))
    sim = MujocoSim("arm7", control_period=0.02, command_joints=("joint2", "joint4"))
    assert model.spec.action_names == ("joint2", "joint4") and model.spec.dt == 0.02
    x, u = _samples(sim, 5, seed=2)
    np.testing.assert_array_equal(model.predict(x, u)[0], _sim_step(sim, x, u))


@pytest.mark.parametrize("robot", ROBOTS)
@pytest.mark.parametrize("centered", [False, True])
def test_linearize_matches_central_differences(robot, centered):
    model = MujocoModel.from_sim(robot, control_period=0.01, centered=centered)
    x, u = _samples(model.sim, 6, seed=1)
    lin = model.linearize(x, u)
    fd = finite_difference_linearization(lambda a, b: model.predict(a, b)[0], x, u, eps=1e-6)
    for got, ref in ((lin.fx, fd.fx), (lin.fu, fd.fu)):
        rel = np.linalg.norm(got - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
        assert rel.max() < 1e-3, rel
    # The affine model passes through the nominal next state at every knot.
    mean, _ = model.predict(x, u)
    affine = np.einsum("tij,tj->ti", lin.fx, x) + np.einsum("tij,tj->ti", lin.fu, u) + lin.f0
    np.testing.assert_allclose(affine, mean, atol=1e-9)
    assert lin.cov is None


def test_linearize_is_not_a_single_step():
    """Composition over the 5 substeps: the position-velocity block is ~ control period."""
    model = MujocoModel.from_sim("arm2", control_period=0.01)
    x, u = _samples(model.sim, 1)
    lin = model.linearize(x, u)
    np.testing.assert_allclose(np.diag(lin.fx[0, :2, 2:]), 0.01, rtol=0.2)


def _bag_from_sim(tmp_path, robot: str, steps: int = 40):
    """Record what the sim node publishes (joint states of all joints, effort commands
    without names) into a rosbag2 bag, then convert it as the fitter does."""
    ts = default_typestore()
    JS, Header, Time = (ts.types[k] for k in ("sensor_msgs/msg/JointState", "std_msgs/msg/Header",
                                              "builtin_interfaces/msg/Time"))
    F64, Layout = ts.types["std_msgs/msg/Float64MultiArray"], ts.types["std_msgs/msg/MultiArrayLayout"]
    sim = MujocoSim(robot, control_period=0.01)
    cfg = AlignmentConfig()
    rng = np.random.default_rng(4)
    t0 = 1_700_000_000 * 10**9
    with BagWriter(tmp_path, name=robot) as w:
        w.add_topic(cfg.state_topic, "sensor_msgs/msg/JointState")
        w.add_topic(cfg.command_topic, "std_msgs/msg/Float64MultiArray")
        for k in range(steps + 1):
            stamp = k * 10_000_000
            w.write(cfg.state_topic, t0 + stamp, JS(
                header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=""),
                name=list(sim.joint_names), position=sim.positions().copy(),
                velocity=sim.velocities().copy(), effort=sim.efforts().copy()))
            u = rng.uniform(-0.3, 0.3, sim.n_commands) * sim.effort_limits
            w.write(cfg.command_topic, t0 + stamp + 1_000_000,
                    F64(layout=Layout(dim=[], data_offset=0), data=u))
            sim.step(u)
    batch, _, _ = bag_to_dataset(tmp_path, cfg)
    return batch


@pytest.mark.parametrize("robot", ["arm7", "cartpole"])
def test_spec_names_match_the_dataset_converter(tmp_path, robot):
    batch = _bag_from_sim(tmp_path, robot)
    assert len(batch) == 40
    model = MujocoModel.from_sim(robot, control_period=0.01)
    assert batch.state_names == model.spec.state_names
    if robot == "arm7":  # as many commands as joints: the converter names them after joints
        assert batch.action_names == model.spec.action_names
    else:                # fewer commands than joints: generic names u0.., accepted by fit
        assert batch.action_names == ("u0",)
    for fresh in (registry.create("model", "mujoco", MujocoModel.Settings(mjcf=robot)), model):
        report = fresh.fit(batch)
        assert fresh.spec.state_names == batch.state_names
        assert fresh.spec.action_names == batch.action_names
        # Data from the nominal simulator: the known model reproduces it.
        assert report.metrics["rmse"] < 1e-9, report.metrics
        assert report.n_train == 40 and report.n_val == 0


def test_fit_refuses_data_of_another_robot():
    model = MujocoModel(MujocoModel.Settings(mjcf="arm2"))
    names = ("a/position", "b/position", "a/velocity", "b/velocity")
    data = TransitionBatch(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros((3, 4)), np.full(3, 0.01),
                           np.arange(3.0), np.zeros(3, int), names, ("a", "b"))
    with pytest.raises(ModelError, match=r"a/position.*shoulder/position"):
        model.fit(data)
    sim = MujocoSim("arm2")
    good_x = ("shoulder/position", "elbow/position", "shoulder/velocity", "elbow/velocity")
    data = data.replace(state_names=good_x, action_names=("elbow", "shoulder"))
    with pytest.raises(ModelError, match=r"elbow.*shoulder"):
        model.fit(data)
    assert sim.joint_names == ("shoulder", "elbow")


def test_store_round_trip_and_changed_mjcf(tmp_path):
    mjcf = tmp_path / "my_arm.xml"
    shutil.copy(MujocoSim("arm2").model_path, mjcf)
    model = MujocoModel.from_sim(str(mjcf), control_period=0.01)
    assert model.spec.robot == "my_arm.xml"
    info = store.publish(model, tmp_path / "models", "known")
    loaded = store.load(info.uri)
    assert isinstance(loaded, MujocoModel) and loaded.spec == model.spec
    x, u = _samples(model.sim, 4)
    np.testing.assert_array_equal(loaded.predict(x, u)[0], model.predict(x, u)[0])
    mjcf.write_text(mjcf.read_text().replace('damping="0.05"', 'damping="0.5"'))
    with pytest.raises(ModelError, match="changed"):
        store.load(info.uri)


def test_bad_settings_are_model_errors():
    with pytest.raises(ModelError, match="not a positive integer multiple"):
        MujocoModel.from_sim("arm2", control_period=0.003, timestep=0.002)
    with pytest.raises(ModelError, match="unknown model"):
        MujocoModel.from_sim("no_such_robot")
