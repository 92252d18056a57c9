"""Bag writing (BagWriter) and reading (read_bag), incl. damaged bags and bags from other writers."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader

from mbrl_ros.core.data import BagError, BagMessage, BagWriter, default_typestore, qos_profile, read_bag

TS = default_typestore()
JointState = TS.types["sensor_msgs/msg/JointState"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
F64 = TS.types["std_msgs/msg/Float64MultiArray"]
Layout = TS.types["std_msgs/msg/MultiArrayLayout"]
U32 = TS.types["std_msgs/msg/UInt32"]

JS_TOPIC, CMD_TOPIC, EP_TOPIC = "/joint_states", "/effort_controller/commands", "/data_logger/episode"
T0 = 1_700_000_000 * 1_000_000_000
NAMES = ["shoulder", "elbow"]


def js(k, stamp_ns):
    return JointState(
        header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="base"),
        name=list(NAMES), position=np.array([k, -k], float), velocity=np.array([0.5 * k, 1.0]),
        effort=np.zeros(0),
    )


def cmd(k):
    return F64(layout=Layout(dim=[], data_offset=0), data=np.array([k + 0.25, -k - 0.25]))


def write_session(out_root, n=300, episode_every=100, **writer_kw):
    """n states at 100 Hz, a command 2 ms after each, a marker every `episode_every` states."""
    with BagWriter(out_root, **writer_kw) as w:
        w.add_topic(JS_TOPIC, "sensor_msgs/msg/JointState", qos_profile(reliability="best_effort"))
        w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")
        w.add_topic(EP_TOPIC, "std_msgs/msg/UInt32")
        for k in range(n):
            t = T0 + k * 10_000_000
            if k % episode_every == 0:
                w.write(EP_TOPIC, t - 1_000, U32(data=k // episode_every))
            w.write(JS_TOPIC, t, js(k, 5 * 10**9 + k * 10_000_000))
            w.write(CMD_TOPIC, t + 2_000_000, cmd(k))
    return w


def check_values(msgs):
    """Every message carries its index k: check content and order."""
    states = [m for m in msgs if m.topic == JS_TOPIC]
    cmds = [m for m in msgs if m.topic == CMD_TOPIC]
    for m in states:
        k = int(round((m.log_time_ns - T0) / 10_000_000))
        assert list(m.msg.name) == NAMES
        np.testing.assert_array_equal(m.msg.position, [k, -k])
        assert m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec == 5 * 10**9 + k * 10_000_000
    for m in cmds:
        k = int(round((m.log_time_ns - 2_000_000 - T0) / 10_000_000))
        np.testing.assert_array_equal(m.msg.data, [k + 0.25, -k - 0.25])
    times = [m.log_time_ns for m in msgs]
    assert times == sorted(times)
    return states, cmds


# ---------------------------------------------------------------------------------------- writing
def test_write_read_roundtrip(tmp_path):
    w = write_session(tmp_path)
    assert w.bag_paths == [tmp_path / "bag_0000"] and w.closed
    assert w.messages_written == 603 and w.counts == {JS_TOPIC: 300, CMD_TOPIC: 300, EP_TOPIC: 3}
    assert (tmp_path / "bag_0000" / "metadata.yaml").is_file()
    msgs, rep = read_bag(tmp_path / "bag_0000")
    assert rep.complete and rep.damage == []
    assert rep.counts == {CMD_TOPIC: 300, EP_TOPIC: 3, JS_TOPIC: 300}
    assert rep.topics[JS_TOPIC] == "sensor_msgs/msg/JointState"
    assert rep.topics[CMD_TOPIC] == "std_msgs/msg/Float64MultiArray"
    states, cmds = check_values(msgs)
    assert len(states) == len(cmds) == 300
    assert [m.msg.data for m in msgs if m.topic == EP_TOPIC] == [0, 1, 2]
    # topic filter; unknown topic -> count 0, not an error
    msgs2, rep2 = read_bag(tmp_path, topics=[JS_TOPIC, "/nope"])
    assert len(msgs2) == 300 and rep2.counts == {JS_TOPIC: 300, "/nope": 0}
    assert set(rep2.topics) == {JS_TOPIC, CMD_TOPIC, EP_TOPIC}


def test_other_tools_read_our_bags(tmp_path):
    write_session(tmp_path, n=120)
    bag = tmp_path / "bag_0000"
    # rosbags AnyReader, directly
    with AnyReader([bag]) as reader:
        got = [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert len(got) == 120 * 2 + 2
    first_js = next(m for topic, _, m in got if topic == JS_TOPIC)
    np.testing.assert_array_equal(first_js.position, [0.0, 0.0])
    # the mcap library's reader + ROS 2 decoder (what Foxglove & co. use)
    with open(bag / "bag_0000.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        decoded = list(reader.iter_decoded_messages())
    assert len(decoded) == 242
    by_topic = {}
    for schema, channel, message, ros_msg in decoded:
        by_topic.setdefault(channel.topic, []).append((message.log_time, ros_msg))
    assert len(by_topic[JS_TOPIC]) == 120 and len(by_topic[CMD_TOPIC]) == 120
    t, m = by_topic[JS_TOPIC][7]
    assert t == T0 + 7 * 10_000_000 and list(m.position) == [7.0, -7.0] and list(m.name) == NAMES
    assert list(by_topic[CMD_TOPIC][3][1].data) == [3.25, -3.25]
    assert [m.data for _, m in by_topic[EP_TOPIC]] == [0, 1]


def test_split_by_max_bytes(tmp_path):
    w = write_session(tmp_path, n=200, max_bytes=20_000)
    assert len(w.bag_paths) >= 3
    assert [p.name for p in w.bag_paths] == [f"bag_{i:04d}" for i in range(len(w.bag_paths))]
    total = 0
    for p in w.bag_paths:
        assert (p / "metadata.yaml").is_file()
        size = (p / f"{p.name}.mcap").stat().st_size
        assert 20_000 * 0.6 < size < 20_000 * 1.1 or p == w.bag_paths[-1]
        with AnyReader([p]) as reader:  # each split is a complete bag on its own
            total += reader.message_count
    assert total == 402
    msgs, rep = read_bag(tmp_path)  # directory of bags: all, in time order
    assert rep.complete and len(msgs) == 402 and rep.paths == [str(p) for p in w.bag_paths]
    states, cmds = check_values(msgs)
    assert len(states) == 200
    # a list of bag paths works too (duplicates ignored)
    msgs2, _ = read_bag([w.bag_paths[1], w.bag_paths[0], w.bag_paths[0]])
    assert len(msgs2) < 402 and [m.log_time_ns for m in msgs2] == sorted(m.log_time_ns for m in msgs2)


def test_split_by_duration(tmp_path):
    w = write_session(tmp_path, n=250, max_duration_s=1.0)
    assert len(w.bag_paths) == 3  # 2.5 s of data
    for p in w.bag_paths:
        with AnyReader([p]) as reader:
            assert reader.duration < 1.0e9
    msgs, rep = read_bag(tmp_path)
    assert len(msgs) == 503 and rep.complete


def test_writer_refuses_overwrite_and_bad_input(tmp_path):
    write_session(tmp_path, n=5)
    with pytest.raises(FileExistsError, match="bag_0000"):
        BagWriter(tmp_path)
    w = BagWriter(tmp_path, name="other")
    with pytest.raises(ValueError, match="my_pkg/msg/Nope"):
        w.add_topic("/x", "my_pkg/msg/Nope")
    with pytest.raises(ValueError, match="not added"):
        w.write("/unknown", T0, cmd(0))
    w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")
    w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")  # idempotent
    with pytest.raises(ValueError, match="already added"):
        w.add_topic(CMD_TOPIC, "std_msgs/msg/UInt32")
    with pytest.raises(ValueError, match="encapsulation"):
        w.write_raw(CMD_TOPIC, T0, b"\xff\xff\x00")
    # raw CDR bytes as a DDS subscription with raw=True delivers them
    w.write_raw(CMD_TOPIC, T0, bytes(TS.serialize_cdr(cmd(4), "std_msgs/msg/Float64MultiArray")))
    w.close()
    w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.write(CMD_TOPIC, T0, cmd(1))
    msgs, rep = read_bag(tmp_path / "other_0000")
    assert len(msgs) == 1 and list(msgs[0].msg.data) == [4.25, -4.25]


def test_empty_bag_dir_reused(tmp_path):
    (tmp_path / "bag_0000").mkdir()  # empty dir: fine to reuse
    write_session(tmp_path, n=3)
    assert read_bag(tmp_path)[1].counts[JS_TOPIC] == 3


# ---------------------------------------------------------------------------------------- damage
def cut(path: Path, keep_fraction: float):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def test_truncated_bag_returns_messages_before_damage(tmp_path):
    w = write_session(tmp_path / "orig", n=600, chunk_bytes=8_000)
    full, _ = read_bag(w.bag_paths[0])
    bag = tmp_path / "cut"
    shutil.copytree(w.bag_paths[0], bag)
    mcap_file = bag / "bag_0000.mcap"
    cut(mcap_file, 0.7)
    msgs, rep = read_bag(bag)
    assert not rep.complete
    assert len(rep.damage) == 1 and str(mcap_file) in str(rep.damage[0]) and "truncated" in str(rep.damage[0])
    assert 0.5 * len(full) < len(msgs) < 0.75 * len(full)
    # exactly the leading messages of the intact bag, decoded identically
    assert [(m.topic, m.log_time_ns) for m in msgs] == [(m.topic, m.log_time_ns) for m in full[: len(msgs)]]
    check_values(msgs)
    assert sum(rep.counts.values()) == len(msgs)


def test_truncated_inside_single_chunk(tmp_path):
    """rosbags keeps one chunk in memory; a cut inside it still yields the complete leading records."""
    w = write_session(tmp_path / "orig", n=200, chunk_bytes=0, flush_interval_s=0)
    mcap_file = w.bag_paths[0] / "bag_0000.mcap"
    cut(mcap_file, 0.5)
    msgs, rep = read_bag(mcap_file)  # a bare .mcap path
    assert not rep.complete and str(mcap_file) in str(rep.damage[0])
    assert 100 < len(msgs) < 300
    check_values(msgs)


def test_killed_logger_leaves_readable_bag(tmp_path):
    """A process killed without close(): no metadata.yaml, no footer; flushed chunks are recovered."""
    w = BagWriter(tmp_path / "live", flush_interval_s=0.5)
    w.add_topic(JS_TOPIC, "sensor_msgs/msg/JointState")
    for k in range(230):  # 2.3 s of log time -> chunks flushed at 0.5 s intervals
        w.write(JS_TOPIC, T0 + k * 10_000_000, js(k, 5 * 10**9 + k * 10_000_000))
    crashed = tmp_path / "crashed"
    shutil.copytree(w.bag_paths[0], crashed)  # the files as they are on disk right now
    w.close()
    assert not (crashed / "metadata.yaml").exists()
    msgs, rep = read_bag(crashed)
    assert not rep.complete and "without a Footer" in str(rep.damage[0])
    assert 200 <= len(msgs) < 230
    check_values(msgs)


def test_garbage_appended(tmp_path):
    w = write_session(tmp_path, n=50)
    mcap_file = w.bag_paths[0] / "bag_0000.mcap"
    with open(mcap_file, "ab") as f:
        f.write(b"\x00garbage" * 10)
    msgs, rep = read_bag(w.bag_paths[0])
    assert len(msgs) == 101 and not rep.complete and str(mcap_file) in str(rep.damage[0])


def test_crc_error_skips_only_the_bad_chunk(tmp_path):
    """A bag from the mcap library's ROS 2 writer (CRCs on): corrupt one chunk's payload."""
    from mcap.writer import CompressionType
    from mcap_ros2.writer import Writer as McapRos2Writer

    path = tmp_path / "crc.mcap"
    msgdef, _ = TS.generate_msgdef("std_msgs/msg/Float64MultiArray", ros_version=2)
    with open(path, "wb") as f:
        w = McapRos2Writer(f, chunk_size=2_000, compression=CompressionType.NONE)
        schema = w.register_msgdef("std_msgs/msg/Float64MultiArray", msgdef)
        for k in range(300):
            w.write_message(CMD_TOPIC, schema, {"layout": {"dim": [], "data_offset": 0}, "data": [k + 0.25, -k - 0.25]},
                            log_time=T0 + k * 10_000_000 + 2_000_000)
        w.finish()
    data = bytearray(path.read_bytes())
    needle = np.array([150.25, -150.25]).tobytes()
    pos = data.index(needle)
    data[pos + 3] ^= 0x40  # silently changes a float: only the CRC can tell
    path.write_bytes(bytes(data))
    msgs, rep = read_bag(path)
    assert not rep.complete and "chunk" in str(rep.damage[0]) and "crc" in str(rep.damage[0]).lower()
    ks = [int(round((m.log_time_ns - T0 - 2_000_000) / 10_000_000)) for m in msgs]
    assert 150 not in ks and len(ks) > 250 and ks == sorted(ks)
    check_values(msgs)


def test_bare_mcap_from_mcap_ros2_writer(tmp_path):
    """Like another recorder would produce: a bare .mcap (zstd chunks), no metadata.yaml."""
    from mcap_ros2.writer import Writer as McapRos2Writer

    path = tmp_path / "other_recorder.mcap"
    msgdef, _ = TS.generate_msgdef("sensor_msgs/msg/JointState", ros_version=2)
    with open(path, "wb") as f:
        w = McapRos2Writer(f)
        schema = w.register_msgdef("sensor_msgs/msg/JointState", msgdef)
        for k in range(40):
            stamp = 5 * 10**9 + k * 10_000_000
            w.write_message(JS_TOPIC, schema, {
                "header": {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "frame_id": "base"},
                "name": NAMES, "position": [float(k), float(-k)], "velocity": [0.5 * k, 1.0], "effort": [],
            }, log_time=T0 + k * 10_000_000)
        w.finish()
    msgs, rep = read_bag(path)
    assert rep.complete and rep.counts == {JS_TOPIC: 40} and rep.topics == {JS_TOPIC: "sensor_msgs/msg/JointState"}
    states, _ = check_values(msgs)
    assert len(states) == 40
    # a directory holding it is found as well
    assert len(read_bag(tmp_path)[0]) == 40


def test_bad_paths_raise_bag_error(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(BagError, match=str(missing)):
        read_bag(missing)
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"this is not a bag at all\n" * 40)
    with pytest.raises(BagError, match=f"{garbage}.*not a bag"):
        read_bag(garbage)
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    with pytest.raises(BagError, match=f"{empty}.*empty"):
        read_bag(empty)
    nobag = tmp_path / "nobag"
    nobag.mkdir()
    (nobag / "readme.txt").write_text("hi")
    with pytest.raises(BagError, match=f"{nobag}.*no rosbag2 bag"):
        read_bag(nobag)
    # valid magic but nothing readable after it
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"\x89MCAP0\r\n" + b"\x01" + b"\xff" * 40)
    with pytest.raises(BagError, match=f"{junk}.*no readable messages"):
        read_bag(junk)


# ---------------------------------------------------------------------------------------- misc
def test_close_from_signal_handler_during_write(tmp_path):
    """close() called while this thread is inside write() (as a signal handler would) is deferred
    to the end of that write; the bag is then finalized with the message in it."""
    w = BagWriter(tmp_path)
    w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")
    w.write(CMD_TOPIC, T0, cmd(0))
    inner = w._writer.write

    def write_interrupted(*args):
        w.close()  # "signal" arrives mid-write
        assert not w.closed
        inner(*args)

    w._writer.write = write_interrupted
    w.write(CMD_TOPIC, T0 + 1, cmd(1))
    assert w.closed
    msgs, rep = read_bag(tmp_path)
    assert rep.complete and [list(m.msg.data) for m in msgs] == [[0.25, -0.25], [1.25, -1.25]]


def test_concurrent_writers_threads(tmp_path):
    import threading

    w = BagWriter(tmp_path, max_bytes=30_000)
    w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")
    w.add_topic(EP_TOPIC, "std_msgs/msg/UInt32")

    def run(topic, make):
        for k in range(300):
            w.write(topic, T0 + k * 10_000_000, make(k))

    threads = [threading.Thread(target=run, args=(CMD_TOPIC, cmd)), threading.Thread(target=run, args=(EP_TOPIC, lambda k: U32(data=k)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    msgs, rep = read_bag(tmp_path)
    assert rep.complete and rep.counts == {CMD_TOPIC: 300, EP_TOPIC: 300} and len(w.bag_paths) > 1


def test_trailing_bytes_tolerated(tmp_path):
    """rclpy.serialize_message may append bytes after the CDR payload; reading tolerates them."""
    with BagWriter(tmp_path) as w:
        w.add_topic(JS_TOPIC, "sensor_msgs/msg/JointState")
        raw = bytes(TS.serialize_cdr(js(3, 5 * 10**9 + 30_000_000), "sensor_msgs/msg/JointState"))
        w.write_raw(JS_TOPIC, T0 + 30_000_000, raw + b"\x00" * 8)
    msgs, rep = read_bag(tmp_path)
    assert rep.complete and len(msgs) == 1 and any("trailing bytes" in n for n in rep.notes)
    check_values(msgs)


def test_reads_sqlite3_bags(tmp_path):
    """ros2 bag record's classic storage (sqlite3 .db3) is read through AnyReader."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    with Writer(tmp_path / "db3bag", version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        conn = w.add_connection(JS_TOPIC, "sensor_msgs/msg/JointState", typestore=TS)
        for k in range(10):
            w.write(conn, T0 + k * 10_000_000, TS.serialize_cdr(js(k, 5 * 10**9 + k * 10_000_000), "sensor_msgs/msg/JointState"))
    msgs, rep = read_bag(tmp_path / "db3bag")
    assert rep.complete and rep.counts == {JS_TOPIC: 10}
    check_values(msgs)


