"""The wire codec: one stream entry = one field `__data__` = UTF-8 CloudEvent JSON.

`decode_entry` never raises anything but `DecodeError`, whose message is a
readable reason fit for the dead-letter stream.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .events import EVENT_TYPES, NINO_IN_TEXT, Envelope, Event
from .streams import DATA_FIELD, DATA_FIELD_B, type_of_stream

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)

#: Largest `__data__` accepted; anything larger is a dead letter, not a memory problem.
MAX_EVENT_BYTES = 64 * 1024


class DecodeError(ValueError):
    """The entry is not a valid event of the contract; `str(err)` is the reason.
    Anything in it shaped like an NI number (quoted from the input) is masked:
    reasons go to the dead letters and the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(NINO_IN_TEXT.sub("[NI-NUMBER-REDACTED]", reason))


def encode(event: Envelope) -> bytes:
    """The CloudEvent as compact UTF-8 JSON (None-valued optional attributes left out)."""
    return event.model_dump_json(exclude_none=True).encode()


def entry_fields(event: Envelope) -> dict[str, bytes]:
    """The fields of the stream entry for `event`, ready for XADD."""
    return {DATA_FIELD: encode(event)}


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(event)"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def decode(raw: bytes | str, *, expected_type: str | None = None) -> Envelope:
    """Validate one CloudEvent JSON document against the contract."""
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:
            raise DecodeError(
                f"event text has no UTF-8 form ({exc.reason} at character {exc.start})"
            ) from None
    if len(raw) > MAX_EVENT_BYTES:
        raise DecodeError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    expected = EVENT_TYPES.get(expected_type) if expected_type is not None else None
    if expected is not None:
        # The common case, a valid event of the stream's type, parsed once. Anything
        # else takes the careful path below, which says what is wrong.
        event: Envelope | None
        try:  # (no context manager: this runs for every entry every service reads)
            event = expected.model_validate_json(raw)
        except Exception:
            event = None  # whatever is wrong, the careful path says it
        # `type` has a default in each model: it must have been on the wire.
        if event is not None and "type" in event.model_fields_set:
            return event
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"__data__ is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    # A cheap first look gives a better reason than the union's error list.
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"__data__ is not JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Integers over CPython's 4,300 digits; nesting deeper than the stack.
        raise DecodeError(f"__data__ is not usable JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise DecodeError("__data__ is not a JSON object (a CloudEvent is an object)")
    etype = doc.get("type")
    if not isinstance(etype, str):
        raise DecodeError("CloudEvent has no string `type` attribute")
    cls = EVENT_TYPES.get(etype)
    if cls is None:
        raise DecodeError(f"unknown event type {etype!r}")
    if expected_type is not None and etype != expected_type:
        raise DecodeError(f"event of type {etype!r} on the stream for {expected_type!r}")
    try:
        return cls.model_validate_json(raw)
    except ValidationError as exc:
        raise DecodeError(f"invalid {etype}: {_format_errors(exc)}") from None
    except Exception as exc:  # a validator failing otherwise than by ValueError
        raise DecodeError(f"invalid {etype}: {type(exc).__name__}: {str(exc)[:200]}") from None


def decode_entry(stream: str, fields: dict[bytes, bytes]) -> Envelope:
    """Decode a raw stream entry read from `stream`."""
    data = fields.get(DATA_FIELD_B)
    if data is None:
        names = ", ".join(repr(k.decode("utf-8", "replace")) for k in fields) or "none"
        raise DecodeError(f"entry has no {DATA_FIELD} field (fields: {names})")
    if len(fields) > 1:
        names = ", ".join(repr(k.decode("utf-8", "replace")) for k in fields if k != DATA_FIELD_B)
        raise DecodeError(f"entry has fields besides {DATA_FIELD}: {names}")
    return decode(data, expected_type=type_of_stream(stream))


def validate_python(obj: Any) -> Envelope:
    """Validate an already-parsed CloudEvent (a dict); raises DecodeError."""
    try:
        return _ADAPTER.validate_python(obj)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise DecodeError(_format_errors(exc)) from None
