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


@pytest.mark.parametrize("sub", ["", "record", "dataset", "demo", "params", "reindex"])
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
    assert mcap.name in r.stderr and "warning: bag damage" in r.stderr and "at byte" in r.stderr
    assert 10 < len(TransitionBatch.load(tmp_path / "partial.npz")) < len(batch)


def test_dataset_errors_are_clear(tmp_path):
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not a bag\n" * 100)
    r = run("dataset", garbage, "--out", tmp_path / "x.npz")
    assert r.returncode == 2 and str(garbage) in r.stderr and "Traceback" not in r.stderr
    r = run("dataset", tmp_path / "missing", "--out", tmp_path / "x.npz")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


# The demo runs in lockstep: its CPU time bounds it, not a wall-clock budget. It takes
# 30 s of CPU (29.2 user + 0.7 sys; 31 s wall at load 1-2, 250 s wall at load 11 with two
# hogs beside it, 11 % of a core); a fresh-clone CI run at load 15-32 passed 280 s. The
# timeout only catches a hang: 900 s is 30 s of CPU at 1/30 of a core.
@pytest.mark.timeout(960)
def test_demo_quick_writes_a_valid_report(tmp_path, ros_env):
    """`mbrl-ros demo --quick` (the main job, default model and planners): the loop runs,
    the planner switch happens, the arm gets close, and the report is complete."""
    out = tmp_path / "demo"
    r = run("demo", "--quick", "--out", out, "--no-progress", env=ros_env, timeout=900)
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


# ------------------------------------------------------------------ bag integrity (issue 11)
def _write_bag(root, n=600, joints=("j1", "j2"), n_values=2, step_back_at=None, chunk_bytes=8_000):
    """A bag like the logger's: states at 100 Hz, a command 2 ms after each; the log clock steps
    back by 1 s at state step_back_at (None: never)."""
    import numpy as np

    from mbrl_ros.core.data import BagWriter, default_typestore
    ts = default_typestore()
    JS, Header, Time = (ts.types[k] for k in ("sensor_msgs/msg/JointState", "std_msgs/msg/Header",
                                              "builtin_interfaces/msg/Time"))
    F64, Layout = (ts.types[k] for k in ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/MultiArrayLayout"))
    t0 = 1_700_000_000 * 10**9
    with BagWriter(root, chunk_bytes=chunk_bytes) as w:
        w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        w.add_topic("/effort_controller/commands", "std_msgs/msg/Float64MultiArray")
        for k in range(n):
            back = 10**9 if step_back_at is not None and k >= step_back_at else 0
            t, stamp = t0 + k * 10**7 - back, 5 * 10**9 + k * 10**7
            p = np.full(len(joints), 0.01 * k)
            w.write("/joint_states", t, JS(header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                                         frame_id=""), name=list(joints), position=p,
                                           velocity=np.ones(len(joints)), effort=np.zeros(0)))
            w.write("/effort_controller/commands", t + 2 * 10**6,
                    F64(layout=Layout(dim=[], data_offset=0), data=0.5 * np.sin(0.1 * k + np.arange(n_values))))
    return w.bag_paths[0]


def test_dataset_reports_every_damaged_chunk(tmp_path):
    bag = _write_bag(tmp_path / "bags")
    mcap = bag / f"{bag.name}.mcap"
    data = bytearray(mcap.read_bytes())
    for where in (0.5, 0.7):                  # 4 KiB of random bytes at 50 % and 70 %
        pos = int(len(data) * where)
        data[pos:pos + 4096] = bytes((i * 97 + 13) % 256 for i in range(4096))
    mcap.write_bytes(bytes(data))
    out = tmp_path / "ds.npz"
    r = run("dataset", bag, "--out", out)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: bag damage")]
    assert len(warnings) >= 2, r.stderr
    for w in warnings:
        assert str(mcap) in w and " at byte " in w and " messages lost" in w and "unknown" not in w
    batch = TransitionBatch.load(out)
    assert batch.meta["bags_complete"] is False
    damage = batch.meta["bag_damage"]
    assert len(damage) == len(warnings)
    assert all(d["file"] == str(mcap) and d["offset"] > 0 and d["messages_lost"] > 0 for d in damage)


def test_dataset_drops_and_counts_a_backwards_clock_step(tmp_path):
    bag = _write_bag(tmp_path / "bags", n=300, step_back_at=150)
    r = run("dataset", bag, "--out", tmp_path / "ds.npz")
    assert r.returncode == 0, r.stderr
    assert "warning: log time stepped back 1 time(s)" in r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("clock_step "))
    assert row.split()[1] == "1" and row.split()[-1] == "1"     # 1 dropped, 1 transition lost
    batch = TransitionBatch.load(tmp_path / "ds.npz")
    assert len(batch) == 298 and batch.meta["clock_steps"] == 1   # 299 candidates - 1
    assert float(batch.dt.max()) < 0.011 and float(batch.dt.min()) > 0.009   # no pair across it


def test_dataset_command_length_mismatch_is_an_error(tmp_path):
    bag = _write_bag(tmp_path / "bags", n=50, n_values=3)         # 3 values for a 2-joint arm
    r = run("dataset", bag, "--out", tmp_path / "ds.npz")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "3 values (all 50 commands)" in r.stderr and "2 joints" in r.stderr
    r = run("dataset", bag, "--out", tmp_path / "ds.npz", "--robot", "arm2")
    assert r.returncode == 2 and "3 values (all 50 commands)" in r.stderr
    assert "2 command joints" in r.stderr
    assert not (tmp_path / "ds.npz").exists()


def test_reindex_errors_are_one_line(tmp_path):
    r = run("reindex", tmp_path / "nothing")
    assert r.returncode == 2 and "no such bag directory" in r.stderr and "Traceback" not in r.stderr


def test_fit_reports_bag_damage(tmp_path):
    bag = _write_bag(tmp_path / "bags", n=400)
    mcap = bag / f"{bag.name}.mcap"
    data = bytearray(mcap.read_bytes())
    pos = len(data) // 2
    data[pos:pos + 4096] = bytes((i * 31 + 7) % 256 for i in range(4096))
    mcap.write_bytes(bytes(data))
    r = run("fit", "--bag", bag, "--model", "linear", "--out", tmp_path / "fit", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "warning: bag damage" in r.stderr and "messages lost" in r.stderr
    rep = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert rep["bags_complete"] is False and rep["bag_damage"]
    assert rep["bag_damage"][0]["file"] == str(mcap) and rep["bag_damage"][0]["messages_lost"] > 0


def test_fit_continuous_joints_option(tmp_path):
    """`mbrl-ros fit --continuous-joints` marks a joint's position periodic in the model (a
    robot without an MJCF here); a name with no position state is a one-line error."""
    from mbrl_ros.core import store

    bag = _write_bag(tmp_path / "bags", n=400)
    r = run("fit", "--bag", bag, "--model", "linear", "--out", tmp_path / "fit",
            "--no-progress", "--continuous-joints", "j2")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "fit" / "report.json").read_text())
    model = store.load(rep["artifact"])
    assert [model.spec.state_names[i] for i in model.spec.periodic] == ["j2/position"]
    assert set(rep["ranges"]) == set(model.spec.state_names + model.spec.action_names)
    r = run("fit", "--bag", bag, "--model", "linear", "--out", tmp_path / "fit2",
            "--no-progress", "--continuous-joints", "wheel")
    assert r.returncode == 2 and "wheel" in r.stderr and "Traceback" not in r.stderr
