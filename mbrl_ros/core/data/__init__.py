"""Bag I/O, state/command alignment and replay buffer (ROS-free)."""

from .alignment import AlignmentConfig, AlignmentReport, align, bag_to_dataset, messages_to_streams
from .bag import (
    BagDamage,
    BagError,
    BagMessage,
    BagReadReport,
    BagWriter,
    ReindexReport,
    default_typestore,
    qos_profile,
    read_bag,
    reindex_bag,
)
from .replay_buffer import ReplayBuffer

__all__ = [
    "AlignmentConfig",
    "AlignmentReport",
    "BagDamage",
    "BagError",
    "BagMessage",
    "BagReadReport",
    "BagWriter",
    "ReindexReport",
    "ReplayBuffer",
    "align",
    "bag_to_dataset",
    "default_typestore",
    "messages_to_streams",
    "qos_profile",
    "read_bag",
    "reindex_bag",
]
