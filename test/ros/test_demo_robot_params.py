"""The demo composes a shipped robot's nodes on top of config/<robot>.yaml, as its launch
does: arm7's controller rate limit (a Panda's 1000 N·m/s), focused excitation and live
ensemble size reach the demo's nodes; a user's MJCF has no such file."""
from pathlib import Path

import yaml

from mbrl_ros.ros.demo import ROBOT_DEFAULTS, robot_parameters

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_arm7_demo_takes_the_shipped_robot_file():
    p = robot_parameters("arm7", share=str(CONFIG.parent))
    doc = yaml.safe_load((CONFIG / "arm7.yaml").read_text())
    ctrl = doc["/**/controller"]["ros__parameters"]
    assert p["controller"]["max_effort_rate"] == ctrl["max_effort_rate"] > 500.0
    assert p["controller"]["mppi.refine"] == ctrl["mppi"]["refine"]
    exc = doc["/**/excitation"]["ros__parameters"]["excitation"]
    assert p["excitation"]["excitation.target_margin"] == exc["target_margin"]
    assert p["model_fitter"]["ensemble.hidden_units"] == 64
    # the demo's own arm7 loop uses the file's horizon
    assert ROBOT_DEFAULTS["arm7"]["horizon"] == ctrl["horizon"]
    assert tuple(ROBOT_DEFAULTS["arm7"]["target"]) == tuple(ctrl["target_joint_positions"])


def test_a_user_mjcf_has_no_shipped_parameters(tmp_path):
    assert robot_parameters(str(tmp_path / "my_arm.xml"), share=str(CONFIG.parent)) == {}
    assert robot_parameters("cartpole", share=str(CONFIG.parent))["controller"][
        "ilqr.max_iterations"] == 3
