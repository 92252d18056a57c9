"""Ctrl-C as a user presses it: clean output (no traceback, no never-retrieved exception,
no line twice) and nothing lost."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "mbrl-ros")
pytestmark = pytest.mark.timeout(120)


def test_record_ctrl_c_closes_the_bag_without_a_traceback(tmp_path, ros_env):
    out = tmp_path / "bags"
    p = subprocess.Popen([EXE, "record", "--robot", "arm2", "--seconds", "600", "--out",
                          str(out), "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ros_env,
                         start_new_session=True)
    try:
        end = time.monotonic() + 60
        while not list(out.glob("*/*.mcap")):
            assert p.poll() is None and time.monotonic() < end, p.stderr.read()[-2000:]
            time.sleep(0.2)
        time.sleep(1.5)                     # some data recorded
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-2000:]
    bag = next(out.glob("*/metadata.yaml")).parent
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        assert reader.message_count > 50
