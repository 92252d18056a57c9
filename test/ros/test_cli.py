"""The mbrl-ros command line, as a user runs it (console script in a subprocess)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mbrl_ros.core.types import TransitionBatch

pytestmark = pytest.mark.timeout(120)
EXE = str(Path(sys.executable).parent / "mbrl-ros")


def run(*args, env=None, timeout=100):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("sub", ["", "record", "dataset", "demo", "params"])
def test_help(sub):
    r = run(*([sub] if sub else []), "--help")
    assert r.returncode == 0 and "usage: mbrl-ros" in r.stdout


def test_record_then_dataset(tmp_path, ros_env):
    r = run("record", "--robot", "arm2", "--seconds", "1", "--out", tmp_path / "bags",
            "--episodes", "2", "--no-progress", env=ros_env)
    assert r.returncode == 0, r.stderr
    bag = tmp_path / "bags" / "excitation_0000"
    assert (bag / "metadata.yaml").exists()
    out = tmp_path / "ds.npz"
    r = run("dataset", bag, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "transitions" in r.stdout
    batch = TransitionBatch.load(out)
    assert 96 <= len(batch) <= 100 and batch.nx == 4 and batch.nu == 2
    assert set(batch.episode.tolist()) == {0, 1}

    # A truncated copy is read up to the damage, with a warning naming the file.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    (damaged / mcap.name).write_bytes(data[: int(len(data) * 0.6)])
    r = run("dataset", damaged / mcap.name, "--out", tmp_path / "partial.npz")
    assert r.returncode == 0, r.stderr
    assert mcap.name in r.stderr and "read up to the damage" in r.stderr
    assert 10 < len(TransitionBatch.load(tmp_path / "partial.npz")) < len(batch)


def test_dataset_errors_are_clear(tmp_path):
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not a bag\n" * 100)
    r = run("dataset", garbage, "--out", tmp_path / "x.npz")
    assert r.returncode == 2 and str(garbage) in r.stderr and "Traceback" not in r.stderr
    r = run("dataset", tmp_path / "missing", "--out", tmp_path / "x.npz")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_demo_quick_writes_a_valid_report(tmp_path, ros_env):
    """`mbrl-ros demo --quick` (the main job, default model and planners): the loop runs,
    the planner switch happens, the arm gets close, and the report is complete."""
    out = tmp_path / "demo"
    r = run("demo", "--quick", "--out", out, "--no-progress", env=ros_env, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    its = m["iterations"]
    assert [x["phase"] for x in its] == ["excitation", "control", "control"]
    assert its[0]["interaction_seconds"] < its[1]["interaction_seconds"] \
        < its[2]["interaction_seconds"]
    assert [x["planner"] for x in its[1:]] == ["ilqr", "mppi"]       # switched half way
    assert m["switch"]["iteration"] == 2 and m["switch"]["sim_time"] is not None
    assert all(x["model_version"] == i + 1 for i, x in enumerate(its))
    assert its[-1]["final_distance"] < 0.05                           # metres
    for key in ("learning_curve", "joint_trajectories", "prediction"):
        png = Path(m["plots"][key])
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert (out / "models" / "gp" / "latest").exists()
    assert m["bags"] and Path(m["bags"][0], "metadata.yaml").exists()
