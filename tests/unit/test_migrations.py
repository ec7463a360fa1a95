"""Schemas come from migrations: each service's migrations build exactly its models."""

from __future__ import annotations

import importlib
import multiprocessing
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from idt_runtime.db import make_engine, migrate

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
        assert [i["column_names"] for i in inspector.get_indexes(outbox.name)] == [["published_at"]]
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
