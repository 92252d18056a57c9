"""Each shipped parameter file starts its node: the node reaches its running state."""
from pathlib import Path

import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

pytestmark = pytest.mark.timeout(90)
CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("robot_file", [None, "arm7.yaml", "cartpole.yaml"])
def test_sim_and_excitation_start_from_config(start_node, probe, robot_file):
    files = [CONFIG / "sim.yaml"] + ([CONFIG / robot_file] if robot_file else [])
    start_node("sim_node", params_file_list=files)
    start_node("excitation", params_file_list=[CONFIG / "excitation.yaml"]
               + ([CONFIG / robot_file] if robot_file else []))
    states = probe.collect(JointState, "/joint_states")
    commands = probe.collect(Float64MultiArray, "/effort_controller/commands")
    probe.spin_until(lambda: len(states) > 5 and len(commands) > 5, 30,
                     "sim publishing and excitation answering")
    expected = {None: 2, "arm7.yaml": 7, "cartpole.yaml": 2}[robot_file]
    assert len(states[-1].name) == expected
    assert len(commands[-1].data) == {None: 2, "arm7.yaml": 7, "cartpole.yaml": 1}[robot_file]


def test_data_logger_starts_from_config(start_node, probe, tmp_path):
    start_node("data_logger", params_file_list=[CONFIG / "data_logger.yaml"],
               params={"output_dir": str(tmp_path)})
    res = probe.call(Trigger, "/data_logger/stop", timeout=30)
    assert res.success and "closed" in res.message
