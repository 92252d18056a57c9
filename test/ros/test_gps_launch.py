"""``mbrl-ros bringup gps`` (what gps.launch.py starts): guided policy search with the
nodes as separate processes -- the lockstep simulator, the controller executing every
sample, the data logger and the gps_trainer -- run as a user would, over real DDS.

The lockstep simulation is deterministic and the commands cross DDS as float64, so the
iteration through the processes equals the in-process one exactly (samples, costs, KL,
policy and held-out distances), not within a tolerance."""
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, NodeProcess

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
T = 12
DONE = 200       # s for a run to end (~25 s at load 10; a slow CI machine)


def _config(tmp_path, **changes) -> Path:
    """The shipped arm2 run configuration with a shorter S-step (a faster test)."""
    run = yaml.safe_load((ROOT / "config" / "gps_arm2.yaml").read_text())
    run["policy"]["iterations"] = 60
    run.update(changes)
    path = tmp_path / "gps_test.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _bringup(ros_env, tmp_path, *args: str) -> tuple[int, str]:
    p = NodeProcess([str(BIN / "mbrl-ros"), "bringup", "gps", *args], ros_env,
                    tmp_path / "bringup.log")
    try:
        code = p.wait(timeout=DONE)
        log = p.output()
    finally:
        log = p.output()
        p.stop()
        for pid in re.findall(r"pid (\d+)\)", log):   # nodes a failed run left behind
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return code, log


def _episodes(index: dict) -> dict[int, dict[str, list]]:
    """Bag contents by episode marker: {marker: {'X': states, 'U': commands}}."""
    from mbrl_ros.core.data import read_bag
    msgs, rep = read_bag(index["bags"], topics=[
        "/joint_states", "/effort_controller/commands", "/data_logger/episode"])
    assert rep.complete
    out: dict[int, dict[str, list]] = {}
    episode = None
    # in log-time order (read_bag's, and what dataset conversion splits episodes by): a
    # marker's log time is when the logger wrote it, a message's when it arrived, so a state
    # that arrived before a marker belongs before it even if it was written after it
    for m in msgs:
        if m.topic == "/data_logger/episode":
            episode = int(m.msg.data)
            out[episode] = {"X": [], "U": []}
        elif m.topic == "/joint_states":
            assert episode is not None, "a state before the first episode marker"
            out[episode]["X"].append(np.r_[np.asarray(m.msg.position),
                                           np.asarray(m.msg.velocity)])
        elif episode is not None:
            out[episode]["U"].append(np.asarray(m.msg.data))
    return out


def _task(cfg):
    from mbrl_ros.core.algorithms.sim_env import reach_task
    return reach_task(cfg.robot, conditions=cfg.conditions, horizon=cfg.horizon,
                      control_period=cfg.control_period, seed=cfg.seed, starts=cfg.starts,
                      targets=cfg.targets, cost=cfg.cost)


def test_bringup_gps_runs_an_iteration_equal_to_the_in_process_one(ros_env, tmp_path):
    import dataclasses

    from mbrl_ros.core.algorithms.gps_run import load_config, run_gps

    run = _config(tmp_path)
    out = tmp_path / "nodes_run"
    code, log = _bringup(ros_env, tmp_path, "robot:=arm2", f"config:={run}", "iterations:=1",
                         "conditions:=2", "samples:=2", f"horizon:={T}", f"out:={out}")
    assert code == 0, log
    assert "/gps_trainer (gps_trainer) finished" in log and "error" not in log.lower(), log
    nodes = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in nodes["iterations"]] == [1]
    assert (out / "gps.png").is_file() and (out / "gps_policy" / "latest").exists()

    # the in-process run of the same configuration and seed
    cfg = dataclasses.replace(load_config(run, iterations=1, conditions=2, samples=2,
                                          horizon=T), out=tmp_path / "in_process",
                              progress=False).resolved()
    ref = run_gps(cfg)
    (a,), (b,) = ref["iterations"], nodes["iterations"]
    assert b["policy_heldout_distance_m"] and len(b["policy_heldout_distance_m"]) == 4
    for key in a:
        if key not in ("timings", "artifact_version"):
            assert b[key] == a[key], key

    # every sample is an episode of the bag, in order, and gives the reported distances
    index = json.loads((out / "bags" / "gps_episodes.json").read_text())
    eps = index["episodes"]
    train = [e for e in eps if e["noisy"]]
    assert len(train) == 2 * 2 and all(e["discarded"] is None for e in train)
    # after the S-step the policy ran once per training and held-out condition, also here
    assert sum(1 for e in eps if not e["noisy"] and "set" not in e) == 2
    assert sum(1 for e in eps if e.get("set") == "heldout") == 4
    bag = _episodes(index)
    # the other episodes: after each sample ('idle': the answer to its last state, holds
    # of a controller left idle) and one throw-away step that wakes the controller after a
    # long pause (the S-step), before the next sample
    others = index["other_episodes"]
    assert {o["kind"] for o in others} <= {"wake", "idle"}
    assert [o["episode"] for o in others if o["kind"] == "idle"] == \
        [e["episode"] + 1 for e in eps]
    assert sorted(bag) == sorted([e["episode"] for e in eps] + [o["episode"] for o in others])
    task = _task(cfg)
    finals: dict[int, list] = {0: [], 1: []}
    for e in train:
        X, U = np.array(bag[e["episode"]]["X"]), np.array(bag[e["episode"]]["U"])
        # the answer to x_T (not applied) crosses the next marker on another writer: it
        # may land on either side of it
        assert X.shape == (T + 1, 4) and T <= len(U) <= T + 1
        m = e["condition"]
        np.testing.assert_array_equal(X[0], np.r_[cfg.starts[m], np.zeros(2)])
        finals[m].append(task.ee_distance(X[-1], m))
    assert [float(np.mean(finals[m])) for m in (0, 1)] == pytest.approx(
        b["final_distance_m"], rel=1e-12)


