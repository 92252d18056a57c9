"""Integrity: streaming an MCAP file record by record, checking every chunk, reporting damage.

The MCAP framing (https://mcap.dev/spec) is walked here; records are parsed with the
``mcap`` library's record classes, chunks decompressed and CRC-checked by it. What cannot
be trusted is skipped and reported as :class:`~.report.BagDamage` (file, byte offset,
messages lost); everything else is kept, in recording order. Used by reading (salvage
path), by the CRC check before AnyReader, and by reindexing.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import get_chunk_data_stream

from .locate import MCAP_MAGIC
from .report import BagDamage, BagError


# MCAP opcodes (https://mcap.dev/spec)
_OP_NAMES = {
    0x01: "Header", 0x02: "Footer", 0x03: "Schema", 0x04: "Channel", 0x05: "Message", 0x06: "Chunk",
    0x07: "MessageIndex", 0x08: "ChunkIndex", 0x09: "Attachment", 0x0A: "AttachmentIndex",
    0x0B: "Statistics", 0x0C: "Metadata", 0x0D: "MetadataIndex", 0x0E: "SummaryOffset", 0x0F: "DataEnd",
}
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_OP_MESSAGE_INDEX, _OP_DATA_END = 0x07, 0x0F


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
