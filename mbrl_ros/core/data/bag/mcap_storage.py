"""MCAP writing: rosbags' MCAP storage with chunk CRCs, all-or-nothing chunks and a disk reserve.

The layer under :class:`~.writer.BagWriter` and :func:`~.reindex.reindex_bag`: a chunk
reaches the file in one write or not at all (ENOSPC cuts the file back to the previous
chunk and counts the chunk's messages as dropped), every chunk carries the CRC32 of its
records, and a reserve file keeps room for the summary and metadata.yaml on a full disk.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter, write_channel, write_schema

__all__ = ['ChunkWriteError', 'RESERVE_NAME']


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
