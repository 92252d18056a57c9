"""What reading a bag returns: messages, damage entries and the read report (rosbag2, MCAP).

:class:`BagMessage` is one decoded message with its log time [ns] and recording position;
:class:`BagDamage` is one damaged place of a storage file (file, byte offset, what, messages
lost); :class:`BagReadReport` sums up one :func:`~mbrl_ros.core.data.bag.read_bag` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BagDamage", "BagError", "BagMessage", "BagReadReport"]


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
