"""The planning process refuses models a controller could not use (issue 11 item 3): in a
running child the previous model stays; a model damaged on disk after the parent verified
it is refused once when a child starts, and the child is not restarted in a loop."""
import numpy as np
import pytest

from model_faults import arm2_linear, published, rewrite, with_nan
from mbrl_ros.core.control.plan_process import PlanError, PlanProcess
from mbrl_ros.core.models.base import ModelError
from test_plan_process import ROBOT, TARGET, X0, controller_args, planner_settings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def make_proc():
    made = []

    def make():
        logs = []
        p = PlanProcess("arm2", 0.01, ROBOT.joint_names, planner_settings,
                        **controller_args(), plan_timeout=30.0,
                        log=lambda level, text: logs.append((level, text)))
        p.logs = logs
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def test_running_child_refuses_bad_models_and_keeps_planning(make_proc, tmp_path):
    proc = make_proc()
    good = published(tmp_path)
    proc.load_model(good.uri, good.version, good.checksum)
    proc.set_target(TARGET)
    proc.start()
    proc.replan(X0, 0.0)
    nan = published(tmp_path)                                  # v2, then damaged
    rewrite(nan.uri, with_nan(arm2_linear().state_arrays()))
    with pytest.raises(ModelError, match="array 'A' has 1 NaN"):
        proc.load_model(nan.uri, nan.version)
    three = published(tmp_path, arm2_linear(actions=("shoulder", "elbow", "wrist")), "b")
    with pytest.raises(ModelError, match="wrist"):     # other actions than the model in use
        proc.load_model(three.uri, three.version, three.checksum)
    # finite weights, finite at home, but not from the state the robot is in
    blows_up = arm2_linear()
    blows_up.A[2, 0] = 1e308                              # x' overflows for |q0| > 1.8
    far = published(tmp_path, blows_up, "far")
    x_far = np.array([2.0, 0.0, 0.0, 0.0])
    proc.replan(x_far, 0.01)
    with pytest.raises(ModelError, match=r"one-step prediction from x=\[2.0, 0.0, 0.0, 0.0\]"):
        proc.load_model(far.uri, far.version, far.checksum)
    proc.replan(X0, 0.02)
    assert proc.model_version == 1 and proc.stats["model_version"] == 1
    assert proc.counters == {"starts": 1, "failures": 0}


def test_model_damaged_after_verification_is_refused_once_not_restarted(make_proc,
                                                                         tmp_path):
    proc = make_proc()
    info = published(tmp_path)
    assert proc.load_model(info.uri) == 1                 # verified here (no child yet)
    rewrite(info.uri, with_nan(arm2_linear().state_arrays()))   # then damaged on disk
    proc.set_target(TARGET)
    proc.start()
    with pytest.raises((PlanError, ModelError)):
        proc.replan(X0, 0.0)
    refusals = [t for lv, t in proc.logs if "refused model" in t]
    assert len(refusals) == 1 and "array 'A' has 1 NaN" in refusals[0], proc.logs
    assert proc.spec is None and proc.model_version == 0 and not proc.ready
    for k in range(3):                                    # no model: refused, no restarts
        with pytest.raises(ModelError, match="no model"):
            proc.replan(X0, 0.01 * k)
    assert proc.running and proc.counters == {"starts": 1, "failures": 0}
    assert len([t for lv, t in proc.logs if "refused model" in t]) == 1
    good = published(tmp_path)                            # a new model: planning again
    assert proc.load_model(good.uri, good.version, good.checksum) == 2
    policy = proc.replan(X0, 0.1)
    assert np.all(np.isfinite(policy.action(X0, 0.1)))
