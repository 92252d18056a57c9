"""The bring-up plan (mbrl_ros/bringup.py) that launch files and `mbrl-ros bringup` start:
parameter layering with the user's file last, namespaces, lifecycle, log level, and
argument validation. Pure: no ROS, no processes (test/ros/test_bringup.py runs plans)."""
from pathlib import Path

import pytest
import yaml

from mbrl_ros import bringup
from mbrl_ros.bringup import ARGUMENTS, KINDS, BringupError, plan

ROOT = Path(__file__).resolve().parents[2]
SHARE = str(ROOT)
CONFIG = ROOT / "config"

# Argument sets that together start every process of every kind.
CASES = [
    ("sim", {}),
    ("sim", {"model": "gp", "excite": "true"}),
    ("robot", {}),
    ("robot", {"excite": "true", "model": "mujoco", "record": "false"}),
    ("replay", {}),
    ("replay", {"robot": "arm7", "bags": "bags/run_0000"}),
]


@pytest.fixture
def user_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("/**/controller:\n  ros__parameters:\n    horizon: 20\n")
    return str(f)


@pytest.mark.parametrize("kind,args", CASES)
def test_user_params_file_applies_last_for_every_node(kind, args, user_file):
    p = plan(kind, {**args, "params_file": user_file}, SHARE)
    assert p.processes
    for proc in p.processes:
        files = proc.parameter_files("/tmp/overrides.yaml")
        assert files[0] == str(CONFIG / f"{proc.name}.yaml")
        assert files[-2:] == ["/tmp/overrides.yaml", user_file]
        # rcl applies --params-file in command-line order: the user's comes last there too.
        args_ = proc.ros_arguments("/tmp/overrides.yaml")
        given = [args_[i + 1] for i, a in enumerate(args_) if a == "--params-file"]
        assert given == files
        assert all(Path(f).is_file() for f in proc.params_files)


def test_without_a_user_file_the_launch_values_come_last():
    for proc in plan("sim", {}, SHARE).processes:
        assert proc.parameter_files("o.yaml")[-1] == "o.yaml"


def test_robot_yaml_is_layered_between_node_file_and_launch_values():
    p = plan("sim", {"robot": "arm7"}, SHARE)
    for proc in p.processes:
        assert proc.params_files == (str(CONFIG / f"{proc.name}.yaml"),
                                     str(CONFIG / "arm7.yaml"))


def test_robot_label_from_an_mjcf_path(tmp_path):
    mjcf = tmp_path / "arm7.xml"      # a user's variant of arm7: its shipped yaml applies
    assert plan("robot", {"robot": str(mjcf)}, SHARE).process("controller").params_files[-1] \
        == str(CONFIG / "arm7.yaml")
    own = plan("robot", {"robot": str(tmp_path / "my_arm.xml")}, SHARE).process("controller")
    assert own.params_files == (str(CONFIG / "controller.yaml"),)     # no my_arm.yaml
    assert own.overrides["robot"] == str(tmp_path / "my_arm.xml")


def test_launch_values():
    p = plan("sim", {"robot": "arm7", "planner": "mppi", "bag_dir": "/data/bags"}, SHARE)
    c = p.process("controller").overrides
    assert c["active_planner"] == "mppi" and c["planner_plugins"] == list(bringup.PLANNERS)
    assert c["robot"] == "arm7" and c["model"] == "mujoco" and c["use_sim_time"] is True
    assert p.process("sim").overrides["model"] == "arm7"
    assert p.process("data_logger").overrides["output_dir"] == "/data/bags"
    assert "model_fitter" not in [x.name for x in p.processes]       # mujoco: nothing to fit
    assert "fallback_planner" not in c                 # the known model: no exploration
    learned = plan("sim", {"model": "gp"}, SHARE)
    assert learned.process("controller").overrides["model"] == ""    # wait for the fitter
    # ... exploring meanwhile, and where the model is too uncertain (issue 12)
    lc = learned.process("controller").overrides
    assert lc["planner_plugins"] == [*bringup.PLANNERS, bringup.EXPLORER]
    assert lc["fallback_planner"] == bringup.EXPLORER == "excitation"
    assert lc["active_planner"] == "ilqr"
    robot = plan("robot", {"model": "ensemble"}, SHARE)
    assert robot.process("controller").overrides["fallback_planner"] == bringup.EXPLORER
    # live fits are bounded in time; only the chosen family's keys are given
    assert robot.process("model_fitter").overrides["ensemble.max_seconds"] == 3.0
    assert not any(k.startswith("ensemble.") for k in learned.process("model_fitter").overrides)
    assert learned.process("model_fitter").overrides["action_source"] == "state_effort"
    assert "action_source" not in robot.process("model_fitter").overrides   # measured effort
    assert learned.process("model_fitter").overrides["model"] == "gp"
    robot = plan("robot", {}, SHARE)
    assert "sim" not in [x.name for x in robot.processes]
    assert robot.process("controller").overrides["use_sim_time"] is False


