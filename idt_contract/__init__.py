"""The IDT event contract: CloudEvent models, stream names and the wire codec."""

from .codec import DecodeError, decode, decode_entry, encode, entry_fields
from .events import EVENT_CLASSES, EVENT_TYPES, Envelope, Event, make_event, new_event_id
from .streams import ALERTS_PREFIX, DATA_FIELD, DEAD_LETTERS, alerts_stream, stream_for

__all__ = [
    "ALERTS_PREFIX",
    "DATA_FIELD",
    "DEAD_LETTERS",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "DecodeError",
    "Envelope",
    "Event",
    "alerts_stream",
    "decode",
    "decode_entry",
    "encode",
    "entry_fields",
    "make_event",
    "new_event_id",
    "stream_for",
]
