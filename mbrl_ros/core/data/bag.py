"""Reading and writing rosbag2 bags without ROS.

Reading (:func:`read_bag`) accepts rosbag2 directories (metadata.yaml + .mcap or .db3 storage files),
bare .mcap / .db3 files, directories holding several bag directories, or a list of any of these.
Intact bags are read with ``rosbags.highlevel.AnyReader`` (so bags from ``ros2 bag record``, the mcap
library's ROS 2 writer, etc. all work). When AnyReader cannot read an MCAP file (truncated file
without summary/footer, garbage appended, corrupt chunk, CRC mismatch, ...) the file is streamed
record by record from its start (framing checked here, records parsed with the ``mcap`` library's
record classes and chunk decompression/CRC check) and everything before the damage is returned;
the damage is described in :class:`BagReadReport` (``complete=False``). Messages are decoded with a
rosbags typestore built from the bag's own schema records (falling back to the ROS 2 Kilted store).

Writing (:class:`BagWriter`) produces rosbag2 bags (metadata.yaml + one MCAP file, rosbags ``Writer``
version 9) with optional splitting into ``<name>_0000``, ``<name>_0001``, ... and periodic chunk
flushing, so a logger killed hard loses at most the last ``flush_interval_s`` of data (the bag it
leaves has no footer/metadata.yaml, which :func:`read_bag` recovers).

Nothing here imports rclpy or ROS message packages.
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, get_chunk_data_stream
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

__all__ = [
    "BagError",
    "BagMessage",
    "BagReadReport",
    "BagWriter",
    "default_typestore",
    "qos_profile",
    "read_bag",
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


class BagError(Exception):
    """A bag cannot be read (or written); the message names the file and what is wrong."""


@dataclass(frozen=True)
class BagMessage:
    """One deserialized message. ``msg`` is a rosbags message object (attribute access like ROS)."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: object


@dataclass
class BagReadReport:
    """What :func:`read_bag` read.

    paths:   the bags read (rosbag2 directories or bare storage files), in reading order.
    counts:  messages returned per topic (requested topics that do not exist have count 0).
    damage:  human-readable damage descriptions, each naming the file and where the damage is.
    complete: False if any damage was found (some data could not be read).
    topics:  every topic available in the bags -> message type.
    notes:   non-damage remarks (e.g. why AnyReader was not used for a file).
    """

    paths: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)
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
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_readable: int = 0  # messages readable on any topic (not only the requested ones)


def _read_anyreader(path: Path, topics: set[str] | None) -> _UnitResult:
    """Read one intact bag with AnyReader. Raises on any problem (the caller decides what to do)."""
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
                res.messages.append(BagMessage(conn.topic, conn.msgtype, int(t), msg))
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
    """Stream one MCAP file from the start, keeping everything before the first damage."""

    def __init__(self, path: Path, topics: set[str] | None):
        self.path = path
        self.topics = topics
        self.schemas: dict[int, tuple[str, str, bytes]] = {}
        self.channels: dict[int, tuple[str, int, str]] = {}  # id -> (topic, schema_id, message_encoding)
        self.raw: list[tuple[int, int, bytes]] = []  # (channel_id, log_time, data)
        self.n_messages = 0  # all readable messages (any topic)
        self.damage: list[str] = []
        self.notes: list[str] = []
        self.unknown_channel = 0
        self.footer_end: int | None = None

    # -- records ------------------------------------------------------------------------
    def _record(self, op: int, body: memoryview) -> None:
        if op == _OP_SCHEMA:
            s = _parse_body(Schema, body)
            self.schemas[s.id] = (s.name, s.encoding, s.data)
        elif op == _OP_CHANNEL:
            c = _parse_body(Channel, body)
            self.channels[c.id] = (c.topic, c.schema_id, c.message_encoding)
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
                if not inner and op == _OP_CHUNK:
                    self._chunk(body, pos)
                elif not inner and op == _OP_FOOTER:
                    self.footer_end = body_end
                    return body_end, None
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
            self.damage.append(f"{self.path}: chunk at byte {pos} is unreadable and was skipped ({exc})")
            return
        before = self.n_messages
        _, problem = self._scan(data, 0, len(data), f" (inside chunk at byte {pos})", inner=True)
        if problem:
            self.damage.append(
                f"{self.path}: chunk at byte {pos} is corrupt: {problem} inside the chunk; "
                f"kept {self.n_messages - before} messages before it"
            )

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
        stop, problem = self._scan(buf, len(MCAP_MAGIC), size, "", inner=False)
        if problem is None:
            if self.footer_end is None:
                problem = f"file ends at byte {size} without a Footer record (recording was not finished)"
            elif buf[stop:] != MCAP_MAGIC:
                problem = f"{size - stop} unexpected bytes after the Footer (expected the 8-byte closing magic)"
        if problem:
            self.damage.append(
                f"{path}: truncated or corrupt at byte {stop} after {self.n_messages} messages ({problem})"
            )
        if self.unknown_channel:
            self.damage.append(f"{path}: {self.unknown_channel} messages refer to unknown channels (skipped)")


