"""MujocoSim: stepping, command safety, limits, determinism and physical sanity."""
import math

import mujoco
import numpy as np
import pytest

from mbrl_ros.sim.env import CommandError, MujocoSim, Randomization

SHIPPED = ["arm2", "arm7", "cartpole"]


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


# ---------------------------------------------------------------- stepping


@pytest.mark.parametrize("name", SHIPPED)
def test_steps_from_home_with_zero_and_random_efforts(name):
    sim = MujocoSim(name)
    rng = np.random.default_rng(3)
    for _ in range(100):
        sim.step(np.zeros(sim.n_commands))
        assert np.isfinite(sim.state()).all()
    for _ in range(100):
        effort = rng.uniform(-sim.effort_limits, sim.effort_limits)
        sim.step(effort)
        assert np.isfinite(sim.state()).all()
        np.testing.assert_allclose(sim.efforts()[sim.command_index], effort, rtol=1e-12)
    assert sim.time == pytest.approx(200 * 0.01)


@pytest.mark.parametrize("name", SHIPPED)
def test_properties_shapes(name):
    sim = MujocoSim(name)
    n, c = sim.n_joints, sim.n_commands
    assert sim.positions().shape == (n,) and sim.velocities().shape == (n,)
    assert sim.efforts().shape == (n,) and sim.state().shape == (2 * n,)
    assert sim.position_limits.shape == (n, 2) and sim.effort_limits.shape == (c,)
    assert sim.ee_position().shape == (3,)
    assert sim.timestep == pytest.approx(0.002) and sim.n_substeps == 5
    assert sim.model_path.name == f"{name}.xml"
    assert isinstance(sim.model, mujoco.MjModel) and isinstance(sim.data, mujoco.MjData)


def test_default_joints_limits_and_home():
    arm7 = MujocoSim("arm7")
    assert arm7.joint_names == tuple(f"joint{i}" for i in range(1, 8))
    assert arm7.command_names == arm7.joint_names
    np.testing.assert_allclose(arm7.effort_limits, [87, 87, 87, 87, 12, 12, 12])
    np.testing.assert_allclose(arm7.positions(), [0, -0.785, 0, -2.356, 0, 1.571, 0.785])

    cart = MujocoSim("cartpole")
    assert cart.joint_names == ("slider", "hinge")
    assert cart.command_names == ("slider",)
    np.testing.assert_array_equal(cart.command_index, [0])
    np.testing.assert_allclose(cart.position_limits, [[-1.8, 1.8], [-np.inf, np.inf]])
    np.testing.assert_allclose(cart.positions(), [0, math.pi])

    arm2 = MujocoSim("arm2")
    np.testing.assert_allclose(arm2.ee_position(), [0.55, 0, 0], atol=1e-12)


def test_joint_subset_and_order():
    sim = MujocoSim("arm7", joints=["joint2", "joint1"], command_joints=["joint1"])
    assert sim.joint_names == ("joint2", "joint1")
    assert sim.command_names == ("joint1",)
    np.testing.assert_array_equal(sim.command_index, [1])
    np.testing.assert_allclose(sim.positions(), [-0.785, 0.0])
    sim.step([5.0])
    np.testing.assert_allclose(sim.efforts(), [0.0, 5.0])
    default_cmd = MujocoSim("arm7", joints=["joint7", "joint3"])
    assert default_cmd.command_names == ("joint7", "joint3")


def test_time_episode_and_zero_order_hold():
    sim = MujocoSim("arm2", control_period=0.02)
    assert sim.time == 0.0 and sim.episode == 0 and sim.n_substeps == 10
    sim.step([1.0, -0.5])
    sim.step()  # holds the last effort
    np.testing.assert_allclose(sim.efforts(), [1.0, -0.5])
    np.testing.assert_allclose(sim.held_command(), [1.0, -0.5])
    assert sim.time == pytest.approx(0.04)
    assert sim.data.time == pytest.approx(0.04)
    sim.reset()
    assert sim.episode == 1
    assert sim.time == pytest.approx(0.04)  # simulated clock keeps running
    np.testing.assert_array_equal(sim.held_command(), [0.0, 0.0])
    np.testing.assert_array_equal(sim.efforts(), [0.0, 0.0])
    np.testing.assert_array_equal(sim.positions(), [0.0, 0.0])
    sim.step()
    np.testing.assert_array_equal(sim.efforts(), [0.0, 0.0])
    sim.reset(positions=[0.3, -0.2], velocities=[0.1, 0.0])
    assert sim.episode == 2
    np.testing.assert_allclose(sim.state(), [0.3, -0.2, 0.1, 0.0])


