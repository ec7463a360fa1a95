"""Upserting "latest in event time wins" state, the same way in every service."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Select, Table, bindparam, select
from sqlmodel import Session, SQLModel

from idt_contract import Envelope
from idt_domain.calendar import london_date, utc_key
from idt_domain.ordering import supersedes

from .bulk import bulk_insert, bulk_update_by_pk

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


E = TypeVar("E", bound=Envelope)


def all_of(events: Sequence[Envelope], kind: type[E]) -> list[E]:
    """The events, typed: an applier is only ever given its stream's type."""
    out: list[E] = []
    for ev in events:
        if not isinstance(ev, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(ev).__name__}")
        out.append(ev)
    return out


Key = Any  # a primary-key value, or a tuple of them for a composite key


@cache
def _held_rows(table: Table) -> Select[Any]:
    """Keys, time keys and event ids of the rows whose first key column is in
    `{"ids": [...]}`, locked: built once per table (idt_runtime/bulk.py)."""
    pk_cols = list(table.primary_key.columns)
    return (
        select(*pk_cols, table.c.time_key, table.c.event_id)
        .where(pk_cols[0].in_(bindparam("ids", expanding=True)))
        .order_by(*pk_cols)
        .with_for_update()
    )


def upsert_latest_many(
    session: Session, model: type[SQLModel], items: Iterable[tuple[Key, Envelope, dict[str, Any]]]
) -> list[tuple[Any, ...]]:
    """`upsert_latest` for a whole batch in three statements: one SELECT (rows
    locked FOR UPDATE on PostgreSQL), one bulk INSERT, one bulk UPDATE by primary
    key. Within the batch the latest event per key wins, as it would one by one.
    Returns the keys (as tuples) whose row was written. Rows written here are not
    in the session's identity map: read them with a query, not `session.get`."""
    table = model.__table__  # type: ignore[attr-defined]
    pk_cols = list(table.primary_key.columns)
    names = [c.name for c in pk_cols]
    best: dict[tuple[Any, ...], tuple[tuple[str, str], dict[str, Any]]] = {}
    for key, event, values in items:
        k = key if isinstance(key, tuple) else (key,)
        order = (utc_key(event.time), event.id)
        held = best.get(k)
        if held is None or supersedes(order, held[0]):
            best[k] = (order, values)
    if not best:
        return []
    # Narrowed by the first key column (portable; composite keys filtered below).
    firsts = sorted({k[0] for k in best})
    found = session.execute(_held_rows(table), {"ids": firsts}).all()
    existing = {tuple(r[: len(pk_cols)]): (r[-2], r[-1]) for r in found}
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for k, (order, values) in best.items():
        held_order = existing.get(k)
        if held_order is not None and not supersedes(order, held_order):
            continue
        row = {**dict(zip(names, k, strict=True)), **values}
        row["time_key"], row["event_id"] = order
        (updates if held_order is not None else inserts).append(row)
    bulk_insert(session, table, inserts)
    bulk_update_by_pk(session, table, updates)
    return [tuple(r[n] for n in names) for r in (*inserts, *updates)]


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
