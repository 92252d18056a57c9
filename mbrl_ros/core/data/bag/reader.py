"""Reading bags: :func:`read_bag` over rosbag2 directories, bare files and lists of them.

MCAP storage is streamed through :mod:`.mcap_salvage` (every chunk checked, recording order
kept, damaged chunks skipped and reported); sqlite3 bags and bags with rosbag2 compression
go through rosbags' ``AnyReader`` (log-time order), compressed MCAP files CRC-checked first.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader

from .locate import _resolve, _rosbag2_compressed, _storage_files, _Unit, bag_info
from .mcap_salvage import _McapSalvager, _verify_mcap
from .report import BagDamage, BagError, BagMessage, BagReadReport
from .serde import _deserialize, _typestore_from_schemas, default_typestore

__all__ = ['read_bag']


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
            info = bag_info(path)
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