# ---------------------------------------------------------------------------------------- integrity (issue 11)
def _chunk_crcs(mcap_file):
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    with open(mcap_file, "rb") as f:
        return [r.uncompressed_crc for r in StreamReader(f, emit_chunks=True).records if isinstance(r, Chunk)]


def test_writer_puts_crcs_on_every_chunk(tmp_path):
    w = write_session(tmp_path, n=600, chunk_bytes=8_000)
    crcs = _chunk_crcs(w.bag_paths[0] / "bag_0000.mcap")
    assert len(crcs) > 5 and all(crcs)


@pytest.mark.parametrize("where", [0.5, 0.7])
def test_random_bytes_report_every_damaged_chunk(tmp_path, where):
    """Issue 11: 4 KiB of random bytes inside a logger bag. Every damaged chunk is reported with
    its file, byte offset and the messages lost; the rest is read; the dataset says incomplete."""
    from mcap.reader import make_reader

    from mbrl_ros.core.data import AlignmentConfig, bag_to_dataset

    w = write_session(tmp_path / "orig", n=2000, episode_every=10**9, chunk_bytes=20_000)
    full, _ = read_bag(w.bag_paths[0])
    bag = tmp_path / "hit"
    shutil.copytree(w.bag_paths[0], bag)
    f = bag / "bag_0000.mcap"
    data = bytearray(f.read_bytes())
    pos = int(len(data) * where)
    data[pos:pos + 4096] = np.random.default_rng(int(where * 10)).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))
    with open(w.bag_paths[0] / "bag_0000.mcap", "rb") as fh:
        chunks = make_reader(fh).get_summary().chunk_indexes
    hit = [c for c in chunks if c.chunk_start_offset < pos + 4096 and pos < c.chunk_start_offset + c.chunk_length]
    msgs, rep = read_bag(bag)
    assert not rep.complete and rep.damage
    lost = len(full) - len(msgs)
    assert lost > 0 and sum(d.messages_lost for d in rep.damage) == lost   # every loss accounted for
    for d in rep.damage:
        assert d.file == str(f) and d.offset is not None and d.messages_lost is not None
        assert str(f) in str(d) and f"byte {d.offset}" in str(d) and f"{d.messages_lost} messages lost" in str(d)
    assert {d.offset for d in rep.damage} <= {c.chunk_start_offset for c in hit} | set(range(pos, pos + 4096))
    # what was read is exactly the intact messages, values checked
    intact = {(m.topic, m.log_time_ns) for m in full}
    assert {(m.topic, m.log_time_ns) for m in msgs} <= intact
    check_values(msgs)
    batch, _, bag_rep = bag_to_dataset(bag, AlignmentConfig())
    assert batch.meta["bags_complete"] is False
    assert batch.meta["bag_damage"] == [d.to_dict() for d in rep.damage]
    assert np.all(np.isfinite(batch.states)) and np.all(np.isfinite(batch.actions))


