"""The outbox keeps what is in flight, not every event forever: published rows
older than the retention period are deleted, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import MetaData, insert, select
from sqlmodel import Session

from idt_runtime.db import make_engine, runtime_tables
from idt_runtime.metrics import RuntimeMetrics
from idt_runtime.outbox import OutboxRelay


def test_published_rows_past_retention_are_deleted_and_nothing_else(database_url, tmp_path):  # type: ignore[no-untyped-def]
    metadata = MetaData()
    tables = runtime_tables("prn", metadata)
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/prune.db")
    metadata.create_all(engine)
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    ages = {"old-1": 7200, "old-2": 3601, "recent": 1800, "just-published": 5, "pending": None}
    with Session(engine) as s, s.begin():
        s.execute(insert(tables.outbox), [
            {"event_id": eid, "stream": "idt:x", "payload": b"{}", "created_at": now,
             "published_at": None if age is None else now - timedelta(seconds=age)}
            for eid, age in ages.items()
        ])  # fmt: skip
    relay = OutboxRelay(
        service="prn", engine=engine, tables=tables, redis_url="redis://127.0.0.1:1",
        metrics=RuntimeMetrics("prn"), republish_s=10, retention_s=3600,
    )  # fmt: skip
    try:
        assert relay.prune(now, chunk=1) == 2  # a chunk per transaction
        with Session(engine) as s:
            left = set(s.execute(select(tables.outbox.c.event_id)).scalars())
        assert left == {"recent", "just-published", "pending"}
        assert relay.prune(now) == 0
        # Retention never goes below the republish window.
        short = OutboxRelay(
            service="prn", engine=engine, tables=tables, redis_url="redis://127.0.0.1:1",
            metrics=RuntimeMetrics("prn"), republish_s=3600, retention_s=0,
        )  # fmt: skip
        assert short.retention_s == 3600
        short.close()
    finally:
        relay.close()
        engine.dispose()
