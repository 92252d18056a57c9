"""Two robots in one ROS graph: `mbrl-ros bringup sim namespace:=arm_a` and
`namespace:=arm_b` side by side, each arm controlled to its own target by its own
controller, nothing on the un-namespaced topics (issue 12: namespaces)."""
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from test_bringup import UP, _stop_cleanly, bringup  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(240)
TARGETS = {"arm_a": (0.6, -0.4), "arm_b": (-0.5, 0.7)}


def _near(msgs, target, tol=0.05) -> bool:
    return bool(msgs) and np.abs(np.asarray(msgs[-1].position) - target).max() < tol


def test_two_namespaced_arms_share_a_graph(bringup, probe, tmp_path):  # noqa: F811
    runs, states = {}, {}
    for ns, target in TARGETS.items():
        mine = tmp_path / f"{ns}.yaml"
        mine.write_text("/**/controller:\n  ros__parameters:\n"
                        f"    target_joint_positions: [{target[0]}, {target[1]}]\n")
        runs[ns] = bringup("sim", f"namespace:={ns}", "robot:=arm2", "model:=mujoco",
                           "record:=false", f"params_file:={mine}")
        states[ns] = probe.collect(JointState, f"/{ns}/joint_states")
    outside = probe.collect(JointState, "/joint_states") + \
        probe.collect(Float64MultiArray, "/effort_controller/commands")
    probe.spin_until(lambda: all(_near(states[ns], TARGETS[ns]) for ns in TARGETS)
                     or any(p.proc.poll() is not None for p in runs.values()),
                     UP + 60, "both arms at their own targets")
    for ns, p in runs.items():
        assert p.proc.poll() is None, p.output()
        assert _near(states[ns], TARGETS[ns]), (ns, states[ns][-1].position if states[ns]
                                                 else None, p.output()[-2000:])
    assert outside == []
    for p in runs.values():
        _stop_cleanly(p)
