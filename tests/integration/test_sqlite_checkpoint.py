"""SQLite: the WAL is checkpointed by the service's own checkpointer, off the
commits (commits checkpoint only past a fallback length); reads alone take no lock."""

from __future__ import annotations

import os

from fastapi.testclient import TestClient
from sqlalchemy import text

from idt_runtime.db import (
    SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES,
    SQLITE_AUTOCHECKPOINT_PAGES,
    checkpoint_wal,
    make_engine,
)
from services.contact_centre.app import ContactCentreSettings, create_app
from tests.conftest import wait_for
from tests.helpers import TEST_KEY


def _autocheckpoint(engine) -> int:
    with engine.connect() as c:
        return int(c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _wal_frames(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("idt_sqlite_wal_frames{"):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def test_a_passive_checkpoint_copies_the_wal_into_the_database_file(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/c.db", sqlite_autocheckpoint_pages=10_000)
    try:
        assert _autocheckpoint(engine) == 10_000
        with engine.begin() as c:
            c.execute(text("CREATE TABLE scratch (x BLOB)"))
            for _ in range(200):
                c.execute(text("INSERT INTO scratch VALUES (randomblob(4000))"))
        size = os.path.getsize(tmp_path / "c.db")
        busy, frames, done = checkpoint_wal(engine)
        assert (busy, done) == (0, frames) and frames > 200  # every page, none left
        assert os.path.getsize(tmp_path / "c.db") > size + 200 * 4000
        with engine.connect() as c:  # the data reads back from the file
            assert c.execute(text("SELECT count(*) FROM scratch")).scalar_one() == 200
    finally:
        engine.dispose()


def test_a_service_checkpoints_its_sqlite_wal_on_its_own(redis_url, var_dir, monkeypatch):
    """Commits checkpoint only past the fallback (160 MiB of WAL); what the service
    wrote reaches the database file all the same, by its checkpointer. Each
    checkpoint first waits for the consumer to have no batch in hand (so that it
    ends before the next commit and SQLite can start the WAL again), but only
    briefly: against a consumer never quiet (a backlog) it checkpoints all the
    same. Operators see the WAL's length at the last checkpoint."""
    import asyncio

    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY,
        sqlite_checkpoint_s=0.1,
    )  # fmt: skip
    db = var_dir / "contact_centre.db"
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        asked: list[float] = []

        async def never_quiet(within_s: float) -> bool:  # a batch always in hand
            asked.append(within_s)
            await asyncio.sleep(within_s)
            return False

        monkeypatch.setattr(runtime.consumer, "quiet", never_quiet)
        engine = runtime.engine
        assert _autocheckpoint(engine) == SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES
        size = os.path.getsize(db)
        with engine.begin() as c:  # 2 MB: far below the fallback
            c.execute(text("CREATE TABLE scratch (x BLOB)"))
            for _ in range(500):
                c.execute(text("INSERT INTO scratch VALUES (randomblob(4000))"))
        wait_for(lambda: os.path.getsize(db) > size + 500 * 4000, timeout=10)
        assert asked and set(asked) == {0.1}
        wait_for(lambda: _wal_frames(client.get("/metrics").text) >= 500, timeout=10)

    off = settings.model_copy(update={"sqlite_checkpoint_s": 0.0})
    with TestClient(create_app(off)) as client:
        engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
        assert _autocheckpoint(engine) == SQLITE_AUTOCHECKPOINT_PAGES  # SQLite's own way


def test_a_read_through_reading_takes_no_lock_and_keeps_its_snapshot(tmp_path):
    """Transactions begin IMMEDIATE (the write lock at once), except through
    `reading`: a read under way there lets another connection write, and goes on
    seeing the data as it was when it began."""
    import sqlite3

    from sqlmodel import Session

    from idt_runtime.db import reading

    path = tmp_path / "r.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE t (x INTEGER)"))
        other = sqlite3.connect(path, timeout=0.2, isolation_level=None)

        def write() -> None:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO t VALUES (1)")
            other.execute("COMMIT")

        with Session(engine) as plain:
            plain.execute(text("SELECT count(*) FROM t")).one()
            try:
                write()
                raise AssertionError("a plain session's read did not hold the write lock")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)  # BEGIN IMMEDIATE itself was refused
        with Session(reading(engine)) as read:
            assert read.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
            write()  # not held back
            assert read.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
        with Session(reading(engine)) as read:
            assert read.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
        other.close()
    finally:
        engine.dispose()
