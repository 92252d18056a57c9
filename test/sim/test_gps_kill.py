"""Resume after a real kill (issue 14): ``mbrl-ros gps`` (the console script) on arm2 is
SIGKILLed once its first iteration's checkpoint exists; ``--resume`` continues at the next
iteration (the checkpointed iterations are not run again) and ends with metrics for every
iteration. No wall-clock assertions: the polling limits only stop a hung run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

CONFIG = """\
robot: arm2
iterations: 3
samples: 2
horizon: 12
control_period: 0.05
seed: 0
init_std: 0.5
init_damping: 0.5
init_kp: 0.0
train:
  - {start: [0.0, 0.0], target: [0.5, 0.6]}
  - {start: [1.2, -0.4], target: [0.9, -0.2]}
heldout:
  - {start: [0.3, 0.3], target: [0.6, 0.3]}
policy:
  hidden: [16]
  iterations: 40
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_gps_killed_after_its_first_checkpoint_resumes_at_the_next_iteration(tmp_path):
    exe = Path(sys.executable).parent / "mbrl-ros"
    assert exe.exists(), exe
    cfg = tmp_path / "gps_tiny.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    cmd = [str(exe), "gps", "--config", str(cfg), "--out", str(out), "--no-progress"]
    ckpt = out / "checkpoint"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 600          # a hung run, not a slow one
            while not (ckpt / "it0001" / "state.json").exists():
                assert proc.poll() is None, \
                    f"exited ({proc.returncode}) before its first checkpoint:\n" + \
                    (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 600 s"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(int(p.name[2:]) for p in ckpt.glob("it[0-9]*"))
    assert done and done[-1] < 3, done     # killed mid-run (the config has 3 iterations)
    # what the last checkpoint holds (metrics.json is written just after it, so the kill
    # may have come first)
    before = json.loads((ckpt / f"it{done[-1]:04d}" / "state.json").read_text())[
        "run"]["iterations"]
    assert [r["iteration"] for r in before] == list(range(1, done[-1] + 1))

    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(),
                         timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "(resuming)" in res.stdout
    rep = json.loads((out / "metrics.json").read_text())
    its = rep["iterations"]
    assert [r["iteration"] for r in its] == [1, 2, 3]
    # The checkpointed iterations were not run again: their entries, wall timings
    # included, are exactly those the killed run wrote.
    for r in before:
        assert its[r["iteration"] - 1] == {**r, "kl_samples": its[r["iteration"] - 1][
            "kl_samples"]}
    for r in its:
        assert r["local_cost"] > 0 and len(r["final_distance_m"]) == 2
        assert len(r["policy_final_distance_m"]) == 2 and len(r["policy_heldout_distance_m"]) == 1
        assert r["kl_bound"] > 0 and len(r["kl_model"]) == 2
        assert set(r["timings"]) >= {"sampling", "dynamics", "policy_linearisation",
                                     "c_step", "s_step"}
    assert all(r["kl_samples"] is not None for r in its[:-1])
    assert its[-1]["samples"] == 3 * 2 * 2
    assert not list(ckpt.glob("pending-*")) and not list(out.rglob("*.pkl"))
    assert sorted(p.name for p in ckpt.glob("it[0-9]*")) == ["it0002", "it0003"]
    assert (out / "gps_policy" / "latest").exists()

    # A damaged newest checkpoint: --resume says so, falls back to the previous one and
    # runs iteration 3 again; with every checkpoint damaged it exits 2 naming the files,
    # without a traceback.
    npz = ckpt / "it0003" / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(),
                         timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "it0003/arrays.npz" in res.stderr and "previous iteration" in res.stderr
    assert [r["iteration"] for r in json.loads((out / "metrics.json").read_text())[
        "iterations"]] == [1, 2, 3]
    for it in ("it0002", "it0003"):
        (ckpt / it / "state.json").write_text("{")
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(),
                         timeout=800)
    assert res.returncode == 2
    assert "no usable checkpoint" in res.stderr and "it0002/state.json" in res.stderr
    assert "Traceback" not in res.stderr
