"""data_logger as a separate process: what it receives is what the bag holds."""
import re
import signal

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from conftest import diagnostics_values

pytestmark = pytest.mark.timeout(90)
CMD = "/effort_controller/commands"


def _bag_counts(paths):
    with AnyReader(list(paths)) as reader:
        counts = {c.topic: 0 for c in reader.connections}
        values = []
        for conn, _, raw in reader.messages():
            counts[conn.topic] += 1
            if conn.topic == CMD:
                values.append(reader.deserialize(raw, conn.msgtype).data[0])
    return counts, values


def _received(out: str) -> dict:
    return {t: (int(r), int(w)) for t, r, w in
            re.findall(r"(/[\w/]+) received (\d+) written (\d+)", out)}


def _start_system(start_node, probe, tmp_path, **logger_params):
    start_node("sim_node", {"model": "arm2", "publish_rate": 200.0})
    logger = start_node("data_logger", {"output_dir": str(tmp_path / "bags"),
                                        "bag_name": "t", **logger_params})
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    pub = probe.node.create_publisher(Float64MultiArray, CMD, 1000)
    probe.spin_until(lambda: pub.get_subscription_count() >= 2, 20,
                     "sim and logger subscribed to commands")
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/data_logger")
                                 .get("received /joint_states", 0)) > 0, 20, "logger recording")
    return logger, diags, pub


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_closes_bag_and_loses_nothing(start_node, probe, tmp_path, sig):
    logger, diags, pub = _start_system(start_node, probe, tmp_path)
    n = 400
    for i in range(n):
        pub.publish(Float64MultiArray(data=[0.001 * (i % 7), float(i)][::-1]))
        if i % 50 == 0:
            probe.spin_for(0.005)
    key = f"received {CMD}"
    probe.spin_until(lambda: int(diagnostics_values(diags, "mbrl_ros/data_logger")
                                 .get(key, 0)) >= n, 20, f"logger received {n} commands")
    logger.signal(sig)
    assert logger.wait(timeout=20) == 0
    got = _received(logger.output())
    assert got[CMD] == (n, n)
    assert got["/joint_states"][0] == got["/joint_states"][1] > 0
    bags = sorted((tmp_path / "bags").iterdir())
    assert len(bags) == 1 and (bags[0] / "metadata.yaml").exists()
    counts, values = _bag_counts(bags)
    assert counts[CMD] == n and values == [float(i) for i in range(n)]  # all, in order
    assert counts["/joint_states"] == got["/joint_states"][1]


def test_sigint_mid_stream_written_equals_received(start_node, probe, tmp_path):
    logger, diags, pub = _start_system(start_node, probe, tmp_path)
    for i in range(300):
        pub.publish(Float64MultiArray(data=[float(i), 0.0]))
    logger.signal(signal.SIGINT)          # while messages are still in flight
    assert logger.wait(timeout=20) == 0
    got = _received(logger.output())
    counts, values = _bag_counts(sorted((tmp_path / "bags").iterdir()))
    assert counts[CMD] == got[CMD][0] == got[CMD][1]
    assert values == [float(i) for i in range(len(values))]   # a prefix, no holes


def test_stop_service_and_splitting(start_node, probe, tmp_path):
    logger, diags, pub = _start_system(start_node, probe, tmp_path, max_bag_duration=0.5)
    probe.spin_for(1.6)                   # 200 Hz states for > 3 split periods
    res = probe.call(Trigger, "/data_logger/stop")
    assert res.success and "closed" in res.message
    bags = sorted((tmp_path / "bags").iterdir())
    assert len(bags) >= 3, [b.name for b in bags]
    counts, _ = _bag_counts(bags)
    assert counts["/joint_states"] > 250
    assert logger.proc.poll() is None    # still running after stop
    probe.spin_until(lambda: diagnostics_values(diags, "mbrl_ros/data_logger")
                     .get("written") is not None, 5, "status after stop")


def test_best_effort_publishers_are_recorded(start_node, probe, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    logger = start_node("data_logger", {"output_dir": str(tmp_path / "bags"), "bag_name": "be",
                                        "topics": ["/joint_states"]})
    pub = probe.node.create_publisher(JointState, "/joint_states", QoSProfile(
        depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    probe.spin_until(lambda: pub.get_subscription_count() >= 1, 20, "logger subscribed")
    for i in range(50):
        pub.publish(JointState(name=["a"], position=[float(i)], velocity=[0.0]))
        probe.spin_for(0.005)
    probe.spin_for(0.3)
    logger.signal(signal.SIGINT)
    assert logger.wait(timeout=20) == 0
    counts, _ = _bag_counts(sorted((tmp_path / "bags").iterdir()))
    assert counts["/joint_states"] >= 45          # best effort on localhost: ~all arrive