def test_reset_by_a_move_of_the_controller(ros_env, tmp_path):
    """``reset:=move`` (a real arm has no set_state): the controller's iLQR drives the arm
    to each sample's start and the sample starts where it settled; every move is a bag
    episode of its own."""
    run = _config(tmp_path, train=[{"start": [0.4, 0.3], "target": [0.5, 0.6]}], heldout=[])
    out = tmp_path / "moved"
    code, log = _bringup(ros_env, tmp_path, "robot:=arm2", f"config:={run}", "iterations:=1",
                         "samples:=2", f"horizon:={T}", "reset:=move", f"out:={out}")
    assert code == 0, log
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in metrics["iterations"]] == [1]
    index = json.loads((out / "bags" / "gps_episodes.json").read_text())
    eps = index["episodes"]
    assert [e["noisy"] for e in eps] == [True, True, False]
    bag = _episodes(index)
    # before each sample: a move episode (the marker before the sample's)
    moves = {o["episode"] for o in index["other_episodes"] if o["kind"] == "move"}
    assert all(e["episode"] - 1 in moves for e in eps)
    tol, vel = 0.01, 0.05                   # gps_trainer's settle_tolerance, settle_velocity
    for e in eps:
        X = np.array(bag[e["episode"]]["X"])
        assert X.shape == (T + 1, 4)
        assert np.max(np.abs(X[0, :2] - [0.4, 0.3])) <= tol
        assert np.max(np.abs(X[0, 2:])) <= vel
        moved = np.array(bag[e["episode"] - 1]["X"])
        assert len(moved) >= 11             # at least one chunk of the move ran


def test_real_time_timing_runs_an_iteration_on_an_arm_that_runs_on(ros_env, tmp_path):
    """``timing:=realtime`` (a physical arm: no lockstep, no pause): the simulator runs in
    real time, the controller moves the arm to each start and holds it between samples,
    and the trainer cuts the samples out of the state stream; the iteration completes and
    every sample is a bag episode that starts where the move settled the arm."""
    run = _config(tmp_path, train=[{"start": [0.4, 0.3], "target": [0.5, 0.6]}], heldout=[])
    out = tmp_path / "realtime"
    code, log = _bringup(ros_env, tmp_path, "robot:=arm2", f"config:={run}", "iterations:=1",
                         "samples:=2", f"horizon:={T}", "reset:=move", "timing:=realtime",
                         f"out:={out}")
    assert code == 0, log
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in metrics["iterations"]] == [1]
    index = json.loads((out / "bags" / "gps_episodes.json").read_text())
    kept = [e for e in index["episodes"] if e["noisy"] and not e["discarded"]]
    assert len(kept) == 2
    # a refused combination is a one-line error before anything starts
    code, log = _bringup(ros_env, tmp_path, "robot:=arm2", "timing:=realtime",
                         f"out:={tmp_path / 'x'}")
    assert code != 0 and "timing:=realtime needs reset:=move" in log, log


def test_a_failing_trainer_ends_the_bringup_with_an_error_naming_it(ros_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: arm2\nbogus_key: 1\n")
    code, log = _bringup(ros_env, tmp_path, f"config:={bad}", f"out:={tmp_path / 'o'}")
    assert code == 1, log
    assert "bogus_key" in log
    assert re.search(r"/gps_trainer \(gps_trainer\) exited with code 2", log), log


def test_ctrl_c_keeps_the_checkpoint_and_resume_continues(ros_env, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) during the second
    iteration: every process stops with exit 0, the first iteration's checkpoint and
    metrics stay; ``resume:=true`` runs the second."""
    import time
    run = _config(tmp_path)
    out = tmp_path / "interrupted"
    args = ["robot:=arm2", f"config:={run}", "iterations:=2", "conditions:=2", "samples:=2",
            f"horizon:={T}", f"out:={out}"]
    p = NodeProcess([str(BIN / "mbrl-ros"), "bringup", "gps", *args], ros_env,
                    tmp_path / "first.log")
    try:
        end = time.monotonic() + DONE
        while not (out / "metrics.json").exists():
            assert p.proc.poll() is None and time.monotonic() < end, p.output()
            time.sleep(0.2)
        p.signal(signal.SIGINT)
        code = p.wait(timeout=60)
        log = p.output()
    finally:
        p.stop()
    assert code == 0, log
    assert "stopped; resume:=true continues" in log
    assert all(f"stopped /{n} (exit 0)" in log
               for n in ("gps_trainer", "controller", "data_logger", "sim")), log
    first = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in first["iterations"]] == [1]
    code, log = _bringup(ros_env, tmp_path, *args, "resume:=true")
    assert code == 0, log
    done = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in done["iterations"]] == [1, 2]
    # (iteration 1's kl_samples is measured on iteration 2's samples: filled in then)
    assert {k: v for k, v in done["iterations"][0].items() if k != "kl_samples"} == \
        {k: v for k, v in first["iterations"][0].items() if k != "kl_samples"}