def test_excite_runs_the_excitation_instead_of_the_controller():
    names = [x.name for x in plan("sim", {"excite": "true"}, SHARE).processes]
    assert "excitation" in names and "controller" not in names


def test_activate_false_configures_only():
    assert plan("sim", {}, SHARE).process("controller").transitions == ("configure", "activate")
    assert plan("robot", {"activate": "false"}, SHARE).process("controller").transitions \
        == ("configure",)
    assert all(not p.transitions for p in plan("sim", {}, SHARE).processes
               if p.name != "controller")


def test_log_level_reaches_every_process():
    for kind in KINDS:
        for proc in plan(kind, {"log_level": "debug"}, SHARE).processes:
            a = proc.ros_arguments("o.yaml")
            assert a[a.index("--log-level") + 1] == "debug"


def test_respawn_only_on_the_robot_launch():
    assert all(p.respawn for p in plan("robot", {"respawn": "true"}, SHARE).processes)
    assert not any(p.respawn for p in plan("robot", {}, SHARE).processes)
    with pytest.raises(BringupError, match="respawn"):
        plan("sim", {"respawn": "true"}, SHARE)


def test_namespace_puts_every_node_and_topic_under_it():
    p = plan("sim", {"namespace": "/arm_a/", "model": "gp"}, SHARE)
    for proc in p.processes:
        assert proc.namespace == "arm_a" and proc.full_name == f"/arm_a/{proc.name}"
        a = proc.ros_arguments("o.yaml")
        assert a[:4] == ["-r", f"__node:={proc.name}", "-r", "__ns:=/arm_a"]
        for key, value in proc.overrides.items():   # topic settings: relative names
            if key.endswith("_topic"):
                assert not value.startswith("/"), (proc.name, key, value)
        # /clock: each simulated robot its own (its sim publishes it, its nodes follow it)
        assert ("/clock", "clock") in proc.remappings
    # The logger's topics are the names in the bag: fully qualified.
    assert p.process("data_logger").overrides["topics"] == [
        "/arm_a/joint_states", "/arm_a/effort_controller/commands"]
    # Every node names its topics relative to its namespace: only the clock is remapped.
    assert all(proc.remappings == (("/clock", "clock"),) for proc in p.processes)


def test_no_namespace_leaves_names_as_they_are():
    for proc in plan("robot", {"excite": "true"}, SHARE).processes:
        assert proc.namespace == "" and proc.full_name == f"/{proc.name}"
        assert not any(a.startswith("__ns") for a in proc.ros_arguments("o.yaml"))
    assert plan("robot", {}, SHARE).process("data_logger").overrides["topics"] == [
        "/joint_states", "/effort_controller/commands"]
    # The robot launch has no simulator and so no /clock of its own.
    assert all(("/clock", "clock") not in p.remappings for p in plan("robot", {}, SHARE).processes)


def test_controller_name_moves_the_command_topic():
    p = plan("robot", {"controller_name": "arm_effort", "excite": "true"}, SHARE)
    assert p.process("excitation").overrides["controller_name"] == "arm_effort"
    assert p.process("data_logger").overrides["topics"][1] == "/arm_effort/commands"


@pytest.mark.parametrize("kind,args,needle", [
    ("sim", {"bogus": "1"}, "unknown argument(s) bogus"),
    ("robot", {"use_sim_time": "true"}, "unknown argument(s) use_sim_time"),
    ("robot", {"sim": "true"}, "unknown argument(s) sim"),
    ("sim", {"planner": "bogus"}, "planner:='bogus' is not one of ilqr"),
    ("sim", {"model": "nn"}, "model:='nn' is not one of"),
    ("sim", {"record": "yes"}, "record:='yes' is not one of true, false"),
    ("sim", {"log_level": "loud"}, "log_level"),
    ("sim", {"namespace": "1arm"}, "not a ROS namespace"),
    ("sim", {"namespace": "arm a"}, "not a ROS namespace"),
    ("sim", {"params_file": "/nonexistent/mine.yaml"}, "no such file"),
    ("sim", {"robot": ""}, "robot:= needs"),
    ("replay", {"bags": "[1, 2]"}, "YAML list of paths"),
    ("replay", {"bags": "[unclosed"}, "is not YAML"),
    ("nope", {}, "unknown launch 'nope'"),
])
def test_invalid_arguments_are_refused_by_name(kind, args, needle):
    with pytest.raises(BringupError) as e:
        plan(kind, args, SHARE)
    assert needle in str(e.value)