def test_crc0_chunk_damage_is_found_through_the_message_index(tmp_path):
    """A bag from a writer without CRCs (rosbags writes 0): overwriting message records inside a
    chunk breaks its framing or its count; either way the chunk is reported, not read silently."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    bag = tmp_path / "crc0"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(JS_TOPIC, "sensor_msgs/msg/JointState", typestore=TS)
        for k in range(400):
            w.write(conn, T0 + k * 10_000_000, TS.serialize_cdr(js(k, 5 * 10**9 + k * 10_000_000), "sensor_msgs/msg/JointState"))
    f = bag / "crc0.mcap"
    assert _chunk_crcs(f) == [0]
    data = bytearray(f.read_bytes())
    pos = len(data) // 2
    data[pos:pos + 64] = b"\xff" * 64
    f.write_bytes(bytes(data))
    msgs, rep = read_bag(bag)
    assert not rep.complete and len(msgs) < 400
    assert all(d.messages_lost is not None for d in rep.damage)
    assert sum(d.messages_lost for d in rep.damage) == 400 - len(msgs)


def test_disk_full_drops_whole_chunks_and_keeps_the_bag_valid(tmp_path):
    """A chunk write that fails (ENOSPC) is cut from the file and its messages are counted as
    dropped; later chunks and the close still work, and metadata.yaml counts what is there."""
    import errno

    w = BagWriter(tmp_path, chunk_bytes=2_000, flush_interval_s=0)
    w.add_topic(JS_TOPIC, "sensor_msgs/msg/JointState")
    storage = w._writer.storage
    real_write = storage._file.write
    state = {"full": False}

    def write(data):
        if state["full"]:
            real_write(bytes(data)[: len(data) // 2])   # a partial write, then the error
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(data)

    # FileIO.write cannot be patched on the instance: stand in for the file object
    storage._file = type("FullDisk", (), {"write": staticmethod(write), "truncate": storage._file.truncate,
                                          "seek": storage._file.seek, "tell": storage._file.tell,
                                          "close": storage._file.close})()
    failures = 0
    for k in range(300):
        state["full"] = 100 <= k < 200
        try:
            w.write(JS_TOPIC, T0 + k * 10_000_000, js(k, 5 * 10**9 + k * 10_000_000))
        except OSError as e:
            assert e.errno == errno.ENOSPC
            failures += 1
    w.close()
    assert failures > 0 and w.dropped[JS_TOPIC] > 0
    assert w.counts[JS_TOPIC] + w.dropped[JS_TOPIC] == 300
    import yaml

    meta = yaml.safe_load((tmp_path / "bag_0000" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["message_count"] == w.counts[JS_TOPIC]
    msgs, rep = read_bag(tmp_path / "bag_0000")
    assert rep.complete and len(msgs) == w.counts[JS_TOPIC]
    check_values(msgs)
    with AnyReader([tmp_path / "bag_0000"]) as reader:
        assert reader.message_count == w.counts[JS_TOPIC]


def test_reindex_a_killed_loggers_bag(tmp_path):
    """After kill -9: no metadata.yaml, no summary/footer, the disk reserve file left behind.
    reindex_bag rewrites what is readable into a complete bag that rosbags and the mcap tools open."""
    from mbrl_ros.core.data import reindex_bag

    w = BagWriter(tmp_path / "live", flush_interval_s=0.5)
    w.add_topic(JS_TOPIC, "sensor_msgs/msg/JointState", qos_profile(reliability="best_effort", depth=7))
    w.add_topic(CMD_TOPIC, "std_msgs/msg/Float64MultiArray")
    for k in range(230):
        w.write(JS_TOPIC, T0 + k * 10_000_000, js(k, 5 * 10**9 + k * 10_000_000))
        w.write(CMD_TOPIC, T0 + k * 10_000_000 + 2_000_000, cmd(k))
    crashed = tmp_path / "crashed" / "bag_0000"
    shutil.copytree(w.bag_paths[0], crashed)   # the files as a kill -9 leaves them
    w.close()
    assert sorted(p.name for p in crashed.iterdir()) == [".mbrl_reserve", "bag_0000.mcap"]
    with pytest.raises(Exception):
        AnyReader([crashed]).open()
    before, _ = read_bag(crashed)

    rep = reindex_bag(crashed)
    assert sorted(p.name for p in crashed.iterdir()) == ["bag_0000.mcap", "bag_0000.mcap.orig", "metadata.yaml"]
    assert rep.backups == [crashed / "bag_0000.mcap.orig"] and "without a Footer" in str(rep.damage[0])
    assert sum(rep.counts.values()) == len(before) >= 400
    with AnyReader([crashed]) as reader:
        assert reader.message_count == len(before)
        js_conn = next(c for c in reader.connections if c.topic == JS_TOPIC)
        assert js_conn.msgtype == "sensor_msgs/msg/JointState"
        assert js_conn.ext.offered_qos_profiles[0].depth == 7       # QoS kept from the channel record
        got = [BagMessage(c.topic, c.msgtype, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    check_values(got)
    assert [(m.topic, m.log_time_ns) for m in got] == [(m.topic, m.log_time_ns) for m in before]
    msgs, rep2 = read_bag(crashed)
    assert rep2.complete and len(msgs) == len(before)
    assert all(_chunk_crcs(crashed / "bag_0000.mcap"))


def test_reindex_errors(tmp_path):
    from mbrl_ros.core.data import reindex_bag

    with pytest.raises(BagError, match="no such bag directory"):
        reindex_bag(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no .mcap file"):
        reindex_bag(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "junk.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x01" + b"\xff" * 40)
    with pytest.raises(BagError, match="no readable message"):
        reindex_bag(junk)
    assert sorted(p.name for p in junk.iterdir()) == ["junk.mcap"]   # nothing touched
