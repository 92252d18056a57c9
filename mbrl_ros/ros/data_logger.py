"""Records joint states, commands and any listed topics to rosbag2 bags (MCAP).

Each message is written with the bytes DDS delivered (``raw=True``) and its DDS receive
time as log time, as ``ros2 bag record`` does, so bags open in rosbag2 (Iron+), rosbags
and the mcap tools. Bags are split by size or duration into ``<output_dir>/<bag_name>_NNNN``
(each a complete bag). Episode starts announced on ``episode_topic`` (the sim's
``/sim/episode``) or requested with ``~/mark_episode`` are written as std_msgs/UInt32 on
``/data_logger/episode``, which dataset conversion splits on.

Nothing is lost on shutdown: SIGINT/SIGTERM and ``~/stop`` drain what DDS has delivered,
then close the bag; the final line printed says received / written / dropped per topic
(dropped is 0 unless a write failed).

Faults. Chunks carry CRCs and are flushed at least every second of log time, so a killed
logger loses at most ~1 s (``mbrl-ros reindex BAG`` then rebuilds metadata.yaml). A full
disk gives one throttled error line per second; the chunks that could not be written are
counted as dropped and cut from the file, so the bag stays valid; at shutdown the disk space
the writer keeps in reserve is released and the bag is closed with a metadata.yaml counting
what was written (exit 0). An output folder that cannot be written is one error line and
exit 2.
Services (std_srvs/Trigger): ``~/start``, ``~/stop``, ``~/split``, ``~/mark_episode``.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from std_msgs.msg import UInt32
from std_srvs.srv import Trigger

from mbrl_ros.core.data.bag import BagWriter
from mbrl_ros.core.settings import setting
from mbrl_ros.ros.conversions import diagnostic_name
from mbrl_ros.ros.node_main import run_node
from mbrl_ros.ros.params import declare_settings

EPISODE_MARKER_TOPIC = "/data_logger/episode"
# Types known by a topic's last name (any namespace).
_KNOWN_TYPES = {"joint_states": "sensor_msgs/msg/JointState"}


@dataclass(frozen=True)
class LoggerSettings:
    output_dir: str = setting("bags", "directory the bags are written under (created)")
    bag_name: str = setting("", "bag name prefix (empty: mbrl_YYYYmmdd_HHMMSS)")
    topics: tuple[str, ...] = setting(("joint_states", "effort_controller/commands"),
                                      "topics to record; 'topic' (type from the ROS graph) or "
                                      "'topic:pkg/msg/Type'; relative names resolve in the "
                                      "node's namespace and are recorded fully qualified")
    episode_topic: str = setting("sim/episode", "std_msgs/UInt32 topic announcing episode "
                                 "starts (empty: none)")
    max_bag_size: float = setting(0.0, "split when a bag exceeds this size (0: never)",
                                  unit="MB", low=0.0, high=1e6)
    max_bag_duration: float = setting(0.0, "split when a bag spans this long (0: never)",
                                      unit="s", low=0.0, high=1e7)
    qos_depth: int = setting(1000, "subscription queue depth (reliable)", low=1, high=100000)
    autostart: bool = setting(True, "start recording at launch (else on ~/start)")
    diagnostics_rate: float = setting(1.0, "rate of /diagnostics status", unit="Hz",
                                      low=0.0, high=100.0)


def _topic_type(entry: str, resolve=lambda t: t) -> tuple[str, str | None]:
    """'topic' -> (topic, known type or None); 'topic:pkg/msg/T' -> (topic, type). The
    topic is passed through ``resolve`` (the node's name resolution: the fully qualified
    name is what subscriptions match and what the bag records)."""
    topic, msgtype = entry.split(":", 1) if ":" in entry else (entry, None)
    topic = resolve(topic)
    if msgtype is not None:
        return topic, msgtype
    if topic.rsplit("/", 1)[-1] in _KNOWN_TYPES:
        return topic, _KNOWN_TYPES[topic.rsplit("/", 1)[-1]]
    if topic.endswith("/commands"):  # ros2_controllers forward command controllers
        return topic, "std_msgs/msg/Float64MultiArray"
    return topic, None


def _import_type(msgtype: str):
    """'sensor_msgs/msg/JointState' -> the generated rclpy class."""
    pkg, kind, name = msgtype.split("/")
    module = __import__(f"{pkg}.{kind}", fromlist=[name])
    return getattr(module, name)


class DataLogger(Node):
    def __init__(self, **kwargs):
        super().__init__("data_logger", **kwargs)
        self.settings = s = declare_settings(self, LoggerSettings)
        self.writer: BagWriter | None = None
        self.received: dict[str, int] = {}      # while recording: written + dropped
        self.ignored: dict[str, int] = {}       # arrived while not recording
        self.write_errors: dict[str, int] = {}  # failed writes (messages lost with them: dropped)
        self.close_failed = False               # a bag could not be finished (see stop())
        self._write_lock = threading.Lock()     # a callback never writes into a closed bag
        self.written_total = 0
        self._subs: dict[str, Subscription] = {}
        self._pending: dict[str, str | None] = {}
        self._episodes = 0
        self.last_bag_paths: list[Path] = []
        self._group = MutuallyExclusiveCallbackGroup()   # everything touching the writer
        self._qos = QoSProfile(depth=s.qos_depth, reliability=ReliabilityPolicy.RELIABLE)
        for entry in s.topics:
            topic, msgtype = _topic_type(entry, self.resolve_topic_name)
            self._pending[topic] = msgtype
            self.received[topic] = 0
            self.ignored[topic] = 0
        if s.episode_topic:
            latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.create_subscription(UInt32, s.episode_topic, self._on_episode, latched,
                                     callback_group=self._group)
        for name, cb in (("~/start", self._srv_start), ("~/stop", self._srv_stop),
                         ("~/split", self._srv_split), ("~/mark_episode", self._srv_mark)):
            self.create_service(Trigger, name, cb, callback_group=self._group)
        self._resolve_topics()
        if self._pending:
            self.create_timer(0.2, self._resolve_topics, callback_group=self._group)
        if s.diagnostics_rate > 0:
            self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(1.0 / s.diagnostics_rate, self._publish_diagnostics,
                              callback_group=self._group)
        if s.autostart:
            try:
                self.start()
            except OSError as e:   # run_node: one "invalid configuration" line, exit 2
                raise ValueError(e.strerror or str(e)) from None

    # ----------------------------------------------------------------- recording
    def start(self) -> str:
        """Open a new bag. Raises OSError (one line naming the folder) if it cannot be created."""
        if self.writer is not None:
            return f"already recording to {self.writer.bag_paths[-1]}"
        s = self.settings
        name = s.bag_name or datetime.now().strftime("mbrl_%Y%m%d_%H%M%S")
        root = Path(s.output_dir).expanduser()
        prefix, run = name, 0
        while (root / f"{prefix}_0000").exists():   # never overwrite an earlier bag
            run += 1
            prefix = f"{name}_r{run}"
        try:
            self.writer = BagWriter(root, name=prefix, max_bytes=int(s.max_bag_size * 1e6),
                                    max_duration_s=s.max_bag_duration)
        except OSError as e:
            raise OSError(e.errno, f"cannot write bags under output_dir {str(root)!r}: "
                          f"{e.strerror or e}") from None
        self.received = {t: 0 for t in self.received}     # per bag: received == written
        for topic in list(self._subs):
            self._add_to_bag(topic)
        self.writer.add_topic(EPISODE_MARKER_TOPIC, "std_msgs/msg/UInt32")
        self.get_logger().info(f"recording {sorted(self.received)} to {self.writer.bag_paths[-1]}")
        return f"recording to {self.writer.bag_paths[-1]}"

    def stop(self) -> str:
        """Close the bag and print the summary line: per topic received / written / dropped.
        A bag that cannot be finished (even with the disk reserve released) is one error line
        naming ``mbrl-ros reindex``; the summary is printed either way."""
        error = None
        with self._write_lock:
            if self.writer is None:
                return "not recording"
            try:
                self.writer.close()
            except OSError as e:
                error = str(e)
                self.close_failed = True
            self.last_bag_paths = list(self.writer.bag_paths)
            paths = [str(p) for p in self.writer.bag_paths]
            counts = dict(self.writer.counts)
            self.writer = None
        summary = (f"{'closed' if error is None else 'could not finish'} {', '.join(paths)}: "
                   + ", ".join(f"{t} received {self.received.get(t, 0)} written "
                               f"{counts.get(t, 0)} dropped "
                               f"{self.received.get(t, 0) - counts.get(t, 0)}"
                               for t in sorted(self.received)))
        if error is not None:
            self.get_logger().error(error)
        self.get_logger().info(summary)     # once: the log line is the summary
        return summary

    _types: dict[str, str]

    @property
    def markers_written(self) -> int:
        """Episode markers recorded so far (the sim's latched episode-0 one included)."""
        return self._episodes

    def pending_topics(self) -> list[str]:
        """Listed topics not yet subscribed (their type is not known yet)."""
        return list(self._pending)

    def _resolve_topics(self) -> None:
        """Subscribe to listed topics, looking up unknown types in the ROS graph."""
        if not hasattr(self, "_types"):
            self._types = {}
        graph = None
        for topic, msgtype in list(self._pending.items()):
            # Subscribe once a publisher exists, matching its QoS as `ros2 bag record`
            # does: a reliable subscription would never match a best-effort publisher.
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue   # not advertised yet: try again on the next timer tick
            if msgtype is None:
                graph = graph if graph is not None else dict(self.get_topic_names_and_types())
                types = graph.get(topic)
                if not types:
                    continue
                msgtype = types[0]
            try:
                cls = _import_type(msgtype)
            except (ImportError, AttributeError, ValueError):
                self.get_logger().error(f"cannot record {topic}: message type {msgtype!r} "
                                        "is not installed")
                del self._pending[topic]
                continue
            self._types[topic] = msgtype
            if self.writer is not None and not self._add_to_bag(topic):
                del self._pending[topic]
                continue
            all_reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                               for p in publishers)
            qos = self._qos if all_reliable else QoSProfile(
                depth=self.settings.qos_depth, reliability=ReliabilityPolicy.BEST_EFFORT)
            self._subs[topic] = self.create_subscription(
                cls, topic, self._make_callback(topic), qos, raw=True,
                callback_group=self._group)
            del self._pending[topic]

    def _add_to_bag(self, topic: str) -> bool:
        """Register a topic with the open bag; a type the bag cannot describe is dropped
        with an error instead of stopping the recording of everything else."""
        try:
            self.writer.add_topic(topic, self._types[topic])
            return True
        except ValueError as e:
            self.get_logger().error(f"not recording {topic}: {e}")
            sub = self._subs.pop(topic, None)
            if sub is not None:
                self.destroy_subscription(sub)
            self.received.pop(topic, None)
            return False

    def _make_callback(self, topic: str):
        def _cb(data: bytes, info) -> None:
            with self._write_lock:
                if self.writer is None:
                    self.ignored[topic] += 1
                    return
                self.received[topic] += 1
                try:
                    self.writer.write_raw(topic, int(info["received_timestamp"]), data)
                except (ValueError, OSError, RuntimeError) as e:
                    self._write_failed(topic, e)
                    return
                self.written_total += 1
        return _cb

    def _write_failed(self, topic: str, e: Exception) -> None:
        # e.g. a full disk: one line a second; the messages lost are the difference between
        # received and the writer's count (a failed chunk takes its earlier messages with it)
        self.write_errors[topic] = self.write_errors.get(topic, 0) + 1
        dropped = sum(self.received.values()) - sum(self.writer.counts.values())
        self.get_logger().error(f"bag write failed, dropping messages ({dropped} so far): {e}",
                                throttle_duration_sec=1.0)

    def _write_marker(self, episode: int, t_ns: int) -> None:
        with self._write_lock:
            if self.writer is not None:
                marker = self.writer.typestore.types["std_msgs/msg/UInt32"](data=int(episode))
                try:
                    self.writer.write(EPISODE_MARKER_TOPIC, t_ns, marker)
                except (ValueError, OSError, RuntimeError) as e:
                    self._write_failed(EPISODE_MARKER_TOPIC, e)
            self._episodes += 1

    def _on_episode(self, msg: UInt32, info) -> None:
        # DDS receive time, the same clock as every other message's log time.
        self._write_marker(msg.data, int(info["received_timestamp"]))

    # ----------------------------------------------------------------- services
    def _srv_start(self, req, res):
        try:
            res.message, res.success = self.start(), True
        except OSError as e:
            res.message, res.success = str(e), False
            self.get_logger().error(res.message)
        return res

    def _srv_stop(self, req, res):
        res.message, res.success = self.stop(), True
        return res

    def _srv_split(self, req, res):
        self.stop()
        return self._srv_start(req, res)

    def _srv_mark(self, req, res):
        self._write_marker(self._episodes, time.time_ns())
        res.message, res.success = f"episode marker {self._episodes - 1} written", True
        return res

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        st = DiagnosticStatus(name=diagnostic_name(self), level=DiagnosticStatus.OK)
        st.message = (f"recording to {self.writer.bag_paths[-1]}" if self.writer is not None
                      else "idle")
        st.values = [KeyValue(key=f"received {t}", value=str(n))
                     for t, n in sorted(self.received.items())]
        st.values += [KeyValue(key=f"ignored while stopped {t}", value=str(n))
                      for t, n in sorted(self.ignored.items()) if n]
        st.values += [KeyValue(key=f"write errors {t}", value=str(n))
                      for t, n in sorted(self.write_errors.items())]
        if self.writer is not None:
            st.values += [KeyValue(key=f"dropped {t}", value=str(n))
                          for t, n in sorted(self.writer.dropped.items()) if n]
        if self.write_errors:
            st.level = DiagnosticStatus.ERROR
        st.values.append(KeyValue(key="written", value=str(self.written_total)))
        st.values.append(KeyValue(key="pending topics", value=",".join(self._pending)))
        arr.status = [st]
        self.diag_pub.publish(arr)

    # ----------------------------------------------------------------- shutdown
    def finish(self, executor) -> None:
        """Drain messages DDS already delivered, then close the bag (no data lost)."""
        deadline = time.monotonic() + 2.0
        idle_since = time.monotonic()
        before = sum(self.received.values())
        while time.monotonic() < deadline and time.monotonic() - idle_since < 0.1:
            executor.spin_once(timeout_sec=0.02)
            now_total = sum(self.received.values())
            if now_total != before:
                before, idle_since = now_total, time.monotonic()
        self.stop()


def main(args=None) -> None:
    nodes: list[DataLogger] = []

    def make() -> DataLogger:
        nodes.append(DataLogger())
        return nodes[-1]
    make.__name__ = "DataLogger"   # run_node names the node in its error line
    # One thread: callbacks run in arrival order and the drain at shutdown sees them all.
    run_node(make, args, threads=1)
    if nodes and nodes[0].close_failed:
        sys.exit(1)   # the bag could not be finished: not a clean recording


if __name__ == "__main__":
    main()
