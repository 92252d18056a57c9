"""A plan's job (the GPS trainer, ``Process.job``) under ``ros2 launch``: its exit ends the
launch, with exit 0 after a success, as ``mbrl-ros bringup`` does (test_bringup_gps_plan).

Without the launch framework (not installable here): launch/gps.launch.py runs against the
keyword-checked stand-ins of test/core/launch_fakes.py. Before the job was handled, the
trainer's successful exit raised NodeFailure like any node's exit, so a finished GPS run
ended `ros2 launch` with exit 1 ("node /gps_trainer (gps_trainer) exited with code 0").
"""
import runpy
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "core"))
import launch_fakes as fake  # noqa: E402

from mbrl_ros.bringup import plan  # noqa: E402


class Shutdown:
    """launch.events.Shutdown (launch 3.7: keyword-only reason, due_to_sigint)."""

    def __init__(self, *, reason="reason not given", due_to_sigint=False):
        self.reason, self.due_to_sigint = reason, due_to_sigint


@pytest.fixture
def gps_actions(monkeypatch, tmp_path):
    fake.install(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the values files (no shutdown)
    monkeypatch.setattr(sys.modules["launch.events"], "Shutdown", Shutdown, raising=False)
    fake.FindPackageShare.share = str(ROOT)
    ld = runpy.run_path(str(ROOT / "launch" / "gps.launch.py"))["generate_launch_description"]()
    declared = [e for e in ld.entities if isinstance(e, fake.DeclareLaunchArgument)]
    (opaque,) = [e for e in ld.entities if isinstance(e, fake.OpaqueFunction)]
    values = {d.name: d.default_value for d in declared} | {"out": str(tmp_path / "out"),
                                                            "namespace": "arm_a"}
    yield values, opaque.execute(fake.Context(values))
    sys.modules.pop("mbrl_ros.ros.launch_actions", None)


def _exit_handlers(actions):
    return {a.event_handler.target_action.name: a.event_handler for a in actions
            if isinstance(a, fake.RegisterEventHandler)
            and isinstance(a.event_handler, fake.OnProcessExit)}


def _exit(code):
    return type("ProcessExited", (), {"returncode": code})()


def test_the_jobs_success_shuts_the_launch_down_with_exit_0(gps_actions):
    values, actions = gps_actions
    jobs = [p.name for p in plan("gps", values, str(ROOT)).processes if p.job]
    assert jobs == ["gps_trainer"]
    trainer = _exit_handlers(actions)["gps_trainer"]
    (emit,) = trainer.on_exit(_exit(0), fake.Context({}))
    # a Shutdown event: LaunchService.run() returns 0 (an exception would make it 1)
    assert isinstance(emit, fake.EmitEvent) and isinstance(emit.event, Shutdown)
    assert "/arm_a/gps_trainer" in emit.event.reason and not emit.event.due_to_sigint


def test_a_failed_job_ends_the_launch_with_an_error_naming_it(gps_actions):
    from mbrl_ros.ros.launch_actions import NodeFailure
    _, actions = gps_actions
    trainer = _exit_handlers(actions)["gps_trainer"]
    with pytest.raises(NodeFailure,
                       match=r"/arm_a/gps_trainer \(gps_trainer\) exited with code 1"):
        trainer.on_exit(_exit(1), fake.Context({}))
    # stopping anyway (Ctrl-C, another node failed): nothing more to do
    assert trainer.on_exit(_exit(-2), fake.Context({}, is_shutdown=True)) is None
    assert trainer.on_exit(_exit(0), fake.Context({}, is_shutdown=True)) is None


def test_the_other_nodes_of_a_job_plan_still_end_the_launch_when_they_exit(gps_actions):
    from mbrl_ros.ros.launch_actions import NodeFailure
    _, actions = gps_actions
    handlers = _exit_handlers(actions)
    assert set(handlers) == {"sim", "data_logger", "controller", "gps_trainer"}
    for name in ("sim", "data_logger", "controller"):
        with pytest.raises(NodeFailure, match=rf"/arm_a/{name} \(\w+\) exited with code 0"):
            handlers[name].on_exit(_exit(0), fake.Context({}))
