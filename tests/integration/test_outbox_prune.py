"""The outbox keeps what is in flight, not every event forever: published rows
older than the retention period are deleted, on SQLite and PostgreSQL. And its
relay publishes everything pending with no transaction more than it needs."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import MetaData, insert, select
from sqlmodel import Session

from idt_runtime.db import make_engine, runtime_tables
from idt_runtime.metrics import RuntimeMetrics
from idt_runtime.outbox import OutboxRelay, prunable


def test_published_rows_past_retention_are_deleted_and_nothing_else(database_url, tmp_path, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="idt.outbox")
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
        assert asyncio.run(relay.prune(now, chunk=1)) == 2  # a chunk per transaction
        with Session(engine) as s:
            left = set(s.execute(select(tables.outbox.c.event_id)).scalars())
        assert left == {"recent", "just-published", "pending"}
        # The operator's log says what a prune did (a prune of nothing says nothing).
        said = [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]
        assert len(said) == 1 and "prn: pruned 2 published outbox rows" in said[0]
        assert "(3 chunks," in said[0]
        assert asyncio.run(relay.prune(now)) == 0
        assert len([r for r in caplog.records if "pruned" in r.getMessage()]) == 1
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


def test_a_prune_finds_old_rows_by_index_not_by_reading_the_outbox(tmp_path):  # type: ignore[no-untyped-def]
    """The prune runs once a minute under the write lock: SQLite must find the old
    rows through the `published_at` index. Ordered by `seq` it walked the whole
    table while nothing was old enough (0.2-0.9 s at 1M events)."""
    metadata = MetaData()
    tables = runtime_tables("prp", metadata)
    engine = make_engine(f"sqlite:///{tmp_path}/plan.db")
    metadata.create_all(engine)
    try:
        query = prunable(tables.outbox, datetime(2026, 11, 23, tzinfo=UTC), 5000)
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as c:
            plan = " | ".join(r[-1] for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        assert "ix_prp_outbox_published_at" in plan, plan
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    finally:
        engine.dispose()


def test_a_flush_stops_after_a_short_batch_and_publishes_everything(redis_url, tmp_path):  # type: ignore[no-untyped-def]
    """A batch shorter than `batch_size` took every pending row (the relay lock is
    held): the flush ends there instead of a transaction more that finds none."""
    import asyncio

    import redis
    from sqlalchemy import event

    metadata = MetaData()
    tables = runtime_tables("fls", metadata)
    engine = make_engine(f"sqlite:///{tmp_path}/flush.db")
    metadata.create_all(engine)
    transactions: list[int] = []
    event.listen(engine, "begin", lambda _conn: transactions.append(1))

    def queue(*ids: str) -> None:
        with Session(engine) as s, s.begin():
            s.execute(insert(tables.outbox), [
                {"event_id": i, "stream": "idt:flush-test", "payload": b"{}",
                 "created_at": datetime.now(UTC)} for i in ids
            ])  # fmt: skip

    relay = OutboxRelay(
        service="fls", engine=engine, tables=tables, redis_url=redis_url,
        metrics=RuntimeMetrics("fls"), batch_size=2,
    )  # fmt: skip
    r = redis.Redis.from_url(redis_url)
    try:
        queue("a")
        transactions.clear()
        assert asyncio.run(relay.flush()) == 1
        assert len(transactions) == 1  # one short batch: done
        queue("b", "c", "d", "e")
        transactions.clear()
        assert asyncio.run(relay.flush()) == 4
        assert len(transactions) == 3  # two full batches, then one that finds none
        assert r.xlen("idt:flush-test") == 5
        with Session(engine) as s:
            pending = s.execute(
                select(tables.outbox.c.event_id).where(tables.outbox.c.published_at.is_(None))
            ).all()
        assert pending == []
    finally:
        r.close()
        relay.close()
        engine.dispose()


def test_under_a_backlog_the_relay_counts_what_is_left_at_most_once_a_second(redis_url, tmp_path):  # type: ignore[no-untyped-def]
    """Every full batch used to count the rows still waiting, under the relay's
    lock (0.2 s for a backlog of 150k on PostgreSQL, for each batch of 500): the
    gauge is now set from a count taken at most once a COUNT_EVERY_S, and a short
    batch (nothing left) sets it to 0 as before."""
    from sqlalchemy import event

    from idt_runtime import outbox as outbox_module

    metadata = MetaData()
    tables = runtime_tables("cnt", metadata)
    engine = make_engine(f"sqlite:///{tmp_path}/count.db")
    metadata.create_all(engine)
    counts: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cur, sql, *_: counts.append(sql) if "count(" in sql.lower() else None,
    )
    with Session(engine) as s, s.begin():
        s.execute(insert(tables.outbox), [
            {"event_id": f"e{i}", "stream": "idt:count-test", "payload": b"{}",
             "created_at": datetime.now(UTC)} for i in range(7)
        ])  # fmt: skip
    metrics = RuntimeMetrics("cnt")
    relay = OutboxRelay(
        service="cnt", engine=engine, tables=tables, redis_url=redis_url,
        metrics=metrics, batch_size=2,
    )  # fmt: skip
    gauge = metrics.outbox_pending.labels("cnt")
    try:
        assert relay.publish_once() is False  # full: 5 left, counted
        assert len(counts) == 1 and gauge._value.get() == 5
        assert relay.publish_once() is False  # full again, within the second: not counted
        assert len(counts) == 1 and gauge._value.get() == 5
        relay._counted_at -= outbox_module.COUNT_EVERY_S  # a second later
        assert relay.publish_once() is False
        assert len(counts) == 2 and gauge._value.get() == 1
        assert relay.publish_once() is True  # short: nothing left, not counted
        assert len(counts) == 2 and gauge._value.get() == 0
    finally:
        relay.close()
        engine.dispose()


def test_the_relays_prune_lets_claim_events_go_first_between_chunks(tmp_path):  # type: ignore[no-untyped-def]
    """After a bulk replay the first prune deletes an hour of it: each chunk waits,
    as the sweeper's do, for the consumer to have no batch in hand (up to twice the
    time the last chunk held the write lock), instead of holding the lock back to
    back; what the prune deletes is the same."""
    import asyncio

    metadata = MetaData()
    tables = runtime_tables("pry", metadata)
    engine = make_engine(f"sqlite:///{tmp_path}/yield.db")
    metadata.create_all(engine)
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with Session(engine) as s, s.begin():
        s.execute(insert(tables.outbox), [
            {"event_id": f"e{i}", "stream": "idt:x", "payload": b"{}", "created_at": now,
             "published_at": now - timedelta(seconds=7200 if i < 7 else 60)}
            for i in range(9)
        ])  # fmt: skip
    relay = OutboxRelay(
        service="pry", engine=engine, tables=tables, redis_url="redis://127.0.0.1:1",
        metrics=RuntimeMetrics("pry"), republish_s=10, retention_s=3600,
    )  # fmt: skip
    waits: list[float] = []
    left_then: list[int] = []

    async def quiet(within_s: float) -> bool:
        waits.append(within_s)
        with Session(engine) as s:  # the consumer's turn: the lock is free
            left_then.append(len(s.execute(select(tables.outbox.c.seq)).all()))
        return True

    relay.quiet = quiet
    try:
        assert asyncio.run(relay.prune(now, chunk=3)) == 7
        assert left_then == [9, 6, 3]  # before each chunk of 3: 3, 3, then the last 1
        assert waits[0] == 0.01 and all(w >= 0.01 for w in waits)
        with Session(engine) as s:
            left = set(s.execute(select(tables.outbox.c.event_id)).scalars())
        assert left == {"e7", "e8"}
        assert asyncio.run(relay.prune(now, chunk=3)) == 0
    finally:
        relay.close()
        engine.dispose()


def test_a_service_relays_prune_waits_for_its_own_consumer(redis_url, var_dir):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from services.scheduler.app import SchedulerSettings, create_app

    settings = SchedulerSettings(redis_url=redis_url, var_dir=var_dir, environment="test")
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert runtime.relay.quiet == runtime.consumer.quiet


def test_the_relay_publishes_while_its_prune_is_under_way(redis_url, tmp_path):  # type: ignore[no-untyped-def]
    """The prune runs beside the relay's publishing, not in its loop: a paced prune
    of an hour of a bulk replay takes a while, and an event HTTP intake queues
    meanwhile goes out at once."""
    import asyncio

    import redis

    from idt_runtime.outbox import add_to_outbox
    from tests.claims import Claim

    metadata = MetaData()
    tables = runtime_tables("pby", metadata)
    engine = make_engine(f"sqlite:///{tmp_path}/beside.db")
    metadata.create_all(engine)
    old = datetime.now(UTC) - timedelta(hours=2)
    with Session(engine) as s, s.begin():
        s.execute(insert(tables.outbox), [
            {"event_id": f"old-{i}", "stream": "idt:x", "payload": b"{}", "created_at": old,
             "published_at": old} for i in range(3)
        ])  # fmt: skip
    relay = OutboxRelay(
        service="pby", engine=engine, tables=tables, redis_url=redis_url,
        metrics=RuntimeMetrics("pby"), republish_s=10, retention_s=3600,
    )  # fmt: skip
    held = asyncio.Event()
    release = asyncio.Event()

    async def quiet(within_s: float) -> bool:  # the prune waits here until released
        held.set()
        await release.wait()
        return True

    relay.quiet = quiet
    stream = "idt:test-beside-prune"
    r = redis.Redis.from_url(redis_url)
    event = Claim("PBY-1", start="2007-01-20").events[0]

    async def main() -> None:
        task = asyncio.create_task(relay.run_forever(interval_s=0.05))
        await asyncio.wait_for(held.wait(), 5)  # the prune is under way
        with Session(engine) as s, s.begin():
            add_to_outbox(s, tables, [event], stream=stream)
        relay.notify()
        for _ in range(100):
            if r.xlen(stream):
                break
            await asyncio.sleep(0.05)
        assert r.xlen(stream) == 1, "the relay waited for the prune"
        release.set()
        for _ in range(100):  # ... which then finishes
            with Session(engine) as s:
                if not s.execute(select(tables.outbox.c.seq).where(
                        tables.outbox.c.event_id.like("old-%"))).first():  # fmt: skip
                    break
            await asyncio.sleep(0.05)
        relay.stop()
        await asyncio.wait_for(task, 5)

    try:
        asyncio.run(main())
        with Session(engine) as s:
            left = set(s.execute(select(tables.outbox.c.event_id)).scalars())
        assert left == {event.id}
    finally:
        r.close()
        relay.close()
        engine.dispose()
