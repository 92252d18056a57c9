"""Reindexing: make a bag left by a killed recorder complete again (``mbrl-ros reindex``)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2.metadata import parse_qos as _parse_qos

from .locate import _natural_key, _sniff
from .mcap_salvage import _McapSalvager
from .mcap_storage import RESERVE_NAME, _CrcMcapStorage, _RosbagWriter
from .report import BagDamage, BagError
from .serde import _typestore_from_schemas

__all__ = ['ReindexReport', 'reindex_bag']


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
