"""Upserting "latest in event time wins" state, the same way in every service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, TypeVar

from sqlmodel import Session, SQLModel

from idt_contract import Envelope
from idt_domain.calendar import london_date, utc_key
from idt_domain.ordering import supersedes

Row = TypeVar("Row", bound=SQLModel)


def upsert_latest(
    session: Session, model: type[Row], key: Any, event: Envelope, **values: Any
) -> Row | None:
    """Set `values` on the row of `model` whose primary key is `key`, unless the row
    already holds a later event (in event time, then event id). The model has
    `time_key` and `event_id` columns. Returns the row, or None when it was kept."""
    time_key = utc_key(event.time)
    # FOR UPDATE (PostgreSQL): a replica applying another event for the same key
    # waits, then compares with what this one wrote; never a lost update.
    row = session.get(model, key, with_for_update=True)
    if row is not None and not supersedes((time_key, event.id), (row.time_key, row.event_id)):  # type: ignore[attr-defined]
        return None
    if row is None:
        table = model.__table__  # type: ignore[attr-defined]
        names = [c.name for c in table.primary_key.columns]
        keys = key if isinstance(key, tuple) else (key,)
        row = model(
            **dict(zip(names, keys, strict=True)), **values, time_key=time_key, event_id=event.id
        )
    else:
        for name, value in {**values, "time_key": time_key, "event_id": event.id}.items():
            setattr(row, name, value)
    session.add(row)
    session.flush()
    return row


def advance_clock(
    session: Session, model: type[Row], ticks: Sequence[Envelope]
) -> tuple[date | None, date] | None:
    """Move a service's business time (a one-row table with `time_key` and `as_of`)
    to the latest of `ticks`; it never goes back. Returns the business dates
    (before, after), or None when the ticks were not later than the clock."""
    latest = max(ticks, key=lambda e: (utc_key(e.time), e.id))
    key = utc_key(latest.time)
    clock = session.get(model, 1, with_for_update=True)
    if clock is not None and key <= clock.time_key:  # type: ignore[attr-defined]
        return None
    before: date | None = clock.as_of if clock is not None else None  # type: ignore[attr-defined]
    after = london_date(latest.time)
    clock = clock or model(id=1, time_key=key, as_of=after)
    clock.time_key, clock.as_of = key, after  # type: ignore[attr-defined]
    session.add(clock)
    session.flush()
    return before, after
