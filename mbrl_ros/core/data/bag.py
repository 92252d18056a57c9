"""Reading and writing rosbag2 bags without ROS.

Reading (:func:`read_bag`) accepts rosbag2 directories (metadata.yaml + .mcap or .db3 storage files),
bare .mcap / .db3 files, directories holding several bag directories, or a list of any of these.
MCAP files are streamed record by record (framing checked here, records parsed with the ``mcap``
library's record classes, chunks decompressed and their CRCs checked by it): every chunk is checked
against its CRC, its message index and the file's message count, a damaged chunk is skipped and
reported (:class:`BagDamage`: file, byte offset, messages lost) and everything else is returned, in
recording order (``BagMessage.seq``) before the sort by log time. sqlite3 bags and bags with rosbag2
compression are read with ``rosbags.highlevel.AnyReader``. Messages are decoded with a rosbags
typestore built from the bag's own schema records (falling back to the ROS 2 Kilted store).

Writing (:class:`BagWriter`) produces rosbag2 bags (metadata.yaml + one MCAP file, rosbags ``Writer``
version 9, with chunk CRCs) with optional splitting into ``<name>_0000``, ``<name>_0001``, ... and
periodic chunk flushing, so a logger killed hard loses at most the last ``flush_interval_s`` of data.
The bag it leaves has no footer/metadata.yaml: :func:`read_bag` recovers it, :func:`reindex_bag`
makes it a complete bag again. A chunk that cannot be written (disk full) is cut from the file and
its messages are counted as dropped; the bag stays valid and closable.

Nothing here imports rclpy or ROS message packages.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shutil
import struct
import threading
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import get_chunk_data_stream
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos as _parse_qos
from rosbags.rosbag2.storage_mcap import McapWriter, write_channel, write_schema
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

__all__ = [
    "BagDamage",
    "BagError",
    "BagMessage",
    "BagReadReport",
    "BagWriter",
    "ReindexReport",
    "default_typestore",
    "qos_profile",
    "read_bag",
    "reindex_bag",
]

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"

# MCAP opcodes (https://mcap.dev/spec)
_OP_NAMES = {
    0x01: "Header", 0x02: "Footer", 0x03: "Schema", 0x04: "Channel", 0x05: "Message", 0x06: "Chunk",
    0x07: "MessageIndex", 0x08: "ChunkIndex", 0x09: "Attachment", 0x0A: "AttachmentIndex",
    0x0B: "Statistics", 0x0C: "Metadata", 0x0D: "MetadataIndex", 0x0E: "SummaryOffset", 0x0F: "DataEnd",
}
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_OP_MESSAGE_INDEX, _OP_DATA_END = 0x07, 0x0F


class BagError(Exception):
    """A bag cannot be read (or written); the message names the file and what is wrong."""


@dataclass(frozen=True)
class BagMessage:
    """One deserialized message. ``msg`` is a rosbags message object (attribute access like ROS)."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: object
    seq: int = -1  # position in recording (file) order over all bags read; -1: unknown


@dataclass
class BagDamage:
    """One damaged place in a bag file.

    file: the storage file; offset: byte offset of the damaged record or of where reading stopped
    (None if the damage has no single place); what: what is wrong; messages_lost: messages that
    could not be read because of it (None: unknown, e.g. a truncated file without a summary).
    """

    file: str
    offset: int | None
    what: str
    messages_lost: int | None = None

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        lost = "messages lost: unknown" if self.messages_lost is None else f"{self.messages_lost} messages lost"
        return f"{self.file}{where}: {self.what}; {lost}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "offset": self.offset, "what": self.what, "messages_lost": self.messages_lost}


@dataclass
class BagReadReport:
    """What :func:`read_bag` read.

    paths:   the bags read (rosbag2 directories or bare storage files), in reading order.
    counts:  messages returned per topic (requested topics that do not exist have count 0).
    damage:  every damaged place found (:class:`BagDamage`: file, byte offset, what, messages lost).
    complete: False if any damage was found (some data could not be read).
    topics:  every topic available in the bags -> message type.
    notes:   non-damage remarks (e.g. why AnyReader was not used for a file).
    """

    paths: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    damage: list[BagDamage] = field(default_factory=list)
    complete: bool = True
    topics: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"bags: {len(self.paths)} ({'complete' if self.complete else 'DAMAGED'})"]
        lines += [f"  {p}" for p in self.paths]
        width = max([len(t) for t in self.counts] + [5])
        lines.append(f"  {'topic':<{width}}  messages  type")
        for topic in sorted(set(self.counts) | set(self.topics)):
            lines.append(f"  {topic:<{width}}  {self.counts.get(topic, 0):>8}  {self.topics.get(topic, '-')}")
        lines += [f"  damage: {d}" for d in self.damage]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ====================================================================== typestore / decoding
@lru_cache(maxsize=1)
def default_typestore():
    """The shared ROS 2 Kilted rosbags typestore (message classes in ``.types``)."""
    return get_typestore(Stores.ROS2_KILTED)


def _deserialize(typestore: Any, raw: bytes | memoryview, msgtype: str) -> tuple[object, bool]:
    """Deserialize CDR; tolerate trailing bytes after the message. Returns (msg, had_trailing_bytes)."""
    try:
        return typestore.deserialize_cdr(raw, msgtype), False
    except SerdeError as exc:
        if "size mismatch" not in str(exc):
            raise
    # Some serializers (e.g. rclpy.serialize_message with empty float64 arrays) append bytes that
    # rosbags' strict check rejects; the message itself decodes fine.
    msgdef = typestore.get_msgdef(msgtype)
    func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    msg, _ = func(memoryview(raw)[4:], 0, msgdef.cls, typestore)
    return msg, True


