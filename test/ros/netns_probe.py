"""Observer node for tests that run nodes in another network namespace.

Run inside the namespace (``ip netns exec NS python netns_probe.py SECONDS``) with the
nodes' environment. Prints one JSON object per line on stdout, with ``t`` the time.monotonic()
of receipt (the same clock in every network namespace):

* ``{"kind": "state", "position": [...], "states": N, "commands": M, "command": [...],
  "artifact_publishers": K}`` at most every 0.1 s: the newest joint state, how many joint
  states and effort commands arrived so far, the newest command, and how many publishers of
  ``/model_fitter/artifact`` this namespace's DDS knows of.
* ``{"kind": "diag", "name": ..., "stamp": S, "level": L, "message": ..., "values": {...}}``
  for every DiagnosticStatus received on /diagnostics (``stamp``: the array's header stamp,
  the sender's clock, in seconds).

Ends after SECONDS (a bound: the test ends it sooner) or on SIGINT/SIGTERM.
"""
import json
import signal
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray


def main() -> int:
    seconds = float(sys.argv[1])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    rclpy.init()
    node = rclpy.create_node("netns_probe")
    seen = {"states": 0, "commands": 0, "position": None, "command": None}

    def emit(obj: dict) -> None:
        obj["t"] = time.monotonic()
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def on_state(m: JointState) -> None:
        seen["states"] += 1
        seen["position"] = list(m.position)

    def on_command(m: Float64MultiArray) -> None:
        seen["commands"] += 1
        seen["command"] = list(m.data)

    def on_diag(m: DiagnosticArray) -> None:
        stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        for st in m.status:
            emit({"kind": "diag", "name": st.name, "stamp": stamp,
                  "level": st.level[0] if st.level else 0,
                  "message": st.message, "values": {kv.key: kv.value for kv in st.values}})

    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(JointState, "/joint_states", on_state, qos)
    node.create_subscription(Float64MultiArray, "/effort_controller/commands", on_command, qos)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    end = time.monotonic() + seconds
    next_report = 0.0
    emit({"kind": "ready"})
    while not stop and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
        now = time.monotonic()
        if now >= next_report:
            next_report = now + 0.1
            emit({"kind": "state", **seen,
                  "artifact_publishers": node.count_publishers("/model_fitter/artifact")})
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