def test_arguments_are_declared_once_and_only_where_they_apply():
    for kind, args in ARGUMENTS.items():
        names = [a.name for a in args]
        assert len(names) == len(set(names)), kind
        for a in args:
            assert not a.choices or a.default in a.choices, (kind, a.name)
            assert a.description
    assert "use_sim_time" in {a.name for a in ARGUMENTS["sim"]}
    assert not {"use_sim_time", "sim"} & {a.name for a in ARGUMENTS["robot"]}
    assert not {"planner", "activate", "record"} & {a.name for a in ARGUMENTS["replay"]}
    planner = next(a for a in ARGUMENTS["robot"] if a.name == "planner")
    assert set(planner.choices) == set(bringup.PLANNERS)
    assert all(p in planner.description for p in bringup.PLANNERS)


def test_planner_and_model_choices_are_the_registry_entries():
    from mbrl_ros.core import registry
    import mbrl_ros.core.models  # noqa: F401  (registers the providers)
    import mbrl_ros.core.planners  # noqa: F401
    assert set(bringup.MODEL_FAMILIES) == set(registry.available("model"))
    # gps_policy and lg_controller need a trained artifact: added by the user's params
    # file (or the GPS driver).
    assert set(bringup.PLANNERS) | {bringup.EXPLORER} == \
        set(registry.available("planner")) - set(registry.names("planner", "trained"))


def test_overrides_file_round_trips_every_value():
    proc = plan("sim", {"model": "gp", "namespace": "arm_a"}, SHARE).process("controller")
    doc = yaml.safe_load(proc.overrides_yaml())
    # The shipped files' key (rcl applies keys in first-seen order: see overrides_yaml).
    assert doc == {"/**/controller": {"ros__parameters": dict(proc.overrides)}}
    assert doc["/**/controller"]["ros__parameters"]["model"] == ""     # '' stays a string
    on = plan("robot", {"planner": "ilqr", "bag_dir": "on"}, SHARE).process("data_logger")
    assert yaml.safe_load(on.overrides_yaml())["/**/data_logger"]["ros__parameters"][
        "output_dir"] == "on"


@pytest.mark.parametrize("kind,args", CASES)
def test_every_parameter_file_keys_the_node_alike(kind, args):
    # One key per node across the layers, so that a later file overwrites an earlier one.
    from mbrl_ros.cli import node_key
    for proc in plan(kind, args, SHARE).processes:
        assert list(yaml.safe_load(proc.overrides_yaml())) == [node_key(proc.name)]
        for f in proc.params_files:
            keys = list(yaml.safe_load(Path(f).read_text()))
            assert all(k == node_key(k.split("/")[-1]) for k in keys), (f, keys)
        assert node_key(proc.name) in yaml.safe_load(Path(proc.params_files[0]).read_text())


def test_replay_fits_the_bags_once():
    p = plan("replay", {"bags": "['a', 'b']", "model": "gp", "namespace": "lab"}, SHARE)
    (fitter,) = p.processes
    assert fitter.name == "model_fitter" and fitter.full_name == "/lab/model_fitter"
    assert fitter.overrides["bags"] == ["a", "b"] and fitter.overrides["live"] is False
    assert fitter.overrides["fit_on_start"] is True and not fitter.transitions
    # Bag topic names are what was recorded: left to the node's settings / params_file.
    assert not any(k.endswith("_topic") for k in fitter.overrides)


def test_parse_assignments():
    assert bringup.parse_assignments(["robot:=arm7", "bags:=['a:=b']"]) == {
        "robot": "arm7", "bags": "['a:=b']"}
    with pytest.raises(BringupError, match="name:=value"):
        bringup.parse_assignments(["robot=arm7"])


def test_dry_run_prints_the_command_lines(capsys):
    from mbrl_ros.cli import main
    assert main(["bringup", "--dry-run", "sim", "namespace:=arm_a", "activate:=false"]) == 0
    out = capsys.readouterr().out
    assert "controller --ros-args -r __node:=controller -r __ns:=/arm_a" in out
    assert "# then configure\n" in out
    assert main(["bringup", "sim", "--show-args"]) == 0
    assert "'activate':" in capsys.readouterr().out
    assert main(["bringup", "sim", "planner:=bogus"]) == 2
    assert "planner:='bogus'" in capsys.readouterr().err


def test_file_parameters_merge_files_in_order_sections_key_by_key(tmp_path):
    from mbrl_ros.bringup import file_parameters
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("/**/controller:\n  ros__parameters:\n    horizon: 30\n    plan_rate: 50.0\n"
                 "    ilqr:\n      max_iterations: 3\n      box_qp: true\n"
                 "/**/sim:\n  ros__parameters:\n    lockstep: true\n")
    b.write_text("/**/controller:\n  ros__parameters:\n    plan_rate: 100.0\n"
                 "    ilqr:\n      max_iterations: 1\n")
    assert file_parameters([a, b], "controller") == {
        "horizon": 30, "plan_rate": 100.0, "ilqr": {"max_iterations": 1, "box_qp": True}}
    assert file_parameters([b], "sim") == {}
    assert file_parameters([a, b], "sim") == {"lockstep": True}
