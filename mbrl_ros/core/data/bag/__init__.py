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

Modules (each imports only those above it):

* :mod:`.report`        -- BagError, BagMessage, BagDamage, BagReadReport (what reading returns);
* :mod:`.serde`         -- typestores and CDR decoding (the bag's own message definitions first);
* :mod:`.locate`        -- paths -> bags: rosbag2 directories, metadata.yaml, bare storage files;
* :mod:`.mcap_salvage`  -- integrity: MCAP record walk, chunk CRCs, damage reports;
* :mod:`.reader`        -- :func:`read_bag`;
* :mod:`.mcap_storage`  -- MCAP writing with chunk CRCs, all-or-nothing chunks, disk reserve;
* :mod:`.writer`        -- :class:`BagWriter`, :func:`qos_profile`;
* :mod:`.reindex`       -- :func:`reindex_bag` (``mbrl-ros reindex``).

Nothing here imports rclpy or ROS message packages.
"""

from .mcap_storage import RESERVE_NAME, ChunkWriteError
from .reader import read_bag
from .reindex import ReindexReport, reindex_bag
from .report import BagDamage, BagError, BagMessage, BagReadReport
from .serde import default_typestore
from .writer import BagWriter, qos_profile

__all__ = [
    "RESERVE_NAME",
    "BagDamage",
    "BagError",
    "BagMessage",
    "BagReadReport",
    "BagWriter",
    "ChunkWriteError",
    "ReindexReport",
    "default_typestore",
    "qos_profile",
    "read_bag",
    "reindex_bag",
]
