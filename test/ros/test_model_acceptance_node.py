"""The controller node refuses models it could not use (issue 11 item 3), as users give
them: as its ``model`` parameter at configure (it stays unconfigured, the reason in its
log) and announced on the model topic while it runs (it keeps the model in use)."""
import json

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, String

from conftest import START, diagnostics_values
from model_faults import arm2_linear, published, rewrite, with_nan
from test_controller import BASE, CMD

pytestmark = pytest.mark.timeout(240)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def nan_model(tmp_path):
    info = published(tmp_path, name="nan")
    rewrite(info.uri, with_nan(arm2_linear().state_arrays(), "B"))
    return info.uri, "array 'B' has 1 NaN"


def three_action_model(tmp_path):
    info = published(tmp_path, arm2_linear(actions=("shoulder", "elbow", "wrist")), "three")
    return info.uri, "3 action(s)"


def string_nx_model(tmp_path):
    info = published(tmp_path, name="nx")
    rewrite(info.uri, meta=lambda d: d["spec"].update(nx="four"))
    return info.uri, "model.json: key 'spec.nx' must be an integer"


@pytest.mark.parametrize("fault", [nan_model, three_action_model, string_nx_model])
def test_configure_with_a_refused_model_fails_with_the_reason(start_node, probe, tmp_path,
                                                              fault):
    uri, reason = fault(tmp_path)
    ctrl = start_node("controller", {**BASE, "model": uri, "autostart": True})
    probe.spin_until(lambda: "configure failed" in ctrl.output(), START, "configure to fail")
    state = probe.call(GetState, "/controller/get_state", GetState.Request())
    assert state.current_state.label == "unconfigured"
    line = next(x for x in ctrl.output().splitlines() if "configure failed" in x)
    assert reason in line and uri in line, line
    assert "Traceback" not in ctrl.output()


def test_announced_refused_models_keep_the_model_in_use(start_node, probe, tmp_path):
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "autostart": True})   # model 'mujoco' (v0)
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    cmds = probe.collect(Float64MultiArray, CMD)
    pub = probe.node.create_publisher(String, "/model_fitter/model", LATCHED)

    def diag():
        return diagnostics_values(diags, "mbrl_ros/controller")
    probe.spin_until(lambda: int(diag().get("replans", 0)) > 0, START, "planning on v0")
    from mbrl_ros.core import store
    # a model of other actions than the one in use is refused for that reason first
    faults = ((nan_model, None), (three_action_model, "u=['shoulder', 'elbow', 'wrist']"),
              (string_nx_model, None))
    for n, (fault, running_reason) in enumerate(faults, 1):
        uri, reason = fault(tmp_path)
        reason = running_reason or reason
        meta = json.loads((tmp_path / uri / "model.json").read_text())
        pub.publish(String(data=store.ArtifactInfo(uri, meta["kind"], meta["version"],
                                                   meta["checksum"], {}).to_json()))
        probe.spin_until(lambda: diag().get("model_rejects") == str(n), 30,
                         f"announcement {n} rejected")
        assert diag()["model_version"] == "0" and diag()["model_loads"] == "1"
        probe.spin_until(lambda: reason in ctrl.output(), 10, f"reason {reason!r} logged")
    n_cmds = len(cmds)
    probe.spin_until(lambda: len(cmds) > n_cmds + 50, 10, "still commanding")
    d = diag()
    assert d["planned_model_version"] == "0" and int(d["replans"]) > 0
    assert "Traceback" not in ctrl.output()


def test_without_a_model_a_refused_announcement_is_not_used_and_a_good_one_is(
        start_node, probe, tmp_path):
    """The issue's case: a controller waiting for its first model is sent one with three
    actions for the two-motor arm (refused, no model in use), then a usable one."""
    from mbrl_ros.core import store
    start_node("sim_node", {"model": "arm2", "publish_rate": 100.0})
    ctrl = start_node("controller", {**BASE, "model": "", "autostart": True})
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    pub = probe.node.create_publisher(String, "/model_fitter/model", LATCHED)

    def diag():
        return diagnostics_values(diags, "mbrl_ros/controller")
    probe.spin_until(lambda: "model_rejects" in diag(), START, "controller diagnostics")
    three = store.publish(arm2_linear(actions=("shoulder", "elbow", "wrist")), tmp_path, "m")
    pub.publish(String(data=three.to_json()))
    probe.spin_until(lambda: diag().get("model_rejects") == "1", 30, "3-action model refused")
    assert diag()["model_version"] == "0" and diag()["model_loads"] == "0"
    assert "3 action(s) ['shoulder', 'elbow', 'wrist'], the robot 2 command joint(s)" in \
        ctrl.output()
    good = store.publish(arm2_linear(), tmp_path, "m")                       # v2
    pub.publish(String(data=good.to_json()))
    probe.spin_until(lambda: diag().get("model_version") == "2", 30, "good model in use")
    assert diag()["model_rejects"] == "1" and diag()["model_loads"] == "1"
