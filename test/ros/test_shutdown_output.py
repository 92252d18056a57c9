"""Ctrl-C as a user presses it: clean output (no traceback, no never-retrieved exception,
no line twice) and nothing lost."""
import os
import sys
import warnings
from pathlib import Path

import pytest
from proc_util import ctrl_c_when

EXE = str(Path(sys.executable).parent / "mbrl-ros")
# command-line words of our processes: the CLI, the nodes, the planning worker
OUR_PROCESSES = ("mbrl-ros", "mbrl_ros", "sim_node", "controller", "model_fitter",
                 "data_logger", "excitation_node", "gps_trainer")
pytestmark = pytest.mark.timeout(120)


def test_record_ctrl_c_closes_the_bag_without_a_traceback(tmp_path, ros_env):
    out = tmp_path / "bags"
    code, _, stderr = ctrl_c_when(
        [EXE, "record", "--robot", "arm2", "--seconds", "600", "--out", str(out),
         "--no-progress"], lambda: bool(list(out.glob("*/*.mcap"))), ros_env, wait=60,
        settle=1.5, timeout=30)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-2000:]
    bag = next(out.glob("*/metadata.yaml")).parent
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        assert reader.message_count > 50


def test_bringup_ctrl_c_output_is_clean(tmp_path, ros_env):
    """Every node of a learning bring-up stops on Ctrl-C without a never-retrieved
    exception (the fitter's thread pool outliving the executor's guard condition) and the
    logger's summary printed once."""
    # diag_site/sitecustomize.py: a process dying of an uncaught exception names itself
    diag = str(Path(__file__).resolve().parent / "diag_site")
    env = {**ros_env, "PYTHONPATH": os.pathsep.join(
        [diag] + ([ros_env["PYTHONPATH"]] if ros_env.get("PYTHONPATH") else []))}
    code, stdout, stderr = ctrl_c_when(
        [EXE, "bringup", "sim", "robot:=arm2", "model:=linear", f"bag_dir:={tmp_path}/bags"],
        lambda: bool(list(tmp_path.glob("bags/*/*.mcap"))), env, wait=60, settle=3.0)
    out = stdout + stderr
    assert code == 0, out[-3000:]
    assert "never retrieved" not in out, out[-3000:]
    # Every traceback must come from a process that named itself (diag_site) and is not
    # ours; one of ours, or an unnamed one (a thread's), fails the test. A foreign one is
    # reported: twice in CI a "BrokenPipeError at <string> line 36" came from a process
    # no node of ours is -- the name will say which.
    named = [line for line in out.splitlines() if line.startswith("[uncaught in pid ")]
    ours = [line for line in named if any(k in line for k in OUR_PROCESSES)]
    assert not ours, out[-3000:]
    assert out.count("Traceback (most recent call last)") == len(named), out[-3000:]
    if named:
        warnings.warn(f"a process not of ours died with a traceback at Ctrl-C: {named}")
    summaries = [line for line in out.splitlines() if "closed" in line and "received" in line]
    assert len(summaries) == 1, out[-3000:]


def test_ctrl_c_in_a_composed_run_lands_between_callbacks():
    """A SIGINT arriving while a callback runs is raised as KeyboardInterrupt only after
    that callback returned (raised inside it, it could land in rclpy's C++ bindings:
    `mbrl-ros record` once exited 2 with pybind11's "Unable to convert call argument")."""
    import os
    import signal

    import pytest
    from rclpy.node import Node

    from mbrl_ros.ros.compose import InProcessSystem

    class Kicker(Node):
        def __init__(self, **kw):
            super().__init__("kicker", **kw)
            self.finished = 0
            self.create_timer(0.01, self.tick)

        def tick(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):       # bytecodes where an async handler would raise
                pass
            self.finished += 1

    # Python's own SIGINT handler, as in `mbrl-ros record` (an earlier test in this process
    # may have left SIGINT ignored: run_node ignores it once its node finished)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with InProcessSystem() as system:
            node = system.add(Kicker)
            with pytest.raises(KeyboardInterrupt):
                system.spin_until(lambda: False, timeout=10.0)
            assert node.finished == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    finally:
        signal.signal(signal.SIGINT, before)
