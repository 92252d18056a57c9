"""`mbrl-ros demo` on a user's robot and when a run ends early (console script in a
subprocess, as a user runs it). The default demo on the shipped arm is in test_cli.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.ros.demo import default_target
from proc_util import ctrl_c_when

EXE = str(Path(sys.executable).parent / "mbrl-ros")
ARM3 = Path(__file__).resolve().parents[1] / "resources" / "arm3.xml"


def test_default_target_is_reachable_and_away_from_home():
    robot = RobotDescription.load(str(ARM3))
    target = default_target(robot)
    lo, hi = robot.position_limits.T
    assert target.shape == (3,)
    assert np.all(target > lo) and np.all(target < hi)
    assert np.min(np.abs(target - robot.home_positions)) >= 0.4      # every joint moves
    away = robot.ee_position(target)
    assert np.linalg.norm(away - robot.ee_position(np.zeros(3))) > 0.1       # metres
    assert robot.ee_distance(target, np.zeros(3)) == pytest.approx(
        np.linalg.norm(away - robot.ee_position(np.zeros(3))))


def test_demo_rejects_a_bad_robot_or_target_in_one_line(tmp_path):
    r = subprocess.run([EXE, "demo", "--robot", str(tmp_path / "nope.xml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.xml" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([EXE, "demo", "--robot", str(ARM3), "--target", "0.1 0.2",
                        "--out", str(tmp_path / "o"), "--no-progress"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs 3 finite joint positions" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_demo_learns_a_user_mjcf(tmp_path, ros_env):
    """A user's 3-link arm (not shipped) through the whole loop: excitation, a GP, iLQR
    episodes toward the default target. Lockstep and synchronous planning: the result does
    not depend on the machine's load."""
    out = tmp_path / "demo"
    r = subprocess.run([EXE, "demo", "--robot", str(ARM3), "--iterations", "4",
                        "--switch-to", "", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=290, env=ros_env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["error"] is None
    assert len(m["target"]) == 3
    its = m["iterations"]
    assert [x["phase"] for x in its] == ["excitation"] + ["control"] * 3
    assert its[-1]["final_distance"] < 0.02                       # metres
    assert Path(m["plots"]["joint_trajectories"]).exists()


@pytest.mark.timeout(200)
def test_ctrl_c_still_writes_the_report_for_the_iterations_done(tmp_path, ros_env):
    out = tmp_path / "demo"
    # The first model is published once iteration 0 (excitation + fit) is done.
    code, _, stderr = ctrl_c_when(
        [EXE, "demo", "--quick", "--out", str(out), "--no-progress"],
        lambda: (out / "models" / "gp" / "v0001").exists(), ros_env, wait=150)
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "stopped early: interrupted" in stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["error"] == "interrupted (Ctrl-C)"
    assert m["iterations"] and m["iterations"][0]["phase"] == "excitation"
    assert Path(m["plots"]["learning_curve"]).exists()
    assert m["bags"] and (Path(m["bags"][0]) / "metadata.yaml").exists()
