"""Message (de)serialisation: the rosbags typestores that decode a bag's CDR messages.

A bag's own schema records (``ros2msg`` or ``ros2idl`` definitions) are preferred, as
rosbags' AnyReader does, so a bag recorded with other message versions decodes with the
definitions it was written with; types missing there come from the ROS 2 Kilted store.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

__all__ = ["default_typestore"]


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