def _read_mcap_stream(path: Path, topics: set[str] | None) -> _UnitResult:
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
        res.messages.append(BagMessage(topic, msgtype, int(t), msg))
    for topic, n in failed.items():
        res.damage.append(f"{path}: {n} messages on {topic} could not be decoded (first: {first_error[topic]})")
    for (topic, enc), n in skipped_enc.items():
        res.notes.append(f"{path}: {n} messages on {topic} use encoding {enc!r}, not cdr (skipped)")
    for topic, n in trailing.items():
        if n:
            res.notes.append(f"{path}: {n} messages on {topic} had trailing bytes after the CDR data (ignored)")
    return res


def _verify_mcap(path: Path) -> None:
    """Walk an MCAP file's records and check its CRCs (raises on any damage).

    AnyReader does not check chunk CRCs, so without this a corrupt chunk in a file with an intact
    summary could silently yield wrong values. Chunks written without a CRC (rosbags writes 0) are
    only checked for framing.
    """
    with path.open("rb") as f:
        for rec in StreamReader(f, emit_chunks=True, validate_crcs=True).records:
            if isinstance(rec, Chunk) and rec.uncompressed_crc:
                get_chunk_data_stream(rec, validate_crc=True)


def _read_unit(unit: _Unit, topics: set[str] | None, verify_crc: bool = True) -> _UnitResult:
    path = unit.path
    if unit.kind == "db3":
        try:
            return _read_anyreader(path, topics)
        except Exception as exc:  # noqa: BLE001 - no salvage path for sqlite3
            raise BagError(f"{path}: cannot read sqlite3 bag: {type(exc).__name__}: {exc}") from None
    # storage files we can salvage (rosbag2 'file' compression, e.g. .mcap.zstd, is left to AnyReader)
    files = [path] if unit.kind == "mcap" else _storage_files(path)
    if unit.kind == "mcap" and path.suffix != ".mcap":
        why = "file suffix is not .mcap"
    else:
        try:
            if verify_crc:
                for f in files:
                    if f.suffix == ".mcap":
                        try:
                            _verify_mcap(f)
                        except Exception as exc:  # noqa: BLE001
                            raise BagError(f"{f}: {type(exc).__name__}: {exc}") from None
            return _read_anyreader(path, topics)
        except Exception as exc:  # noqa: BLE001 - damaged: fall back to streaming the records
            why = f"{type(exc).__name__}: {exc}"
    if not any(f.suffix == ".mcap" for f in files):
        raise BagError(f"{path}: cannot read bag ({why}) and it has no MCAP storage file to salvage")
    res = _UnitResult(notes=[f"{path}: AnyReader could not read it ({why}); streamed the MCAP records instead"])
    if unit.kind == "rosbag2":
        try:
            import yaml

            meta = yaml.safe_load((path / "metadata.yaml").read_text())
            listed = [Path(x).name for x in meta["rosbag2_bagfile_information"]["relative_file_paths"]]
            for name in listed:
                if not (path / name).exists():
                    res.damage.append(f"{path / name}: storage file listed in metadata.yaml is missing")
        except Exception as exc:  # noqa: BLE001
            res.notes.append(f"{path / 'metadata.yaml'}: unreadable ({type(exc).__name__}: {exc})")
    for f in files:
        try:
            sub = _read_anyreader(f, topics) if f.suffix == ".db3" else _read_mcap_stream(f, topics)
        except BagError as exc:
            res.damage.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001
            res.damage.append(f"{f}: cannot read storage file ({type(exc).__name__}: {exc})")
            continue
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
    """Read messages (sorted by log time) from one or more bags.

    ``paths``: a rosbag2 directory, a bare .mcap/.db3 file, a directory of bag directories (all read,
    natural-sorted by name), or a list of these. ``topics``: only these topics (None = all); unknown
    topics are not an error (count 0; ``report.topics`` lists what is available).

    Raises BagError (naming the path) for a missing path, an empty or non-bag file, a directory
    without bags, an unreadable sqlite3 bag, or a damaged bag from which no message at all could be
    read. Otherwise damage is reported in the returned :class:`BagReadReport`.

    ``verify_crc``: before using AnyReader on an MCAP file, walk its records and check the chunk
    CRCs (AnyReader does not); a file that fails is read by the salvaging stream reader instead.
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
    for unit in units:
        res = _read_unit(unit, wanted, verify_crc)
        if res.damage and res.n_readable == 0:
            raise BagError(f"{unit.path}: damaged bag with no readable messages: " + "; ".join(res.damage))
        report.paths.append(str(unit.path))
        report.damage.extend(res.damage)
        report.notes.extend(res.notes)
        for k, v in res.topics.items():
            report.topics.setdefault(k, v)
        messages.extend(res.messages)
    messages.sort(key=lambda m: m.log_time_ns)
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


class BagWriter:
    """rosbag2 bag (metadata.yaml + MCAP, rosbags ``Writer`` version 9) with splitting.

    Bags are ``out_root/<name>_0000``, ``<name>_0001``, ...; a new one is started when writing the
    next message would make the current bag exceed ``max_bytes`` (approximate: serialized bytes plus
    record overhead) or when the message's log time is ``max_duration_s`` or more after the bag's
    first message (0 = no limit). Each closed bag is complete and any rosbag2 reader opens it.

    Durability: the MCAP chunk being built is flushed to the file when it reaches ``chunk_bytes`` or
    when ``flush_interval_s`` of log time passed since the last flush (0 disables either), so a
    process killed without ``close()`` leaves an MCAP file whose flushed chunks :func:`read_bag`
    recovers.

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
        self.counts: dict[str, int] = {}

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
        writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.set_custom_data("mbrl_ros.split_index", str(len(self.bag_paths)))
        for k, v in self.custom_data.items():
            writer.set_custom_data(k, v)
        writer.open()
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

    def _flush_chunk(self) -> None:
        storage = getattr(self._writer, "storage", None)
        chunk = getattr(storage, "chunk", None)
        if storage is None or chunk is None or not hasattr(storage, "close_chunk"):
            return
        if getattr(chunk, "msgs", None):
            storage.close_chunk()
            self._bag_bytes += _CHUNK_OVERHEAD
        bio = getattr(storage, "bio", None)
        if bio is not None:
            bio.flush()

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
        writer, self._writer = self._writer, None
        self._closed = True
        if writer is not None:
            writer.close()

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
            assert self._writer is not None
            self._writer.write(self._conns[topic], t, data)
            if self._bag_t0 is None:
                self._bag_t0 = t
            if self._last_flush_t is None:
                self._last_flush_t = t
            self._bag_bytes += size
            self.bytes_written += size
            self.messages_written += 1
            self.counts[topic] = self.counts.get(topic, 0) + 1
            storage = getattr(self._writer, "storage", None)
            chunk_size = storage.chunk.bio.tell() if storage is not None and hasattr(storage, "chunk") else 0
            if (self.chunk_bytes and chunk_size >= self.chunk_bytes) or (
                self.flush_interval_ns and t - self._last_flush_t >= self.flush_interval_ns
            ):
                self._flush_chunk()
                self._last_flush_t = t
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
        assert self._writer is not None
        writer, self._writer = self._writer, None
        writer.close()
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
