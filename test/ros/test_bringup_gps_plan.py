"""The bring-up plan of kind ``gps`` (gps.launch.py, ``mbrl-ros bringup gps``): guided
policy search through separate node processes. ROS-free checks of the plan: which
processes, with what parameters, in which order the parameter files apply (the user's
``params_file`` last), the trainer as the launch's job, and clear errors for bad
arguments."""
from pathlib import Path

import pytest
import yaml

from mbrl_ros.bringup import (GPS_CONTROL_PERIOD, GPS_MOVE_PLANNER, ARGUMENTS, KINDS,
                              BringupError, plan)

ROOT = Path(__file__).resolve().parents[2]
SHARE = str(ROOT)
CONFIG = ROOT / "config"


def test_gps_is_a_kind_with_its_own_arguments():
    assert "gps" in KINDS
    names = [a.name for a in ARGUMENTS["gps"]]
    for needed in ("robot", "config", "out", "iterations", "resume", "reset", "params_file",
                   "namespace", "log_level", "record", "bag_dir"):
        assert needed in names
    reset = next(a for a in ARGUMENTS["gps"] if a.name == "reset")
    assert reset.choices == ("sim", "move") and reset.default == "sim"


def test_the_processes_and_their_parameters(tmp_path):
    p = plan("gps", {"robot": "arm7", "iterations": "2", "out": str(tmp_path / "o")}, SHARE)
    assert [(q.name, q.executable) for q in p.processes] == [
        ("sim", "sim_node"), ("data_logger", "data_logger"), ("controller", "controller"),
        ("gps_trainer", "gps_trainer")]
    sim, logger, ctrl, trainer = p.processes
    run = yaml.safe_load((CONFIG / "gps_arm7.yaml").read_text())
    # the simulator steps the GPS configuration's control period, in lockstep, paused until
    # the trainer resumes it, without start noise (each sample's start is set exactly)
    assert sim.overrides["publish_rate"] == pytest.approx(1.0 / run["control_period"])
    assert sim.overrides["lockstep"] is True and sim.overrides["start_paused"] is True
    assert sim.overrides["initial_noise"] == 0.0 and sim.overrides["model"] == "arm7"
    # the controller runs the samples (lg_controller) and the policy (gps_policy), one
    # replan per state, and is configured and activated by the launch
    assert ctrl.overrides["planner_plugins"] == ["lg_controller", "gps_policy"]
    assert ctrl.overrides["control_rate"] == sim.overrides["publish_rate"]
    assert ctrl.overrides["plan_mode"] == "sync" and ctrl.overrides["model"] == "mujoco"
    assert ctrl.transitions == ("configure", "activate")
    # one bag episode per sample: the trainer marks them (no simulator episode markers)
    assert logger.overrides["episode_topic"] == ""
    assert logger.overrides["topics"] == ["/joint_states", "/effort_controller/commands"]
    assert logger.overrides["output_dir"] == str(tmp_path / "o" / "bags")
    # the trainer: the shipped run configuration of the robot, the launch's counts, the
    # names of the nodes it drives; its exit ends the launch
    t = trainer.overrides
    assert t["config"] == str(CONFIG / "gps_arm7.yaml") and t["robot"] == "arm7"
    assert t["iterations"] == 2 and t["samples"] == 0 and t["out"] == str(tmp_path / "o")
    assert (t["controller_node"], t["sim_node"], t["logger_node"]) == \
        ("controller", "sim", "data_logger")
    assert t["bag_dir"] == logger.overrides["output_dir"] and t["reset"] == "sim"
    assert trainer.job and not any(q.job for q in p.processes[:-1])
    assert "its exit ends the launch" in p.describe()


def test_reset_move_builds_the_move_planner_and_no_recording(tmp_path):
    p = plan("gps", {"reset": "move", "record": "false", "out": str(tmp_path)}, SHARE)
    assert [q.name for q in p.processes] == ["sim", "controller", "gps_trainer"]
    assert p.process("controller").overrides["planner_plugins"][-1] == GPS_MOVE_PLANNER
    t = p.process("gps_trainer").overrides
    assert t["reset"] == "move" and t["move_planner"] == GPS_MOVE_PLANNER
    assert t["logger_node"] == "" and t["bag_dir"] == ""


def test_parameter_files_apply_in_order_with_the_users_file_last(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("/**/gps_trainer:\n  ros__parameters:\n    move_chunk: 5\n")
    p = plan("gps", {"robot": "arm2", "params_file": str(user)}, SHARE)
    for q in p.processes:
        files = q.parameter_files("OVR")
        assert files == [str(CONFIG / f"{q.name}.yaml"), str(CONFIG / "arm2.yaml"), "OVR",
                         str(user)]
        args = q.ros_arguments("OVR")
        pos = [i for i, a in enumerate(args) if a == "--params-file"]
        assert [args[i + 1] for i in pos] == files
        # the launch's values are keyed as the shipped files, so the user's file wins
        assert list(yaml.safe_load(q.overrides_yaml())) == [f"/**/{q.name}"]


def test_a_user_config_file_and_its_control_period(tmp_path):
    run = tmp_path / "my_gps.yaml"
    run.write_text("robot: arm2\ncontrol_period: 0.02\n")
    p = plan("gps", {"config": str(run)}, SHARE)
    assert p.process("gps_trainer").overrides["config"] == str(run)
    assert p.process("sim").overrides["publish_rate"] == pytest.approx(50.0)
    run.write_text("robot: arm2\n")        # the run configuration's default period
    assert plan("gps", {"config": str(run)}, SHARE).process("sim").overrides[
        "publish_rate"] == pytest.approx(1.0 / GPS_CONTROL_PERIOD)


def test_the_default_control_period_is_the_run_configurations():
    from mbrl_ros.core.algorithms.gps_run import GPSRunConfig
    assert GPS_CONTROL_PERIOD == GPSRunConfig().control_period


def test_a_namespace_moves_every_node_and_topic(tmp_path):
    p = plan("gps", {"namespace": "arm_a", "out": str(tmp_path)}, SHARE)
    assert {q.full_name for q in p.processes} == {
        "/arm_a/sim", "/arm_a/data_logger", "/arm_a/controller", "/arm_a/gps_trainer"}
    assert p.process("data_logger").overrides["topics"] == [
        "/arm_a/joint_states", "/arm_a/effort_controller/commands"]
    # the trainer names the other nodes and topics relative to its namespace
    t = p.process("gps_trainer").overrides
    assert not t["state_topic"].startswith("/") and not t["command_topic"].startswith("/")


@pytest.mark.parametrize("given,message", [
    ({"robot": "cartpole"}, "no shipped GPS configuration for robot 'cartpole'"),
    ({"config": "/nonexistent/gps.yaml"}, "no such file"),
    ({"iterations": "-1"}, "iterations"),
    ({"samples": "two"}, "samples"),
    ({"reset": "teleport"}, "reset"),
    ({"robot": ""}, "robot"),
    ({"bogus": "1"}, "unknown argument"),
])
def test_bad_arguments_are_refused_naming_them(given, message):
    with pytest.raises(BringupError, match=message):
        plan("gps", given, SHARE)


def test_a_config_that_is_not_yaml_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("control_period: [unclosed\n")
    with pytest.raises(BringupError, match="bad.yaml"):
        plan("gps", {"config": str(bad)}, SHARE)
