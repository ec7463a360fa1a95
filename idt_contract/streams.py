"""Stream names (spec §6): one stream per event type, one alert stream per office."""

from __future__ import annotations

PREFIX = "idt:"
DEAD_LETTERS = "idt:dead-letters"
ALERTS_PREFIX = "idt:window-alerts:"

#: The field that carries the CloudEvent JSON in every stream entry.
DATA_FIELD = "__data__"
DATA_FIELD_B = DATA_FIELD.encode()


def stream_for(event_type: str) -> str:
    """`idt:<type>`, e.g. `idt:claim-registered`."""
    return PREFIX + event_type


def alerts_stream(office_id: str) -> str:
    """The alert stream a single office reads: `idt:window-alerts:<office_id>`."""
    return ALERTS_PREFIX + office_id


def type_of_stream(stream: str) -> str | None:
    """The event type a stream carries, or None for streams that carry no single type."""
    if not stream.startswith(PREFIX) or stream == DEAD_LETTERS:
        return None
    if stream.startswith(ALERTS_PREFIX):
        return "window-alert"
    return stream[len(PREFIX) :]


def outbox_run_key(service: str) -> str:
    """Not a stream: where a service's outbox relays keep the Redis run id they
    last published to (idt_runtime.outbox republishes after a restart)."""
    return f"{PREFIX}outbox-run:{service}"
