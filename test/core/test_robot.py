"""RobotDescription reads an MJCF the way MujocoSim does, without a simulator."""
from pathlib import Path

import numpy as np
import pytest

from mbrl_ros.core.control.plausibility import default_limits, robot_limits
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.sim.env import MujocoSim

ARM3 = str(Path(__file__).resolve().parents[1] / "resources" / "arm3.xml")
ROBOTS = ["arm2", "arm7", "cartpole", ARM3]


@pytest.mark.parametrize("name", ROBOTS, ids=lambda n: Path(n).stem)
def test_description_matches_the_simulator(name):
    robot, sim = RobotDescription.load(name), MujocoSim(name)
    assert robot.model_path == sim.model_path
    assert robot.joint_names == sim.joint_names
    assert robot.command_names == sim.command_names
    np.testing.assert_array_equal(robot.command_index, sim.command_index)
    np.testing.assert_array_equal(robot.position_limits, sim.position_limits)
    np.testing.assert_array_equal(robot.continuous, sim.continuous)
    np.testing.assert_array_equal(robot.effort_limits, sim.effort_limits)
    np.testing.assert_array_equal(robot.home_state, sim.state())
    assert robot.has_ee == sim.has_ee
    assert (robot.n_joints, robot.n_commands) == (sim.n_joints, sim.n_commands)
    np.testing.assert_allclose(robot.effective_inertia(), sim.effective_inertia(), rtol=1e-12)
    sim_inertia = _sim_min_inertia(sim)
    np.testing.assert_allclose(robot.min_effective_inertia(), sim_inertia, rtol=1e-12)
    # The plausibility defaults the controller derives from it are the simulator's.
    import mujoco
    linear = np.array([sim.model.joint(j).type[0] == mujoco.mjtJoint.mjJNT_SLIDE
                       for j in sim.joint_names])
    for a, b in zip(robot_limits(robot),
                    default_limits(linear, sim.effort_limits, sim_inertia)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _sim_min_inertia(sim, samples=16, seed=0):
    """Reference: the smallest effective inertia over the same draws, by moving a
    simulator (what the controller did before RobotDescription)."""
    lim = sim.position_limits
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -np.pi)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], np.pi)
    rng = np.random.default_rng(seed)
    inertia = sim.effective_inertia()
    for _ in range(samples):
        sim.set_state(rng.uniform(lo, hi), np.zeros(sim.n_joints))
        inertia = np.minimum(inertia, sim.effective_inertia())
    return inertia


@pytest.mark.parametrize("name", ROBOTS, ids=lambda n: Path(n).stem)
def test_forward_kinematics_matches_the_simulator_at_random_configurations(name):
    robot, sim = RobotDescription.load(name), MujocoSim(name)
    if not sim.has_ee:
        with pytest.raises(ValueError, match="no site named 'ee'"):
            robot.ee_position(robot.home_positions)
        return
    lim = sim.position_limits
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -np.pi)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], np.pi)
    rng = np.random.default_rng(7)
    for _ in range(20):
        q = rng.uniform(lo, hi)
        sim.set_state(q, np.zeros(sim.n_joints))
        np.testing.assert_allclose(robot.ee_position(q), sim.ee_position(), atol=1e-12)
        np.testing.assert_allclose(robot.effective_inertia(q), sim.effective_inertia(),
                                   rtol=1e-10)


def test_description_is_immutable():
    robot = RobotDescription.load("arm2")
    with pytest.raises(ValueError):
        robot.position_limits[0, 0] = 0.0
    with pytest.raises(AttributeError):
        robot.joint_names = ("a",)


def test_bad_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="available models"):
        RobotDescription.load("no_such_robot")
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody><body></mujoco>")
    with pytest.raises(ValueError, match="cannot load MJCF"):
        RobotDescription.load(str(broken))
    robot = RobotDescription.load("arm2")
    with pytest.raises(ValueError, match="expected 2 finite values"):
        robot.ee_position([0.0])
    with pytest.raises(ValueError, match="expected 2 finite values"):
        robot.ee_position([0.0, np.nan])


def test_a_robot_without_keyframe_or_site(tmp_path):
    mjcf = tmp_path / "slider.xml"
    mjcf.write_text("""<mujoco><worldbody><body><joint name="s" type="slide" range="-1 1"/>
        <geom size="0.1" mass="2"/><body><joint name="h" type="hinge"/><geom size="0.1"/>
        </body></body></worldbody>
        <actuator><motor joint="s" ctrlrange="-3 3" gear="2"/></actuator></mujoco>""")
    robot = RobotDescription.load(str(mjcf))
    assert robot.joint_names == ("s", "h") and robot.command_names == ("s",)
    np.testing.assert_array_equal(robot.linear, [True, False])
    np.testing.assert_array_equal(robot.continuous, [False, True])
    np.testing.assert_array_equal(robot.effort_limits, [6.0])
    np.testing.assert_array_equal(robot.home_state, np.zeros(4))
    assert not robot.has_ee and robot.continuous_joints == ("h",)
