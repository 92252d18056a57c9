"""Launch-file wiring, checked without the launch framework (not installable here):
every executable a launch file starts is an installed console script of this package,
every config file it names exists (and is checked against the node's schema by
test_config_files.py and started by test/ros/test_config_start.py), every launch argument
it reads is declared, and the files install to share/mbrl_ros/launch."""
import ast
import importlib.metadata as md
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = sorted((ROOT / "launch").glob("*.launch.py"))


def _calls(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or \
                    (isinstance(f, ast.Attribute) and f.attr == name):
                yield node


def _kw(call, key):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def _strings(node):
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_the_three_launch_files_exist():
    assert {p.name for p in LAUNCH} == {"sim.launch.py", "robot.launch.py", "replay.launch.py"}


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_executables_are_console_scripts(path):
    scripts = {e.name for e in md.entry_points(group="console_scripts")
               if e.value.startswith("mbrl_ros.")}
    tree = ast.parse(path.read_text())
    started = set()
    for cls in ("Node", "LifecycleNode"):
        for call in _calls(tree, cls):
            assert isinstance(_kw(call, "package"), ast.Constant) and \
                _kw(call, "package").value == "mbrl_ros"
            exe = _kw(call, "executable")
            assert isinstance(exe, ast.Constant), f"{path.name}: executable must be a literal"
            started.add(exe.value)
    if not started:      # robot.launch.py includes sim.launch.py with sim:=false
        assert "sim.launch.py" in _strings(tree), f"{path.name} starts no node"
        return
    assert started <= scripts, f"{path.name}: not installed: {started - scripts}"


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_named_config_files_exist(path):
    # Whole literal names only (f-string parts such as f"{robot}.yaml" are per-robot files,
    # checked for the shipped robots below).
    names = {s for s in _strings(ast.parse(path.read_text()))
             if s.endswith(".yaml") and not s.startswith(".")}
    for name in names:
        assert (ROOT / "config" / name).exists(), f"{path.name} names missing config/{name}"


def test_every_shipped_robot_has_its_config_file():
    from mbrl_ros.sim.models import available_models
    for robot in available_models():
        assert (ROOT / "config" / f"{robot}.yaml").exists(), robot


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_arguments_read_are_declared(path):
    tree = ast.parse(path.read_text())
    declared = set()
    for node in ast.walk(tree):       # ARGS = [("name", default, help), ...]
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGS"
                                                for t in node.targets):
            declared |= {elt.elts[0].value for elt in node.value.elts}
    read = set()
    for call in _calls(tree, "LaunchConfiguration"):
        if call.args and isinstance(call.args[0], ast.Constant):
            read.add(call.args[0].value)
    for call in _calls(tree, "get"):          # get("name") inside OpaqueFunction
        if call.args and isinstance(call.args[0], ast.Constant):
            read.add(call.args[0].value)
    assert read <= declared, f"{path.name}: undeclared arguments {read - declared}"


def test_robot_launch_forwards_only_arguments_sim_launch_declares():
    sim = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    robot = ast.parse((ROOT / "launch" / "robot.launch.py").read_text())

    def args_of(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGS"
                                                    for t in node.targets):
                return {elt.elts[0].value for elt in node.value.elts}
    assert args_of(robot) | {"sim", "use_sim_time"} <= args_of(sim)


def test_setup_installs_launch_config_and_assets():
    text = (ROOT / "setup.py").read_text()
    for needle in ('"launch/*.launch.py"', '"config/*.yaml"', "sim/assets/*.xml",
                   "resource_index/packages"):
        assert needle in text
