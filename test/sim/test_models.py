"""Shipped MJCF models: lookup, declared limits and basic kinematics."""
import math

import mujoco
import numpy as np
import pytest

from mbrl_ros.sim.models import available_models, resolve_model

SHIPPED = ["arm2", "arm7", "cartpole"]


def _load(name: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(resolve_model(name)))


def _joint(m: mujoco.MjModel, name: str) -> int:
    j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert j >= 0, f"joint {name} missing"
    return j


def _at_key(m: mujoco.MjModel, key: str = "home") -> mujoco.MjData:
    d = mujoco.MjData(m)
    mujoco.mj_resetDataKeyframe(m, d, mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, key))
    mujoco.mj_forward(m, d)
    return d


def test_available_models_lists_shipped_files_sorted():
    assert available_models() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_resolve_shipped_name_and_path(name):
    path = resolve_model(name)
    assert path.is_file() and path.suffix == ".xml" and path.is_absolute()
    assert resolve_model(str(path)) == path


def test_resolve_unknown_lists_available_names():
    with pytest.raises(ValueError) as info:
        resolve_model("nope")
    message = str(info.value)
    assert "nope" in message
    for name in SHIPPED:
        assert name in message


def test_resolve_rejects_existing_non_xml_and_missing_xml(tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("<mujoco/>")
    with pytest.raises(ValueError, match="model.txt"):
        resolve_model(str(text))
    with pytest.raises(ValueError, match="missing.xml"):
        resolve_model(str(tmp_path / "missing.xml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_common_declarations(name):
    m = _load(name)
    assert m.opt.timestep == pytest.approx(0.002)
    assert m.opt.integrator == int(mujoco.mjtIntegrator.mjINT_IMPLICITFAST)
    assert m.nu >= 1
    np.testing.assert_array_equal(m.actuator_gear[:, 0], 1.0)
    np.testing.assert_array_equal(m.actuator_gainprm[:, 0], 1.0)
    assert m.actuator_trntype.tolist() == [int(mujoco.mjtTrn.mjTRN_JOINT)] * m.nu
    assert m.actuator_ctrllimited.all()
    assert (m.dof_damping > 0).all()
    assert mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "ee") >= 0
    assert mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home") >= 0


def test_arm2_declarations():
    m = _load("arm2")
    for name, bound in [("shoulder", math.radians(170)), ("elbow", math.radians(160))]:
        j = _joint(m, name)
        assert m.jnt_limited[j]
        np.testing.assert_allclose(m.jnt_range[j], [-bound, bound], atol=1e-4)
        # Hinge axes along world z: gravity cannot load the joints.
        np.testing.assert_allclose(m.jnt_axis[j], [0, 0, 1])
    np.testing.assert_allclose(m.actuator_ctrlrange, [[-3, 3], [-3, 3]])
    np.testing.assert_allclose(sorted(m.body_mass[1:]), [0.6, 1.0])
    d = _at_key(m)
    np.testing.assert_array_equal(d.qpos, [0, 0])
    # Link lengths 0.30 + 0.25 m along x at home.
    np.testing.assert_allclose(d.site("ee").xpos, [0.55, 0, 0], atol=1e-12)


def test_arm7_declarations():
    m = _load("arm7")
    lower = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
    upper = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
    ids = [_joint(m, f"joint{i}") for i in range(1, 8)]
    assert m.jnt_limited[ids].all()
    np.testing.assert_allclose(m.jnt_range[ids], np.column_stack([lower, upper]))
    np.testing.assert_allclose(m.actuator_ctrlrange[:, 1], [87, 87, 87, 87, 12, 12, 12])
    np.testing.assert_allclose(m.actuator_ctrlrange[:, 0], [-87, -87, -87, -87, -12, -12, -12])
    link_masses = [m.body_mass[m.jnt_bodyid[j]] for j in ids]
    np.testing.assert_allclose(link_masses, [4.97, 0.65, 3.23, 3.59, 1.23, 1.67, 0.74], atol=0.01)
    assert m.opt.gravity[2] == pytest.approx(-9.81)
    d = _at_key(m)
    np.testing.assert_allclose(d.qpos, [0, -0.785, 0, -2.356, 0, 1.571, 0.785])
    # Panda kinematics: at q = 0 the flange is at (0.088, 0, 0.333 + 0.316 + 0.384 - 0.107).
    d.qpos[:] = 0
    mujoco.mj_forward(m, d)
    np.testing.assert_allclose(d.site("ee").xpos, [0.088, 0, 0.926], atol=1e-9)


def test_cartpole_declarations():
    m = _load("cartpole")
    slider, hinge = _joint(m, "slider"), _joint(m, "hinge")
    assert m.jnt_type[slider] == int(mujoco.mjtJoint.mjJNT_SLIDE)
    assert m.jnt_limited[slider] and not m.jnt_limited[hinge]
    np.testing.assert_allclose(m.jnt_range[slider], [-1.8, 1.8])
    assert m.nu == 1 and m.actuator_trnid[0, 0] == slider
    assert m.actuator_ctrlrange[0, 1] >= 10.0
    d = _at_key(m)
    np.testing.assert_allclose(d.qpos, [0, math.pi])
    cart_z = d.body("cart").xpos[2]
    # Home: pole hanging down, tip 1 m below the cart.
    assert d.site("ee").xpos[2] == pytest.approx(cart_z - 1.0)
    # hinge = 0 is upright.
    d.qpos[:] = 0
    mujoco.mj_forward(m, d)
    assert d.site("ee").xpos[2] == pytest.approx(cart_z + 1.0)
