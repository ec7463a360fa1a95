"""Event-time ordering: the rule behind every "latest wins" piece of state."""

from __future__ import annotations

#: (fixed-width UTC time of the event, CloudEvent id): a total order in event time.
TimeKey = tuple[str, str]


def supersedes(new: TimeKey, old: TimeKey | None) -> bool:
    """Last-writer-wins in event time, ties broken by event id, so the same set of
    events gives the same state in any arrival order."""
    return old is None or new > old
