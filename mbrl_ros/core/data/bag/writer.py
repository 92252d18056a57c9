"""Writing bags: :class:`BagWriter` (rosbag2 directories with splitting and periodic flushing)
and :func:`qos_profile` for the offered QoS recorded per topic."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from .mcap_storage import ChunkWriteError, _CrcMcapStorage, _RosbagWriter
from .serde import default_typestore

__all__ = ['BagWriter', 'qos_profile']


_QOS_ENUMS = {
    "history": QosHistory, "reliability": QosReliability, "durability": QosDurability,
    "liveliness": QosLiveliness,
}


def qos_profile(
    reliability: str = "reliable",
    durability: str = "volatile",
    history: str = "keep_last",
    depth: int = 10,
    liveliness: str = "automatic",
) -> Qos:
    """A rosbags ``Qos`` (for ``BagWriter.add_topic``) from ROS-style lowercase names."""

    def enum(kind: str, value: str) -> Any:
        try:
            return _QOS_ENUMS[kind][value.upper()]
        except KeyError:
            choices = [e.name.lower() for e in _QOS_ENUMS[kind]]
            raise ValueError(f"qos_profile: unknown {kind} {value!r}; expected one of {choices}") from None

    zero = QosTime(0, 0)
    return Qos(
        history=enum("history", history), depth=int(depth), reliability=enum("reliability", reliability),
        durability=enum("durability", durability), deadline=zero, lifespan=zero,
        liveliness=enum("liveliness", liveliness), liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


# Size estimate of a bag (MCAP) for splitting: records are counted as they are written, the summary
# section written at close (schemas/channels repeated, chunk indexes, statistics, the metadata YAML
# that rosbags embeds) is estimated up front.
_MSG_OVERHEAD = 31 + 16  # Message record header + its MessageIndex entry
_BAG_OVERHEAD = 1500  # magic, header, footer, statistics, summary offsets, metadata base
_CHUNK_OVERHEAD = 150  # chunk record header + chunk index + message index headers (approx)
_TOPIC_METADATA = 600  # per topic: its entry in the embedded metadata YAML (QoS, type hash)
_MAX_CHUNK_BYTES = 2**20  # chunk size cap when chunk_bytes is 0 (rosbags' own limit)


class BagWriter:
    """rosbag2 bag (metadata.yaml + MCAP, rosbags ``Writer`` version 9) with splitting.

    Bags are ``out_root/<name>_0000``, ``<name>_0001``, ...; a new one is started when writing the
    next message would make the current bag exceed ``max_bytes`` (approximate: serialized bytes plus
    record overhead) or when the message's log time is ``max_duration_s`` or more after the bag's
    first message (0 = no limit). Each closed bag is complete and any rosbag2 reader opens it.

    Durability: the MCAP chunk being built is flushed to the file when it reaches ``chunk_bytes`` or
    when ``flush_interval_s`` of log time passed since the last flush (0 disables either; chunks are
    capped at 1 MiB), so a process killed without ``close()`` leaves an MCAP file whose flushed
    chunks :func:`read_bag` recovers and :func:`reindex_bag` rewrites. Every chunk carries a CRC32.

    Faults: a chunk whose write fails (e.g. ENOSPC) is removed from the file again and its messages
    move from ``counts`` to ``dropped``; the write that triggered the flush raises that OSError
    (:class:`ChunkWriteError`). A reserve file (``.mbrl_reserve``, about 64 KiB plus 256 bytes per
    chunk) is kept in the bag directory and released by ``close()``, so the summary and
    metadata.yaml can still be written on a full disk; metadata.yaml then counts what is in the file.
    ``close()`` raises OSError (naming ``mbrl-ros reindex``) only if even that fails.

    Thread safety: all methods take an internal lock. ``close()`` is idempotent and may be called
    from a signal handler: if the signal interrupted a ``write`` in the same thread, the close is
    deferred to the end of that write.
    """

    def __init__(
        self,
        out_root: Path | str,
        name: str = "bag",
        max_bytes: int = 0,
        max_duration_s: float = 0.0,
        *,
        chunk_bytes: int = 256 * 1024,
        flush_interval_s: float = 1.0,
        custom_data: Mapping[str, str] | None = None,
        typestore: Any = None,
    ) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"BagWriter: invalid bag name {name!r}")
        if max_bytes < 0 or max_duration_s < 0:
            raise ValueError("BagWriter: max_bytes and max_duration_s must be >= 0 (0 = no split)")
        self.out_root = Path(out_root)
        self.name = name
        self.max_bytes = int(max_bytes)
        self.max_duration_ns = int(round(float(max_duration_s) * 1e9))
        self.chunk_bytes = int(chunk_bytes)
        self.flush_interval_ns = int(round(float(flush_interval_s) * 1e9))
        self.custom_data = {str(k): str(v) for k, v in (custom_data or {}).items()}
        self.typestore = typestore if typestore is not None else default_typestore()

        self.bag_paths: list[Path] = []
        self.messages_written = 0
        self.bytes_written = 0
        self.counts: dict[str, int] = {}  # topic -> messages in the bags (pending chunk included)
        self.dropped: dict[str, int] = {}  # topic -> messages lost because a chunk write failed
        self.errors: list[str] = []  # write failures, oldest first (at most 100 kept)

        self._lock = threading.RLock()
        self._busy = False
        self._close_requested = False
        self._closed = False
        self._writer: Writer | None = None
        self._topics: dict[str, tuple[str, tuple[Qos, ...]]] = {}
        self._conns: dict[str, Any] = {}
        self._bag_bytes = 0
        self._bag_t0: int | None = None
        self._last_flush_t: int | None = None

        self.out_root.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"{re.escape(name)}_\d{{4,}}")
        for d in sorted(self.out_root.iterdir()):
            if d.is_dir() and pattern.fullmatch(d.name) and any(d.iterdir()):
                raise FileExistsError(f"{d}: bag directory already exists and is not empty; refusing to overwrite")
        self._open_next()

    # -- internals ----------------------------------------------------------------------
    def _open_next(self) -> None:
        path = self.out_root / f"{self.name}_{len(self.bag_paths):04d}"
        if path.exists():
            if not path.is_dir() or any(path.iterdir()):
                raise FileExistsError(f"{path}: bag directory already exists and is not empty; refusing to overwrite")
            path.rmdir()
        writer = _RosbagWriter(path, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.set_custom_data("mbrl_ros.split_index", str(len(self.bag_paths)))
        for k, v in self.custom_data.items():
            writer.set_custom_data(k, v)
        try:
            writer.open()
        except OSError:
            # e.g. a full disk: remove the half-made directory so the next attempt can use the name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            raise
        self._writer = writer
        self.bag_paths.append(path)
        self._conns = {}
        self._bag_types: set[str] = set()
        self._bag_bytes = _BAG_OVERHEAD + _CHUNK_OVERHEAD
        for topic, (msgtype, qos) in self._topics.items():
            self._add_connection(topic, msgtype, qos)
        self._bag_t0 = None
        self._last_flush_t = None

    def _add_connection(self, topic: str, msgtype: str, qos: tuple[Qos, ...]) -> None:
        assert self._writer is not None
        conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore, offered_qos_profiles=list(qos))
        self._conns[topic] = conn
        # schema (if new) + channel, each written twice (data section and summary)
        schema = len(conn.msgdef.data) + len(msgtype) + 30 if msgtype not in self._bag_types else 0
        self._bag_types.add(msgtype)
        self._bag_bytes += 2 * (schema + len(topic) + 60 + 300 * len(qos)) + _TOPIC_METADATA + 15

    def _storage(self) -> _CrcMcapStorage | None:
        storage = getattr(self._writer, "storage", None)
        return storage if isinstance(storage, _CrcMcapStorage) else None

    def _flush_chunk(self) -> None:
        """Write the pending chunk (unbuffered). A failed write drops its messages: they are moved
        from ``counts`` to ``dropped`` and removed from the counts rosbags writes into metadata.yaml,
        then the ChunkWriteError is raised."""
        storage = self._storage()
        if storage is None or not any(storage.chunk.msgs.values()):
            return
        try:
            storage.close_chunk()
        except ChunkWriteError as exc:
            topic_of = {conn.id: topic for topic, conn in self._conns.items()}
            assert self._writer is not None
            for cid, n in exc.dropped.items():
                topic = topic_of[cid]
                self.counts[topic] -= n
                self.dropped[topic] = self.dropped.get(topic, 0) + n
                self._writer.counts[cid] -= n
                self.messages_written -= n
            if len(self.errors) < 100:
                self.errors.append(f"{storage.path}: {exc}")
            raise
        self._bag_bytes += _CHUNK_OVERHEAD

    def _enter(self) -> None:
        self._lock.acquire()
        self._busy = True

    def _exit(self) -> None:
        try:
            self._busy = False
            if self._close_requested and not self._closed:
                self._close_impl()
        finally:
            self._lock.release()

    def _close_impl(self) -> None:
        self._closed = True
        self._finish_bag()

    def _finish_bag(self) -> None:
        """Close the current bag: release the disk reserve, write the last chunk (or count it as
        dropped), then the summary and a metadata.yaml that counts only what is in the file.
        Raises OSError (naming the bag and ``mbrl-ros reindex``) if even that cannot be written."""
        writer, storage = self._writer, self._storage()
        if writer is None:
            return
        if storage is not None:
            storage.reserve.release()
            try:
                self._flush_chunk()
            except ChunkWriteError:
                pass  # counted as dropped
            if storage.t_range is not None:
                writer.min_timestamp, writer.max_timestamp = storage.t_range
            else:
                writer.min_timestamp, writer.max_timestamp = 0, 0
        self._writer = None
        try:
            writer.close()
        except OSError as exc:
            with contextlib.suppress(Exception):
                writer.abort()
            bag = self.bag_paths[-1]
            raise OSError(exc.errno, f"{bag}: cannot finish the bag ({exc.strerror or exc}); its flushed "
                          f"chunks are on disk: `mbrl-ros reindex {bag}` rebuilds metadata.yaml") from exc

    def _check_open(self) -> None:
        if self._closed or self._close_requested:
            raise RuntimeError(f"BagWriter for {self.out_root / self.name}_*: already closed")

    # -- public -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def topics(self) -> dict[str, str]:
        return {t: m for t, (m, _) in self._topics.items()}

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] | Qos | None = None) -> None:
        """Register a topic (idempotent for the same type). msgtype like 'sensor_msgs/msg/JointState'.

        ``qos``: offered QoS profile(s) recorded in the metadata (rosbags ``Qos``, see ``qos_profile``).
        """
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f"BagWriter.add_topic: message type {msgtype!r} (topic {topic!r}) is not in the typestore")
        if not isinstance(topic, str) or not topic.startswith("/"):
            raise ValueError(f"BagWriter.add_topic: topic must be an absolute name like '/joint_states', got {topic!r}")
        qos_t: tuple[Qos, ...] = () if qos is None else ((qos,) if isinstance(qos, Qos) else tuple(qos))
        self._enter()
        try:
            self._check_open()
            if topic in self._topics:
                if self._topics[topic][0] != msgtype:
                    raise ValueError(
                        f"BagWriter.add_topic: {topic!r} already added as {self._topics[topic][0]!r}, not {msgtype!r}"
                    )
                return
            self._topics[topic] = (msgtype, qos_t)
            self.counts.setdefault(topic, 0)
            self._add_connection(topic, msgtype, qos_t)
        finally:
            self._exit()

    def write_raw(self, topic: str, log_time_ns: int, cdr: bytes | bytearray | memoryview) -> None:
        """Write serialized CDR bytes (with the 4-byte encapsulation header), e.g. as received by a
        DDS subscription with raw=True. ``log_time_ns``: receive time, ns since the epoch."""
        data = bytes(cdr)
        if len(data) < 4 or data[0] != 0 or data[1] not in (0, 1):
            raise ValueError(
                f"BagWriter.write_raw({topic!r}): not CDR data (needs a 4-byte encapsulation header 00 00/00 01, "
                f"got {data[:4]!r})"
            )
        t = int(log_time_ns)
        if t < 0:
            raise ValueError(f"BagWriter.write_raw({topic!r}): negative log time {t}")
        self._enter()
        try:
            self._check_open()
            if topic not in self._conns:
                raise ValueError(f"BagWriter: topic {topic!r} was not added (call add_topic first)")
            size = len(data) + _MSG_OVERHEAD
            if self._bag_t0 is not None and (
                (self.max_bytes and self._bag_bytes + size > self.max_bytes)
                or (self.max_duration_ns and t - self._bag_t0 >= self.max_duration_ns)
            ):
                self._rotate()
            if self._writer is None:  # the previous split could not be finished/started
                self._open_next()
            self._writer.write(self._conns[topic], t, data)
            if self._bag_t0 is None:
                self._bag_t0 = t
            if self._last_flush_t is None:
                self._last_flush_t = t
            self._bag_bytes += size
            self.bytes_written += size
            self.messages_written += 1
            self.counts[topic] = self.counts.get(topic, 0) + 1
            storage = self._storage()
            chunk_size = storage.pending_bytes() if storage is not None else 0
            if chunk_size >= (self.chunk_bytes or _MAX_CHUNK_BYTES) or (
                self.flush_interval_ns and t - self._last_flush_t >= self.flush_interval_ns
            ):
                self._last_flush_t = t
                self._flush_chunk()
        finally:
            self._exit()

    def write(self, topic: str, log_time_ns: int, msg: object) -> None:
        """Serialize a rosbags message object (``typestore.types[msgtype](...)``) and write it."""
        entry = self._topics.get(topic)
        if entry is None:
            raise ValueError(f"BagWriter: topic {topic!r} was not added (call add_topic first)")
        try:
            data = self.typestore.serialize_cdr(msg, entry[0])
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"BagWriter.write({topic!r}): cannot serialize {type(msg).__name__} as {entry[0]}: {exc}") from exc
        self.write_raw(topic, log_time_ns, data)

    def _rotate(self) -> None:
        try:
            self._finish_bag()
        finally:
            # a failure to finish the old bag must not stop the recording into the next one
            self._open_next()

    def flush(self) -> None:
        """Write the chunk being built to the file now (it becomes recoverable after a crash)."""
        self._enter()
        try:
            if not self._closed and self._writer is not None:
                self._flush_chunk()
        finally:
            self._exit()

    def close(self) -> None:
        """Finish the current bag (chunk, summary, footer, metadata.yaml). Idempotent."""
        if self._closed:
            return
        self._lock.acquire()
        try:
            if self._busy:  # we interrupted a write of this very thread (signal handler)
                self._close_requested = True
                return
            if not self._closed:
                self._close_impl()
        finally:
            self._lock.release()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"BagWriter({self.out_root}/{self.name}_*, {len(self.bag_paths)} bags, {self.messages_written} messages, {state})"