def _typestore_from_schemas(schemas: Iterable[tuple[str, str, bytes]], notes: list[str], where: str) -> Any:
    """A typestore with the bag's own definitions (like AnyReader), Kilted types for the rest."""
    typs: dict = {}
    names = []
    for name, encoding, data in schemas:
        names.append(name)
        if not data:
            continue
        text = bytes(data).decode("utf-8", errors="replace")
        try:
            if encoding == "ros2msg":
                typs.update(get_types_from_msg(text, name))
            elif encoding == "ros2idl":
                sep = "=" * 80 + "\n"
                if text.startswith(f"{sep}IDL: "):
                    for part in text.split(sep)[1:]:
                        typs.update(get_types_from_idl(part.split("\n", 1)[1]))
                else:
                    typs.update(get_types_from_idl(text))
        except Exception as exc:  # noqa: BLE001 - a bad definition must not stop reading
            notes.append(f"{where}: cannot parse the {encoding} definition of {name!r} ({exc}); using the Kilted type")
    store = get_typestore(Stores.EMPTY)
    try:
        store.register(typs)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"{where}: embedded type definitions conflict ({exc}); using the Kilted types")
        store = get_typestore(Stores.ROS2_KILTED)
    if any(n not in store.fielddefs for n in names):
        kilted = default_typestore()
        extra = {k: v for k, v in kilted.fielddefs.items() if k not in store.fielddefs}
        try:
            store.register(extra)
        except Exception:  # noqa: BLE001
            store = get_typestore(Stores.ROS2_KILTED)
    return store


# ====================================================================== locating bags
@dataclass
class _Unit:
    kind: str  # 'rosbag2' (directory with metadata.yaml) or 'mcap' / 'db3' (bare file)
    path: Path


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _sniff(p: Path) -> str:
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise BagError(f"{p}: cannot open: {exc}") from None
    if size == 0:
        raise BagError(f"{p}: empty file (0 bytes), not a bag")
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "db3"
    if head.startswith(MCAP_MAGIC[: min(len(head), 8)]):
        raise BagError(f"{p}: truncated MCAP file ({size} bytes, shorter than the magic)")
    raise BagError(f"{p}: not a bag file (no MCAP or SQLite3 magic; starts with {head[:8]!r})")


def _has_bag_content(d: Path, depth: int = 0) -> bool:
    if (d / "metadata.yaml").is_file():
        return True
    try:
        entries = list(d.iterdir())
    except OSError:
        return False
    if any(e.is_file() and e.suffix in (".mcap", ".db3") for e in entries):
        return True
    return depth < 4 and any(e.is_dir() and _has_bag_content(e, depth + 1) for e in entries)


def _resolve(p: Path) -> list[_Unit]:
    if not p.exists():
        raise BagError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name == "metadata.yaml":
            return _resolve(p.parent)
        return [_Unit(_sniff(p), p)]
    if not p.is_dir():
        raise BagError(f"{p}: not a file or directory")
    if (p / "metadata.yaml").is_file():
        return [_Unit("rosbag2", p)]
    entries = sorted(p.iterdir(), key=_natural_key)
    files = [e for e in entries if e.is_file() and e.suffix in (".mcap", ".db3")]
    if files:  # a bag directory whose recorder never wrote metadata.yaml (killed), or loose files
        return [_Unit(_sniff(f), f) for f in files]
    units: list[_Unit] = []
    for sub in entries:
        if sub.is_dir() and not sub.name.startswith(".") and _has_bag_content(sub):
            units.extend(_resolve(sub))
    if not units:
        raise BagError(f"{p}: no rosbag2 bag (metadata.yaml) and no .mcap/.db3 file in this directory")
    return units


def _storage_files(bagdir: Path) -> list[Path]:
    """Storage files of a rosbag2 directory: those listed in metadata.yaml, else all .mcap/.db3."""
    listed: list[Path] = []
    try:
        import yaml  # PyYAML; only for the fallback path

        meta = yaml.safe_load((bagdir / "metadata.yaml").read_text())
        info = meta["rosbag2_bagfile_information"]
        listed = [bagdir / Path(x).name for x in info["relative_file_paths"]]
    except Exception:  # noqa: BLE001 - unreadable metadata: fall back to globbing
        listed = []
    present = sorted((e for e in bagdir.iterdir() if e.is_file() and e.suffix in (".mcap", ".db3")), key=_natural_key)
    out = [p for p in listed if p.exists()]
    out += [p for p in present if p not in out]
    return out


