"""Schemas come from migrations: each service's migrations build exactly its models."""

from __future__ import annotations

import importlib
import multiprocessing
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from idt_runtime.db import make_engine, migrate
from idt_runtime.outbox import pending, pending_count, prunable

SERVICES = ["contact_centre", "bdc", "scheduler", "scoring"]


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_the_models(service, tmp_path, database_url):
    spec = importlib.import_module(f"services.{service}.app").SPEC
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/m.db")
    migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")
    migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")  # idempotent

    def mine(obj, name, type_, *_):
        return type_ != "table" or bool(name and name.startswith(spec.prefix + "_"))

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_object": mine,
                "compare_type": True,
                "version_table": f"{spec.prefix}_alembic_version",
            },
        )
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], f"models and migrations of {service} differ; run idt_runtime.revision"


#: Each service's last migration with the outbox's event ids unique.
_OUTBOX_IDS_UNIQUE_UNTIL = {
    "contact_centre": "fc762326ab04",
    "bdc": "47eb45cd8312",
    "scheduler": "3bf517d901a7",
    "scoring": "f379acf4f2f1",
}


def _outbox_row(seq: int, event_id: str, published: bool) -> dict[str, Any]:
    stamp = "2026-11-24 03:00:00"
    return {"seq": seq, "event_id": event_id, "stream": "idt:x", "payload": b"{}",
            "created_at": stamp, "published_at": stamp if published else None}  # fmt: skip


@pytest.mark.parametrize("service", SERVICES)
def test_an_outbox_keeps_its_rows_when_its_event_ids_stop_being_unique(
    service, tmp_path, database_url
):
    """Compare_metadata does not see an unnamed UNIQUE constraint go on SQLite, so
    this checks it: a store made before the change, with rows queued and published,
    migrates to one whose outbox keeps every row and has no index on event ids
    (each queued event wrote a page of one)."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    version_table = f"{spec.prefix}_alembic_version"
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/m.db")
    outbox = sa.table(
        f"{spec.prefix}_outbox",
        *(sa.column(c) for c in _outbox_row(0, "", True)),
    )
    try:
        migrate(engine, spec.migrations, version_table, to=_OUTBOX_IDS_UNIQUE_UNTIL[service])
        rows = [_outbox_row(1, "a", True), _outbox_row(2, "b", False)]
        with engine.begin() as conn:
            conn.execute(outbox.insert(), rows)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(outbox.insert(), [_outbox_row(3, "a", False)])  # unique before

        migrate(engine, spec.migrations, version_table)

        with engine.begin() as conn:
            kept = conn.execute(
                sa.select(outbox.c.seq, outbox.c.event_id, outbox.c.published_at).order_by(
                    outbox.c.seq
                )
            )
            assert [(s, e, p is not None) for s, e, p in kept] == [(1, "a", True), (2, "b", False)]
            conn.execute(outbox.insert(), [_outbox_row(3, "a", False)])
        inspector = sa.inspect(engine)
        on_ids = [
            i["name"]
            for i in [
                *inspector.get_indexes(outbox.name),
                *inspector.get_unique_constraints(outbox.name),
            ]
            if "event_id" in i["column_names"]
        ]
        assert on_ids == []
        indexed = sorted(i["column_names"] for i in inspector.get_indexes(outbox.name))
        assert indexed == [["published_at"], ["seq"]]  # published ones, waiting ones
    finally:
        engine.dispose()


def _replica(url: str, service: str, start: Any, results: Any) -> None:
    """One replica process starting: migrate its service once all are ready."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    engine = make_engine(url)
    start.wait(60)
    try:
        migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")
        results.put("ok")
    except Exception as exc:
        results.put(f"{service}: {exc!r}")
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_in_turn(tmp_path, database_url):
    """Two replicas of every service start at once, as separate processes, against
    one database (as in deploy/compose.yaml): each migration runs once, none fails."""
    url = database_url or f"sqlite:///{tmp_path}/shared.db"
    jobs = [s for s in SERVICES for _replica_no in range(2)]
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_replica, args=(url, s, start, results)) for s in jobs]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in jobs]
    for p in procs:
        p.join(30)
    assert outcomes == ["ok"] * len(jobs)
    engine = make_engine(url)
    with engine.connect() as conn:
        for service in SERVICES:
            spec = importlib.import_module(f"services.{service}.app").SPEC
            versions = conn.exec_driver_sql(
                f"SELECT version_num FROM {spec.prefix}_alembic_version"
            ).all()
            assert len(versions) == 1, (service, versions)
    engine.dispose()