def test_timestep_override():
    sim = MujocoSim("arm2", control_period=0.01, timestep=0.001)
    assert sim.timestep == 0.001 and sim.n_substeps == 10
    assert sim.model.opt.timestep == 0.001


def test_initial_state_and_set_state():
    sim = MujocoSim("arm2", initial_positions=[0.5, -0.5], initial_velocities=[1.0, 0.0])
    np.testing.assert_allclose(sim.state(), [0.5, -0.5, 1.0, 0.0])
    sim.step()
    sim.reset()
    np.testing.assert_allclose(sim.state(), [0.5, -0.5, 1.0, 0.0])
    sim.set_state([0.1, 0.2], [0.0, -1.0])
    np.testing.assert_allclose(sim.state(), [0.1, 0.2, 0.0, -1.0])
    with pytest.raises(ValueError, match="expected 2"):
        sim.set_state([0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        sim.set_state([0.1, np.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="inf"):
        sim.set_state([0.1, 0.0], [np.inf, 0.0])
    with pytest.raises(ValueError, match="expected 2"):
        MujocoSim("arm2", initial_positions=[0.0, 0.0, 0.0])


def test_initial_noise_is_clipped_into_limits():
    sim = MujocoSim("arm7", initial_noise=3.0, seed=1)
    lim = sim.position_limits
    for _ in range(5):
        q = sim.positions()
        assert (q >= lim[:, 0]).all() and (q <= lim[:, 1]).all()
        sim.reset()


# ---------------------------------------------------------------- command safety


def test_sanitize_clamps_and_flags():
    sim = MujocoSim("arm7")
    inside = np.array([10.0, -20.0, 0.0, 86.9, 11.9, -11.9, 0.0])
    out, clamped = sim.sanitize_command(inside)
    assert not clamped
    np.testing.assert_array_equal(out, inside)
    assert out is not inside

    above = np.array([100.0, -200.0, 0.0, 0.0, 13.0, -1e9, 5.0])
    out, clamped = sim.sanitize_command(above)
    assert clamped
    np.testing.assert_array_equal(out, [87.0, -87.0, 0.0, 0.0, 12.0, -12.0, 5.0])
    assert above[0] == 100.0  # the input is not modified


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_commands_are_refused(bad):
    sim = MujocoSim("arm2")
    with pytest.raises(CommandError, match="elbow"):
        sim.sanitize_command([0.0, bad])
    sim.step([1.0, 1.0])
    before = sim.state()
    with pytest.raises(CommandError):
        sim.step([bad, 0.0])
    # The refused command was not applied: no time passed, the held effort is unchanged.
    np.testing.assert_array_equal(sim.state(), before)
    np.testing.assert_array_equal(sim.held_command(), [1.0, 1.0])
    assert sim.time == pytest.approx(0.01)
    sim.step()
    assert np.isfinite(sim.data.qfrc_actuator).all()
    assert np.isfinite(sim.data.ctrl).all()
    np.testing.assert_allclose(sim.efforts(), [1.0, 1.0])


def test_wrong_length_commands_are_refused():
    sim = MujocoSim("arm7")
    assert issubclass(CommandError, ValueError)
    with pytest.raises(CommandError) as info:
        sim.sanitize_command([0.0, 0.0, 0.0])
    message = str(info.value)
    assert "expected 7" in message and "got 3" in message and "joint7" in message
    with pytest.raises(CommandError):
        sim.step(np.zeros(8))
    with pytest.raises(CommandError):
        sim.step(np.zeros((7, 1)))
    with pytest.raises(CommandError):
        sim.sanitize_command(["a"] * 7)


def test_step_with_unsanitized_overlimit_is_still_clamped_by_mujoco():
    sim = MujocoSim("arm2")
    sim.step([100.0, -100.0])
    np.testing.assert_allclose(sim.efforts(), [3.0, -3.0])


# ---------------------------------------------------------------- joint limits


@pytest.mark.parametrize(
    "pattern",
    [
        lambda k: np.array([1.0, 1.0]),
        lambda k: np.array([-1.0, -1.0]),
        lambda k: np.array([1.0, -1.0]) * (1 if (k // 30) % 2 else -1),
    ],
    ids=["positive", "negative", "bang-bang"],
)
def test_arm2_max_torque_respects_joint_limits(pattern):
    sim = MujocoSim("arm2")
    lim = sim.position_limits
    lo, hi = lim[:, 0] - 0.05, lim[:, 1] + 0.05
    reached = np.zeros(2, dtype=bool)
    for k in range(200):  # 2 s of simulated time
        sim.step(pattern(k) * sim.effort_limits)
        q = sim.positions()
        assert (q >= lo).all() and (q <= hi).all(), f"t={sim.time:.2f}: q={q} outside {lim}"
        reached |= (q <= lim[:, 0] + 0.01) | (q >= lim[:, 1] - 0.01)
    # The test is meaningful only if the stops were actually hit.
    assert reached.all()


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("period", [0.015, 0.003])
def test_control_period_must_be_a_multiple_of_a_forced_timestep(period):
    with pytest.raises(ValueError, match="control_period"):
        MujocoSim("arm2", control_period=period, timestep=0.002)


@pytest.mark.parametrize("period", [0.0, -0.01, math.nan])
def test_control_period_must_be_positive(period):
    with pytest.raises(ValueError, match="control_period"):
        MujocoSim("arm2", control_period=period)


@pytest.mark.parametrize("period,n_sub", [(0.005, 3), (0.003, 2), (0.01, 5), (0.001, 1)])
def test_timestep_adapts_to_the_control_period_when_not_forced(period, n_sub):
    sim = MujocoSim("arm2", control_period=period)
    assert sim.n_substeps == n_sub
    assert sim.timestep <= 0.002 + 1e-12
    assert sim.n_substeps * sim.timestep == pytest.approx(period, rel=1e-12)
    t0 = sim.time
    sim.step(np.zeros(2))
    assert sim.time - t0 == pytest.approx(period, rel=1e-9)


def test_control_period_error_names_both_numbers():
    with pytest.raises(ValueError) as info:
        MujocoSim("arm2", control_period=0.015, timestep=0.002)
    assert "0.015" in str(info.value) and "0.002" in str(info.value)


def test_unknown_joint_lists_valid_names():
    with pytest.raises(ValueError) as info:
        MujocoSim("arm2", joints=["shoulder", "wrist"])
    message = str(info.value)
    assert "wrist" in message and "shoulder" in message and "elbow" in message


def test_command_joint_without_actuator_is_rejected():
    with pytest.raises(ValueError, match="hinge"):
        MujocoSim("cartpole", command_joints=["hinge"])
    with pytest.raises(ValueError, match="joint3"):
        MujocoSim("arm7", joints=["joint1", "joint2"], command_joints=["joint3"])


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="arm7"):
        MujocoSim("nope")


def test_randomization_validation():
    with pytest.raises(ValueError):
        Randomization(mass=1.0)
    with pytest.raises(ValueError):
        Randomization(damping=-0.1)
    with pytest.raises(ValueError):
        Randomization(friction=math.inf)


def test_custom_model_without_home_limits_or_ee(tmp_path):
    xml = tmp_path / "pendulum.xml"
    xml.write_text(
        """<mujoco><worldbody><body><joint name="swing" axis="0 1 0" damping="0.01"/>
        <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.02" mass="0.5"/></body></worldbody>
        <actuator><motor joint="swing" gear="2"/></actuator></mujoco>"""
    )
    sim = MujocoSim(str(xml))
    assert sim.joint_names == ("swing",) and sim.command_names == ("swing",)
    np.testing.assert_array_equal(sim.positions(), [0.0])
    assert sim.effort_limits[0] == np.inf
    assert sim.position_limits.tolist() == [[-np.inf, np.inf]]
    assert not sim.has_ee
    with pytest.raises(ValueError, match="ee"):
        sim.ee_position()
    # gear 2: the joint effort is what was commanded, not the raw ctrl.
    sim.step([1.0])
    np.testing.assert_allclose(sim.efforts(), [1.0])
    assert sim.data.ctrl[0] == pytest.approx(0.5)


# ---------------------------------------------------------------- determinism & randomisation


def _rollout(seed: int) -> np.ndarray:
    sim = MujocoSim(
        "arm7",
        seed=seed,
        initial_noise=0.05,
        randomization=Randomization(mass=0.2, damping=0.5, friction=0.3),
    )
    rng = np.random.default_rng(123)
    states = []
    for episode in range(2):
        for _ in range(50):
            sim.step(rng.uniform(-sim.effort_limits, sim.effort_limits))
            states.append(sim.state())
        sim.reset()
        states.append(sim.state())
    return np.array(states)


def test_same_seed_is_bit_identical_and_other_seed_differs():
    a, b, c = _rollout(7), _rollout(7), _rollout(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_randomization_resamples_within_bounds_and_off_keeps_nominal():
    nominal = MujocoSim("arm7")
    mass0 = nominal.model.body_mass.copy()
    damping0 = nominal.model.dof_damping.copy()
    friction0 = nominal.model.dof_frictionloss.copy()

    sim = MujocoSim("arm7", randomization=Randomization(mass=0.2, damping=0.5, friction=0.3))
    seen = []
    for _ in range(3):
        ratio = sim.model.body_mass[1:] / mass0[1:]
        assert (ratio >= 0.8 - 1e-12).all() and (ratio <= 1.2 + 1e-12).all()
        d_ratio = sim.model.dof_damping / damping0
        assert (d_ratio >= 0.5 - 1e-12).all() and (d_ratio <= 1.5 + 1e-12).all()
        extra = sim.model.dof_frictionloss - friction0
        assert (extra >= 0).all() and (extra <= 0.3).all()
        seen.append(sim.model.body_mass.copy())
        sim.reset()
    assert not np.array_equal(seen[0], seen[1])

    nominal.reset()
    np.testing.assert_array_equal(nominal.model.body_mass, mass0)
    np.testing.assert_array_equal(nominal.model.dof_damping, damping0)


# ---------------------------------------------------------------- physics sanity


def test_arm7_falls_under_gravity_but_arm2_stays():
    arm7 = MujocoSim("arm7")
    q0 = arm7.positions()
    for _ in range(50):
        arm7.step()
    assert np.max(np.abs(arm7.positions() - q0)) > 0.1

    arm2 = MujocoSim("arm2", initial_positions=[0.7, -1.1])
    q0 = arm2.positions()
    for _ in range(50):
        arm2.step()
    np.testing.assert_allclose(arm2.positions(), q0, atol=1e-9)


def test_cartpole_energy_pumping_swings_up_within_10s():
    sim = MujocoSim("cartpole")
    m = sim.model
    pole = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "pole")
    mass = m.body_mass[pole]
    com = np.linalg.norm(m.body_ipos[pole])
    inertia = m.body_inertia[pole][1] + mass * com**2  # about the hinge (axis y)
    g = -m.opt.gravity[2]
    f_max = sim.effort_limits[0]
    best = math.inf
    for _ in range(1000):  # 10 s
        x, theta, xd, thetad = sim.state()
        # Pole energy relative to upright-at-rest; pushing the cart against
        # thetad*cos(theta) pumps energy in while it is below that level.
        energy = 0.5 * inertia * thetad**2 + mass * g * com * (math.cos(theta) - 1.0)
        pump = energy * thetad * math.cos(theta)
        push = f_max * (math.copysign(1.0, pump) if pump != 0.0 else 1.0) if energy < 0 else 0.0
        force, _ = sim.sanitize_command([push - 3.0 * x - 3.0 * xd])
        sim.step(force)
        best = min(best, abs(_wrap(sim.positions()[1])))
        if best < 0.3:
            break
    assert best < 0.3, f"pole never came within 0.3 rad of upright (best {best:.2f} rad)"
    assert abs(sim.positions()[0]) < 1.8