# ====================================================================== AnyReader path
@dataclass
class _UnitResult:
    messages: list[BagMessage] = field(default_factory=list)
    topics: dict[str, str] = field(default_factory=dict)
    damage: list[BagDamage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_readable: int = 0  # messages readable on any topic (not only the requested ones)


def _read_anyreader(path: Path, topics: set[str] | None, seq: Iterator[int]) -> _UnitResult:
    """Read one intact bag with AnyReader. Raises on any problem (the caller decides what to do).
    ``seq`` numbers the messages in reading order (see BagMessage.seq)."""
    res = _UnitResult()
    trailing: Counter = Counter()
    with AnyReader([path], default_typestore=default_typestore()) as reader:
        for conn in reader.connections:
            res.topics.setdefault(conn.topic, conn.msgtype)
        res.n_readable = reader.message_count
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if conns:
            for conn, t, raw in reader.messages(connections=conns):
                msg, extra = _deserialize(reader.typestore, raw, conn.msgtype)
                trailing[conn.topic] += extra
                res.messages.append(BagMessage(conn.topic, conn.msgtype, int(t), msg, next(seq)))
    for topic, n in trailing.items():
        if n:
            res.notes.append(f"{path}: {n} messages on {topic} had trailing bytes after the CDR data (ignored)")
    return res


# ====================================================================== MCAP streaming (salvage) path
def _op_name(op: int) -> str:
    return _OP_NAMES.get(op, f"opcode 0x{op:02x}")


def _parse_body(cls: Any, body: bytes | memoryview, *args: Any) -> Any:
    return cls.read(ReadDataStream(io.BytesIO(bytes(body))), *args)


class _McapSalvager:
    """Stream one MCAP file from the start and keep every message that can be trusted.

    A chunk whose CRC or decompression fails is skipped; its messages are counted as lost from the
    MessageIndex records that follow it. Records after a break in the framing (overwritten bytes)
    are reached again through the summary's chunk index when the file has an intact summary.
    The message count in the summary's Statistics, if readable, settles losses that could not be
    counted where they happened.
    """

    def __init__(self, path: Path, topics: set[str] | None):
        self.path = path
        self.topics = topics
        self.schemas: dict[int, tuple[str, str, bytes]] = {}
        self.channels: dict[int, tuple[str, int, str]] = {}  # id -> (topic, schema_id, message_encoding)
        self.channel_metadata: dict[int, dict[str, str]] = {}  # id -> metadata (e.g. offered_qos_profiles)
        self.raw: list[tuple[int, int, bytes]] = []  # (channel_id, log_time, data)
        self.n_messages = 0  # all readable messages (any topic)
        self.damage: list[BagDamage] = []
        self.notes: list[str] = []
        self.unknown_channel = 0
        self.footer_end: int | None = None
        self.data_end_seen = False  # past the data section: what follows is the summary (no messages)
        self.summary: Any = None  # mcap Summary of the file, if its footer and summary are readable
        # the chunk just read, until the MessageIndex records after it are counted:
        # (damage entry or None, messages read from it, chunk offset)
        self._open_chunk: tuple[BagDamage | None, int, int] | None = None
        self._indexed: int | None = None  # messages listed by those MessageIndex records

    def _damage(self, offset: int | None, what: str, lost: int | None = None) -> BagDamage:
        d = BagDamage(str(self.path), offset, what, lost)
        self.damage.append(d)
        return d

    # -- records ------------------------------------------------------------------------
    def _record(self, op: int, body: memoryview) -> None:
        if op == _OP_SCHEMA:
            s = _parse_body(Schema, body)
            self.schemas[s.id] = (s.name, s.encoding, s.data)
        elif op == _OP_CHANNEL:
            c = _parse_body(Channel, body)
            self.channels[c.id] = (c.topic, c.schema_id, c.message_encoding)
            self.channel_metadata[c.id] = dict(c.metadata)
        elif op == _OP_DATA_END:
            self.data_end_seen = True
        elif op == _OP_MESSAGE:
            if len(body) < 22:
                raise ValueError(f"Message record of {len(body)} bytes is shorter than its 22-byte header")
            m = _parse_body(Message, body, len(body))
            self.n_messages += 1
            ch = self.channels.get(m.channel_id)
            if ch is None:
                self.unknown_channel += 1
            elif self.topics is None or ch[0] in self.topics:
                self.raw.append((m.channel_id, m.log_time, m.data))

    def _close_open_chunk(self) -> None:
        """The MessageIndex records of the last chunk are all seen: settle its message count."""
        if self._open_chunk is None:
            return
        entry, kept, pos = self._open_chunk
        indexed, self._open_chunk, self._indexed = self._indexed, None, None
        if indexed is None:
            return  # a writer without message indexes: nothing to compare with
        if entry is not None:
            entry.messages_lost = max(indexed - kept, 0)
        elif indexed != kept:
            self._damage(pos, f"chunk holds {kept} messages but its message index lists {indexed}",
                         max(indexed - kept, 0))

    def _scan(self, buf: Any, pos: int, end: int, where: str, inner: bool) -> tuple[int, str | None]:
        """Walk records in buf[pos:end]. Returns (stop position, problem or None).

        For the top level a Chunk is handled by _chunk; inner=True means records inside a chunk.
        """
        while pos < end:
            if end - pos < 9:
                return pos, f"truncated record header at byte {pos} ({end - pos} of 9 bytes present)"
            op = buf[pos]
            (length,) = struct.unpack_from("<Q", buf, pos + 1)
            if op == 0 or (0x0F < op < 0x80):
                return pos, f"invalid record opcode 0x{op:02x} at byte {pos} (garbage or corrupt data)"
            body_end = pos + 9 + length
            if body_end > end:
                avail = end - pos - 9
                if not inner and op == _OP_CHUNK:
                    self._partial_chunk(buf, pos, end)
                return pos, (
                    f"{_op_name(op)} record at byte {pos} claims {length} bytes but only {avail} are present"
                )
            body = memoryview(buf)[pos + 9 : body_end]
            try:
                if not inner and op == _OP_MESSAGE_INDEX:
                    if self._open_chunk is not None:
                        (n_bytes,) = struct.unpack_from("<I", body, 2)
                        self._indexed = (self._indexed or 0) + n_bytes // 16
                elif not inner:
                    self._close_open_chunk()
                    if op == _OP_CHUNK:
                        self._chunk(body, pos)
                    elif op == _OP_FOOTER:
                        self.footer_end = body_end
                        return body_end, None
                    else:
                        self._record(op, body)
                else:
                    self._record(op, body)
            except Exception as exc:  # noqa: BLE001 - corrupt record content
                return pos, f"corrupt {_op_name(op)} record at byte {pos}{where}: {type(exc).__name__}: {exc}"
            pos = body_end
        return pos, None

    def _chunk(self, body: memoryview, pos: int) -> None:
        chunk = _parse_body(Chunk, body)
        try:
            stream, size = get_chunk_data_stream(chunk, validate_crc=True)
            data = stream.read(size) if size else b""
        except Exception as exc:  # noqa: BLE001 - CRC mismatch / decompression failure: skip this chunk only
            self._open_chunk = (self._damage(pos, f"chunk unreadable, skipped ({exc})"), 0, pos)
            return
        before = self.n_messages
        _, problem = self._scan(data, 0, len(data), f" (inside chunk at byte {pos})", inner=True)
        entry = None
        if problem:
            entry = self._damage(pos, f"chunk corrupt ({problem}), kept {self.n_messages - before} messages before it")
        self._open_chunk = (entry, self.n_messages - before, pos)

    def _partial_chunk(self, buf: Any, pos: int, end: int) -> None:
        """Recover complete messages from the start of a chunk cut off by the end of the file."""
        hdr = pos + 9
        try:
            if end - hdr < 32:
                return
            (clen,) = struct.unpack_from("<I", buf, hdr + 28)
            comp = bytes(buf[hdr + 32 : hdr + 32 + clen]).decode()
            data_start = hdr + 32 + clen + 8
            if data_start >= end:
                return
            partial = bytes(buf[data_start:end])
            if comp == "":
                data = partial
            elif comp == "zstd":
                import zstandard

                data = zstandard.ZstdDecompressor().decompressobj().decompress(partial)
            else:
                return
        except Exception:  # noqa: BLE001 - nothing recoverable
            return
        before = self.n_messages
        self._scan(data, 0, len(data), f" (inside the truncated chunk at byte {pos})", inner=True)
        if self.n_messages > before:
            self.notes.append(
                f"{self.path}: recovered {self.n_messages - before} messages from the truncated chunk at byte {pos}"
            )

    def _read_summary(self) -> None:
        try:
            with self.path.open("rb") as f:
                self.summary = SeekingReader(f, validate_crcs=True).get_summary()
        except Exception:  # noqa: BLE001 - no usable summary (truncated, killed writer, damaged end)
            self.summary = None

    # -- file ---------------------------------------------------------------------------
    def run(self) -> None:
        path = self.path
        try:
            buf = path.read_bytes()
        except OSError as exc:
            raise BagError(f"{path}: cannot open: {exc}") from None
        size = len(buf)
        if size == 0:
            raise BagError(f"{path}: empty file (0 bytes), not a bag")
        if buf[: len(MCAP_MAGIC)] != MCAP_MAGIC:
            raise BagError(f"{path}: not an MCAP file (bad magic {buf[:8]!r})")
        self._read_summary()
        chunk_starts = sorted(ci.chunk_start_offset for ci in self.summary.chunk_indexes) if self.summary else []
        if self.summary is not None:  # definitions lost with a damaged chunk are repeated in the summary
            for sc in self.summary.schemas.values():
                self.schemas[sc.id] = (sc.name, sc.encoding, sc.data)
            for ch in self.summary.channels.values():
                self.channels[ch.id] = (ch.topic, ch.schema_id, ch.message_encoding)
                self.channel_metadata[ch.id] = dict(ch.metadata)
        pos = len(MCAP_MAGIC)
        while True:
            stop, problem = self._scan(buf, pos, size, "", inner=False)
            # a damaged chunk followed by damage in its message index run is one damaged place
            merge = self._open_chunk[0] if problem is not None and self._open_chunk is not None else None
            if problem is not None:
                self._indexed = None  # the damage cut the message index run short: no count to compare
            self._close_open_chunk()
            if problem is None:
                break
            resume = next((c for c in chunk_starts if c > stop and c < size and buf[c] == _OP_CHUNK), None)
            then = (f"; resumed at the chunk at byte {resume} (found through the summary's chunk index)"
                    if resume is not None else "")
            if merge is not None:
                merge.what += f"; the records after it are corrupt too ({problem}){then}"
                merge.messages_lost = None
            elif resume is None and self.data_end_seen:
                self._damage(stop, f"summary section truncated or corrupt ({problem}); all data before it was read")
            elif resume is None:
                self._damage(stop, f"truncated or corrupt after {self.n_messages} messages ({problem})")
            else:
                self._damage(stop, f"corrupt data ({problem}){then}")
            if resume is None:
                return self._settle()
            pos = resume
        if self.footer_end is None:
            self._damage(stop, f"file ends without a Footer record after {self.n_messages} messages "
                               "(recording was not finished)")
        elif buf[stop:] != MCAP_MAGIC:
            self._damage(stop, f"{size - stop} unexpected bytes after the Footer (expected the 8-byte closing magic)", 0)
        if self.unknown_channel:
            self._damage(None, f"{self.unknown_channel} messages refer to unknown channels (skipped)",
                         self.unknown_channel)
        self._settle()

    def _settle(self) -> None:
        """Assign losses not counted where they happened, from the summary's message count."""
        stats = self.summary.statistics if self.summary is not None else None
        if stats is None:
            return
        lost = stats.message_count - (self.n_messages - self.unknown_channel)
        unknown = [d for d in self.damage if d.messages_lost is None]
        counted = sum(d.messages_lost for d in self.damage if d.messages_lost is not None)
        if len(unknown) == 1:
            unknown[0].messages_lost = max(lost - counted, 0)
        elif unknown and lost > counted:
            self.notes.append(f"{self.path}: {lost} of the {stats.message_count} messages in the file's statistics "
                              "could not be read")
        elif not unknown and lost > counted:
            self._damage(None, f"{stats.message_count} messages in the file's statistics but only "
                               f"{self.n_messages} readable", lost - counted)


def _read_mcap_stream(path: Path, topics: set[str] | None, seq: Iterator[int]) -> _UnitResult:
    sal = _McapSalvager(path, topics)
    sal.run()
    res = _UnitResult(damage=sal.damage, notes=sal.notes, n_readable=sal.n_messages)
    for cid, (topic, sid, _enc) in sal.channels.items():
        schema = sal.schemas.get(sid)
        res.topics.setdefault(topic, schema[0] if schema else "")
    if not sal.raw:
        return res
    store = _typestore_from_schemas(sal.schemas.values(), res.notes, str(path))
    failed: Counter = Counter()
    first_error: dict[str, str] = {}
    trailing: Counter = Counter()
    skipped_enc: Counter = Counter()
    for cid, t, data in sal.raw:
        topic, sid, enc = sal.channels[cid]
        msgtype = sal.schemas[sid][0] if sid in sal.schemas else ""
        if enc != "cdr":
            skipped_enc[(topic, enc)] += 1
            continue
        try:
            msg, extra = _deserialize(store, data, msgtype)
        except Exception as exc:  # noqa: BLE001
            failed[topic] += 1
            res.n_readable -= 1
            first_error.setdefault(topic, f"{type(exc).__name__}: {exc}")
            continue
        trailing[topic] += extra
        res.messages.append(BagMessage(topic, msgtype, int(t), msg, next(seq)))
    for topic, n in failed.items():
        res.damage.append(BagDamage(str(path), None, f"messages on {topic} could not be decoded "
                                              f"(first: {first_error[topic]})", n))
    for (topic, enc), n in skipped_enc.items():
        res.notes.append(f"{path}: {n} messages on {topic} use encoding {enc!r}, not cdr (skipped)")
    for topic, n in trailing.items():
        if n:
            res.notes.append(f"{path}: {n} messages on {topic} had trailing bytes after the CDR data (ignored)")
    return res


def _verify_mcap(path: Path) -> None:
    """Walk every record of an MCAP file, inside chunks too (raises BagError on any damage).

    AnyReader does not check chunk CRCs, so without this a corrupt chunk in a file with an intact
    summary could silently yield wrong values. Chunks written without a CRC (rosbags writes 0) are
    checked for framing and against their message indexes and the summary's message count.
    """
    sal = _McapSalvager(path, set())
    sal.run()
    if sal.damage:
        raise BagError("; ".join(str(d) for d in sal.damage))


def _rosbag2_compressed(bagdir: Path) -> bool:
    """True if metadata.yaml says the bag uses rosbag2 compression (message or file mode)."""
    try:
        import yaml

        info = yaml.safe_load((bagdir / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return bool(info.get("compression_mode") or info.get("compression_format"))
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the files tell
        return False


def _read_unit(unit: _Unit, topics: set[str] | None, verify_crc: bool, seq: Iterator[int]) -> _UnitResult:
    path = unit.path
    if unit.kind == "db3":
        try:
            return _read_anyreader(path, topics, seq)
        except Exception as exc:  # noqa: BLE001 - no salvage path for sqlite3
            raise BagError(f"{path}: cannot read sqlite3 bag: {type(exc).__name__}: {exc}") from None
    # MCAP files are streamed record by record: that checks every chunk, keeps the recording
    # order (BagMessage.seq; AnyReader returns log-time order, which hides clock steps) and keeps
    # what is readable in a damaged file. rosbag2 compression (per message or .mcap.zstd files) is
    # left to AnyReader.
    files = [path] if unit.kind == "mcap" else _storage_files(path)
    stream = unit.kind == "mcap" or (
        bool(files) and all(f.suffix == ".mcap" for f in files) and not _rosbag2_compressed(path))
    if stream:
        res = _UnitResult()
    else:
        try:
            if verify_crc:
                for f in files:
                    if f.suffix == ".mcap":
                        _verify_mcap(f)
            res = _read_anyreader(path, topics, seq)
            res.notes.append(f"{path}: read with AnyReader (rosbag2 compression): messages in log-time order, "
                             "clock steps backwards cannot be detected")
            return res
        except Exception as exc:  # noqa: BLE001 - damaged: fall back to streaming the records
            why = f"{type(exc).__name__}: {exc}"
        if not any(f.suffix == ".mcap" for f in files):
            raise BagError(f"{path}: cannot read bag ({why}) and it has no MCAP storage file to salvage")
        res = _UnitResult(notes=[f"{path}: AnyReader could not read it ({why}); streamed the MCAP records instead"])
    expected: dict[str, int] = {}  # file name -> message count in metadata.yaml
    if unit.kind == "rosbag2":
        try:
            import yaml

            meta = yaml.safe_load((path / "metadata.yaml").read_text())
            info = meta["rosbag2_bagfile_information"]
            for entry in info.get("files") or []:
                with contextlib.suppress(Exception):
                    expected[Path(entry["path"]).name] = int(entry["message_count"])
            listed = [Path(x).name for x in info["relative_file_paths"]]
            for name in listed:
                if not (path / name).exists():
                    res.damage.append(BagDamage(str(path / name), None, "storage file listed in metadata.yaml is missing"))
        except Exception as exc:  # noqa: BLE001
            res.notes.append(f"{path / 'metadata.yaml'}: unreadable ({type(exc).__name__}: {exc})")
    for f in files:
        try:
            sub = _read_anyreader(f, topics, seq) if f.suffix == ".db3" else _read_mcap_stream(f, topics, seq)
        except BagError as exc:
            res.damage.append(BagDamage(str(f), None, str(exc).removeprefix(f"{f}: ")))
            continue
        except Exception as exc:  # noqa: BLE001
            res.damage.append(BagDamage(str(f), None, f"cannot read storage file ({type(exc).__name__}: {exc})"))
            continue
        unknown = [d for d in sub.damage if d.messages_lost is None]
        if f.name in expected and len(unknown) == 1:  # e.g. truncated: the loss from metadata.yaml
            counted = sum(d.messages_lost for d in sub.damage if d.messages_lost is not None)
            unknown[0].messages_lost = max(expected[f.name] - sub.n_readable - counted, 0)
        res.messages.extend(sub.messages)
        res.damage.extend(sub.damage)
        res.notes.extend(sub.notes)
        res.n_readable += sub.n_readable
        for k, v in sub.topics.items():
            res.topics.setdefault(k, v)
    return res


def _as_path_list(paths: Any) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if isinstance(paths, Iterable):
        out = [Path(p) for p in paths]
        if not out:
            raise BagError("read_bag: empty list of paths")
        return out
    raise BagError(f"read_bag: expected a path or a list of paths, got {type(paths).__name__}")


def read_bag(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    topics: Sequence[str] | None = None,
    verify_crc: bool = True,
) -> tuple[list[BagMessage], BagReadReport]:
    """Read messages (sorted by log time; ``seq`` gives the recording order) from one or more bags.

    ``paths``: a rosbag2 directory, a bare .mcap/.db3 file, a directory of bag directories (all read,
    natural-sorted by name), or a list of these. ``topics``: only these topics (None = all); unknown
    topics are not an error (count 0; ``report.topics`` lists what is available).

    Raises BagError (naming the path) for a missing path, an empty or non-bag file, a directory
    without bags, an unreadable sqlite3 bag, or a damaged bag from which no message at all could be
    read. Otherwise damage is reported in the returned :class:`BagReadReport`.

    MCAP files are always streamed and checked chunk by chunk (see the module docstring); each
    damaged place is a :class:`BagDamage` in ``report.damage`` and ``report.complete`` is False.
    ``verify_crc`` only concerns bags with rosbag2 compression, read with AnyReader: check their
    MCAP records first (AnyReader does not check CRCs) and stream a file that fails instead.
    """
    wanted = None if topics is None else ({topics} if isinstance(topics, str) else set(topics))
    units: list[_Unit] = []
    seen: set[Path] = set()
    for p in _as_path_list(paths):
        for unit in _resolve(p):
            key = unit.path.resolve()
            if key not in seen:
                seen.add(key)
                units.append(unit)

    report = BagReadReport()
    messages: list[BagMessage] = []
    seq = itertools.count()  # recording order over all units and files
    for unit in units:
        res = _read_unit(unit, wanted, verify_crc, seq)
        if res.damage and res.n_readable == 0:
            raise BagError(f"{unit.path}: damaged bag with no readable messages: " + "; ".join(map(str, res.damage)))
        report.paths.append(str(unit.path))
        report.damage.extend(res.damage)
        report.notes.extend(res.notes)
        for k, v in res.topics.items():
            report.topics.setdefault(k, v)
        messages.extend(res.messages)
    messages.sort(key=lambda m: m.log_time_ns)  # stable: equal log times stay in recording order
    counts = Counter(m.topic for m in messages)
    keys = sorted(wanted) if wanted is not None else sorted(set(report.topics) | set(counts))
    report.counts = {k: counts.get(k, 0) for k in keys}
    report.complete = not report.damage
    return messages, report


# ====================================================================== writing
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


# ---------------------------------------------------------------------- MCAP storage with CRCs
# The MCAP chunk record starts: opcode (1) + record length (8) + message start/end time (8 + 8) +
# uncompressed size (8), then the 4-byte CRC32 of the uncompressed records (MCAP spec).
_CHUNK_CRC_OFFSET = 1 + 8 + 8 + 8 + 8
RESERVE_NAME = ".mbrl_reserve"  # space held in the bag directory so a full disk can still close it
_RESERVE_STEP = 64 * 1024


class ChunkWriteError(OSError):
    """A chunk could not be written (e.g. disk full); its messages were dropped, the file was cut
    back to the end of the last complete chunk. ``dropped``: connection id -> messages dropped."""

    def __init__(self, cause: OSError, dropped: Mapping[int, int]):
        super().__init__(cause.errno, f"chunk of {sum(dropped.values())} messages not written: "
                         f"{cause.strerror or cause}")
        self.dropped = dict(dropped)


class _Staging(io.BytesIO):
    """Collects records in memory while reporting file offsets (rosbags writes ``bio.tell()`` into
    indexes), so a chunk or the summary reaches the file in one write that is undone if it fails."""

    def __init__(self, base: int):
        super().__init__()
        self.base = base

    def tell(self) -> int:
        return self.base + super().tell()

    def close(self) -> None:  # rosbags closes its bio at the end of close(); the file is ours
        pass


class _Reserve:
    """A file of zeros that holds disk space; released at close so the summary and metadata.yaml
    of a bag fit even when the recording filled the disk."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.size = 0
        self.ensure(size)

    def ensure(self, size: int) -> None:
        if size <= self.size:
            return
        size = -(-size // _RESERVE_STEP) * _RESERVE_STEP  # grow in steps: an fsync now and then, not per chunk
        try:
            with self.path.open("ab") as f:
                f.write(b"\0" * (size - self.size))
                f.flush()
                os.fsync(f.fileno())  # the blocks must really be allocated (tmpfs, delayed allocation)
            self.size = size
        except OSError:
            pass  # keep what we have; the data writes report the full disk

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.size = 0


class _CrcMcapStorage(McapWriter):
    """rosbags' MCAP storage with two changes for logging:

    * every chunk carries the CRC32 of its records (rosbags writes 0, so damage went unnoticed);
    * a chunk is written to the file in one piece or not at all: if the write fails (disk full),
      the file is cut back to the previous chunk's end, the chunk's messages are counted in
      ``dropped`` and :class:`ChunkWriteError` is raised, so the file stays readable and the
      summary written at close lists only what is in the file.

    Chunks are closed only on request (``close_chunk``), never inside ``write``, so the caller
    knows which messages a failed chunk held.
    """

    def __init__(self, path: Path, compression: Any) -> None:
        super().__init__(path, compression)
        self.bio.flush()
        self._file = self.bio.detach()  # unbuffered: a failed write leaves nothing in a buffer
        self.bio = self._file
        self._end = self._file.tell()
        self.written: Counter = Counter()  # connection id -> messages in chunks on disk
        self.dropped: Counter = Counter()  # connection id -> messages of chunks that failed
        self.t_range: tuple[int, int] | None = None  # log time span of the messages on disk, ns
        self._in_write = False
        self._defs_on_disk = False
        self.reserve = _Reserve(path / RESERVE_NAME, 64 * 1024)

    def write(self, connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        self._in_write = True
        try:
            super().write(connection, timestamp, data)
        finally:
            self._in_write = False

    def pending_bytes(self) -> int:
        return self.chunk.bio.tell()

    def _write_at_end(self, data: bytes | bytearray | memoryview) -> None:
        pos = self._end
        view = memoryview(data)
        try:
            while view:
                n = self._file.write(view)
                view = view[n:]
        except OSError:
            try:  # undo a partial record so the file ends at a record boundary
                self._file.truncate(pos)
                self._file.seek(pos)
            except OSError:
                pass
            raise
        self._end = pos + len(data)

    def close_chunk(self) -> None:
        if self._in_write:
            return  # rosbags' own 1 MiB rule; the BagWriter flushes after counting the message
        counts = {cid: len(v) for cid, v in self.chunk.msgs.items()}
        t_lo, t_hi = self.chunk.message_start_time, self.chunk.message_end_time
        crc = zlib.crc32(self.chunk.bio.getbuffer())
        n_indexes = len(self.chunks)
        stage = _Staging(self._end)
        self.bio = stage
        try:
            super().close_chunk()  # writes the records and resets self.chunk
        finally:
            self.bio = self._file
        data = bytearray(stage.getbuffer())
        struct.pack_into("<I", data, _CHUNK_CRC_OFFSET, crc)
        try:
            self._write_at_end(data)
        except OSError as exc:
            del self.chunks[n_indexes:]
            for cid, n in counts.items():
                self.channel_stats[cid] -= n
                self.dropped[cid] += n
            if not self._defs_on_disk:  # the lost chunk held the schema/channel records
                for schema in self.schemas:
                    write_schema(self.chunk.bio, schema)
                for channel in self.channels:
                    write_channel(self.chunk.bio, channel, self.schemas)
            raise ChunkWriteError(exc, counts) from exc
        self._defs_on_disk = True
        self.written.update(counts)
        if counts:
            lo, hi = self.t_range or (t_lo, t_hi)
            self.t_range = (min(lo, t_lo), max(hi, t_hi))
        # room for the summary: a chunk index per chunk, schemas/channels, statistics, metadata
        self.reserve.ensure(64 * 1024 + 256 * len(self.chunks) + 4096 * len(self.channels))

    def close(self, version: int, metadata: str) -> None:
        self.reserve.release()
        try:
            if any(self.chunk.msgs.values()):
                try:
                    self.close_chunk()
                except ChunkWriteError:
                    pass  # counted in self.dropped
            # a chunk holding only definitions is not needed: the summary repeats them
            self.chunk = type(self.chunk)(2**63 - 1, 0, io.BytesIO(), defaultdict(list))
            self.message_start_time, self.message_end_time = self.t_range or (0, 0)
            stage = _Staging(self._end)
            self.bio = stage
            try:
                super().close(version, metadata)
            finally:
                self.bio = self._file
            self._write_at_end(stage.getbuffer())
        finally:
            self._file.close()

    def abort(self) -> None:
        self.reserve.release()
        self._file.close()


class _RosbagWriter(Writer):
    """rosbags' rosbag2 writer (metadata.yaml, version 9) over :class:`_CrcMcapStorage`."""

    STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: _CrcMcapStorage}


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


# ====================================================================== reindex
@dataclass
class ReindexReport:
    """What :func:`reindex_bag` did.

    bag: the bag directory; mcap: the rewritten MCAP file; counts: messages per topic in it;
    damage: what could not be recovered from the original file(s); backups: where the original
    files were moved (``<name>.orig``); notes: other remarks.
    """

    bag: Path
    mcap: Path
    counts: dict[str, int] = field(default_factory=dict)
    damage: list[BagDamage] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"reindexed {self.bag}: {sum(self.counts.values())} messages in {self.mcap.name} + metadata.yaml"]
        width = max([len(t) for t in self.counts] + [5])
        lines += [f"  {t:<{width}}  {n:>8}" for t, n in sorted(self.counts.items())]
        lines += [f"  damage: {d}" for d in self.damage]
        lines += [f"  original kept as {b}" for b in self.backups]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def reindex_bag(path: str | os.PathLike) -> ReindexReport:
    """Make a bag left behind by a killed recorder (no metadata.yaml, MCAP without summary or footer)
    readable by rosbag2 tools and rosbags again, like ``ros2 bag reindex``.

    Every message that can be read from the bag directory's MCAP file(s) (record by record, as
    :func:`read_bag` salvages) is rewritten, bytes and log times unchanged and in recording order,
    into one complete MCAP ``<dir>/<dir>.mcap`` (chunk CRCs, summary, footer) with a rosbag2
    ``metadata.yaml`` (version 9). Topic types, message definitions and offered QoS come from the
    file's schema and channel records. The original files are kept as ``<name>.orig`` (and an
    existing metadata.yaml as ``metadata.yaml.orig``); nothing is deleted except the logger's disk
    reserve file. Raises BagError if the path holds no MCAP file or no readable message.
    """
    p = Path(path)
    bag = p.parent if p.is_file() else p
    if not bag.is_dir():
        raise BagError(f"{p}: no such bag directory")
    files = sorted((f for f in bag.iterdir() if f.is_file() and f.suffix == ".mcap"), key=_natural_key)
    if not files:
        raise BagError(f"{bag}: no .mcap file to reindex (sqlite3 bags are not supported)")
    for f in files:
        _sniff(f)  # a clear error for a file that is not MCAP at all
    report = ReindexReport(bag=bag, mcap=bag / f"{bag.name}.mcap")
    scans = []
    for f in files:
        sal = _McapSalvager(f, None)
        sal.run()
        report.damage.extend(sal.damage)
        report.notes.extend(sal.notes)
        scans.append(sal)
    if not any(sal.raw for sal in scans):
        raise BagError(f"{bag}: no readable message in {', '.join(f.name for f in files)}: " +
                       "; ".join(map(str, report.damage)))

    work = bag / ".reindex"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        writer = _RosbagWriter(work / bag.name, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.set_custom_data("mbrl_ros.reindexed_from", ",".join(f.name for f in files))
        writer.open()
        conns: dict[tuple[str, str], Any] = {}
        for sal in scans:
            store = _typestore_from_schemas(sal.schemas.values(), report.notes, str(sal.path))
            by_channel: dict[int, Any] = {}
            for cid, (topic, sid, enc) in sal.channels.items():
                if sid not in sal.schemas:
                    report.notes.append(f"{sal.path}: channel {topic!r} has no schema; its messages are not kept")
                    continue
                msgtype, _, msgdef = sal.schemas[sid]
                key = (topic, msgtype)
                if key not in conns:
                    try:
                        rihs01 = store.hash_rihs01(msgtype)
                    except Exception:  # noqa: BLE001 - a definition rosbags cannot hash
                        rihs01 = "RIHS01_" + "0" * 64
                    try:
                        qos = _parse_qos(sal.channel_metadata.get(cid, {}).get("offered_qos_profiles", ""))
                    except Exception:  # noqa: BLE001
                        qos = []
                        report.notes.append(f"{sal.path}: unreadable QoS profiles of {topic!r} (left empty)")
                    conns[key] = writer.add_connection(
                        topic, msgtype, msgdef=bytes(msgdef).decode("utf-8", errors="replace"), rihs01=rihs01,
                        serialization_format=enc, offered_qos_profiles=qos)
                by_channel[cid] = conns[key]
            storage = writer.storage
            assert isinstance(storage, _CrcMcapStorage)
            for cid, t, data in sal.raw:
                conn = by_channel.get(cid)
                if conn is None:
                    continue
                writer.write(conn, int(t), data)
                if storage.pending_bytes() >= 256 * 1024:
                    storage.close_chunk()
                report.counts[conn.topic] = report.counts.get(conn.topic, 0) + 1
        storage = writer.storage
        assert isinstance(storage, _CrcMcapStorage)
        storage.close_chunk()
        if storage.t_range is not None:
            writer.min_timestamp, writer.max_timestamp = storage.t_range
        writer.close()
        # swap in: originals aside first, so an interruption never leaves the bag without its data
        for f in files:
            backup = f.with_name(f.name + ".orig")
            f.rename(backup)
            report.backups.append(backup)
        if (bag / "metadata.yaml").exists():
            (bag / "metadata.yaml").rename(bag / "metadata.yaml.orig")
            report.backups.append(bag / "metadata.yaml.orig")
        (work / bag.name / report.mcap.name).rename(report.mcap)
        (work / bag.name / "metadata.yaml").rename(bag / "metadata.yaml")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (bag / RESERVE_NAME).unlink(missing_ok=True)
    return report
