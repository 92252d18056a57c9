"""record -> bag -> dataset through real nodes (in one process, private domain): every
logged transition must replay exactly through the simulator, which only holds if each
command was paired with the state it acted on."""
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from mbrl_ros.core.data.alignment import AlignmentConfig, bag_to_dataset
from mbrl_ros.ros.compose import record
from mbrl_ros.sim.env import MujocoSim

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("robot", ["arm2", "cartpole"])
def test_recorded_transitions_replay_exactly(tmp_path, robot):
    bags = record(robot, 1.0, tmp_path, rate=100.0, episodes=2, seed=3, progress=False)
    batch, report, bag_report = bag_to_dataset(bags, AlignmentConfig())
    assert bag_report.complete and not bag_report.damage
    assert report.n_episodes == 2
    assert 96 <= len(batch) <= 100, report.table()   # 1 s at 100 Hz, minus the reset
    assert np.allclose(batch.dt, 0.01)
    sim = MujocoSim(robot, control_period=0.01)
    n = sim.n_joints
    assert batch.nx == 2 * n and batch.nu == sim.n_commands
    errors = []
    for x, u, x_next in zip(batch.states, batch.actions, batch.next_states):
        sim.set_state(x[:n], x[n:])
        sim.step(u)
        errors.append(np.abs(sim.state() - x_next).max())
    assert max(errors) < 1e-9, f"misaligned transitions: {np.flatnonzero(np.array(errors) > 1e-9)}"
    # The bag is standard: the mcap library with its ROS 2 decoder reads every message.
    mcap_file = next(bags[0].glob("*.mcap"))
    with open(mcap_file, "rb") as f:
        topics = {ch.topic for _, ch, _, _ in make_reader(
            f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()}
    assert {"/joint_states", "/effort_controller/commands", "/data_logger/episode"} <= topics