def test_scheduler_events_keep_their_order_when_keyed_by_arrival(tmp_path, database_url):
    """A store whose events were keyed by event id migrates to one keyed by `seq`:
    every event kept, in the order stored, found by claim; no index on event ids
    (each stored event wrote a page of one); and back again."""
    spec = importlib.import_module("services.scheduler.app").SPEC
    version_table = f"{spec.prefix}_alembic_version"
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/m.db")
    events = sa.table(
        "sch_events",
        *(sa.column(c) for c in ("event_id", "claim_id", "type", "time_key", "payload")),
    )
    stored = [
        {
            "event_id": e,
            "claim_id": c,
            "type": "marker-set",
            "time_key": "2026-01-01T00:00:00Z",
            "payload": e.encode(),
        }
        for e, c in [("z", "C1"), ("a", "C2"), ("m", "C1")]
    ]
    try:
        migrate(engine, spec.migrations, version_table, to="741cd2a64e54")
        with engine.begin() as conn:
            for row in stored:  # one at a time: the order they were stored in
                conn.execute(events.insert(), [row])
        migrate(engine, spec.migrations, version_table, to="a99be6998a94")
        seq = sa.column("seq")
        with engine.begin() as conn:
            kept = conn.execute(
                sa.select(seq, events.c.event_id, events.c.claim_id, events.c.payload)
                .select_from(events)
                .order_by(seq)
            ).all()
            assert [(e, c, bytes(p)) for _, e, c, p in kept] == [
                ("z", "C1", b"z"),
                ("a", "C2", b"a"),
                ("m", "C1", b"m"),
            ]
            assert [s for s, *_ in kept] == sorted({s for s, *_ in kept})
            conn.execute(events.insert(), [{**stored[0], "event_id": "new"}])  # seq given
        inspector = sa.inspect(engine)
        assert inspector.get_pk_constraint("sch_events")["constrained_columns"] == ["seq"]
        assert [i["column_names"] for i in inspector.get_indexes("sch_events")] == [["claim_id"]]

        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(spec.migrations))
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = version_table
            command.downgrade(cfg, "741cd2a64e54")
        pk = sa.inspect(engine).get_pk_constraint("sch_events")["constrained_columns"]
        assert pk == ["event_id"]
        with engine.begin() as conn:
            back = conn.execute(sa.select(events.c.event_id).order_by(events.c.event_id))
            assert list(back.scalars()) == ["a", "m", "new", "z"]
    finally:
        engine.dispose()


#: Each service's last migration with one index, of every row, on the outbox's
#: `published_at`.
_OUTBOX_ONE_INDEX_UNTIL = {
    "contact_centre": "cd9b94050dc0",
    "bdc": "d00fa1c16662",
    "scheduler": "a99be6998a94",
    "scoring": "15ffb575ad7a",
}


def _plan(conn: sa.Connection, stmt: Any) -> str:
    """The database's plan for `stmt`, as text."""
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    return "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))


@pytest.mark.parametrize("service", SERVICES)
def test_the_relay_finds_waiting_outbox_rows_by_an_index_of_their_own(
    service, tmp_path, database_url
):
    """The relay's next batch and its count read the partial index of waiting rows,
    and the prune reads published rows by when. With one index on `published_at`,
    PostgreSQL kept an entry for every row's unpublished version until vacuum, and
    after a 1M replay the relay's query walked 812k of them (0.7 s a batch). A
    store made before keeps its rows, and the migration goes back."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    version_table = f"{spec.prefix}_alembic_version"
    outbox = spec.tables.outbox
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/m.db")
    before = _OUTBOX_ONE_INDEX_UNTIL[service]
    try:
        migrate(engine, spec.migrations, version_table, to=before)
        with engine.begin() as conn:
            rows = [_outbox_row(i, f"e{i}", published=i <= 3000) for i in range(1, 3011)]
            conn.execute(sa.table(outbox.name, *(sa.column(c) for c in rows[0])).insert(), rows)
        migrate(engine, spec.migrations, version_table)
        where = f"{engine.dialect.name}_where"
        partial = {
            i["name"]: str(i.get("dialect_options", {}).get(where))
            for i in sa.inspect(engine).get_indexes(outbox.name)
        }
        assert set(partial) == {f"ix_{outbox.name}_pending", f"ix_{outbox.name}_published_at"}
        assert "is null" in partial[f"ix_{outbox.name}_pending"].lower()
        assert "is not null" in partial[f"ix_{outbox.name}_published_at"].lower()
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"ANALYZE {outbox.name}")  # as autovacuum would
            assert f"ix_{outbox.name}_pending" in _plan(conn, pending(outbox, 500))
            assert f"ix_{outbox.name}_pending" in _plan(conn, pending_count(outbox))
            cutoff = datetime(2026, 11, 25, tzinfo=UTC)
            assert f"ix_{outbox.name}_published_at" in _plan(conn, prunable(outbox, cutoff, 500))
            assert [r[0] for r in conn.execute(pending(outbox, 500))] == list(range(3001, 3011))
            assert conn.execute(pending_count(outbox)).scalar_one() == 10
            assert len(conn.execute(prunable(outbox, cutoff, 5000)).all()) == 3000

        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(spec.migrations))
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = version_table
            command.downgrade(cfg, before)
        indexes = sa.inspect(engine).get_indexes(outbox.name)
        assert [(i["name"], i["column_names"]) for i in indexes] == [
            (f"ix_{outbox.name}_published_at", ["published_at"])
        ]
        options = indexes[0].get("dialect_options", {})
        assert not options.get("sqlite_where") and not options.get("postgresql_where")
        with engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 3010
    finally:
        engine.dispose()
