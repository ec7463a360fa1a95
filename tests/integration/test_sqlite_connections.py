"""SQLite: a process's writers share one connection, so its page cache stays
valid; reads (and checkpoints) take connections of their own, with small caches.

SQLite empties a connection's page cache whenever it begins a transaction after
another connection wrote. With one pool for everything, handed out first-in
first-out, a scrape's or a checkpoint's connection came back to a writer with an
empty cache (1M bench, 2026-11-24: the scheduler's three connections held 0.2-12
MiB of their 32 MiB caches and missed 2.4 pages an event; with writers alone on
their pool, last-in first-out, the writer held its 32 MiB and missed a quarter as
often)."""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from idt_runtime.db import (
    SQLITE_CACHE_KIB,
    SQLITE_READER_CACHE_KIB,
    checkpoint_wal,
    make_engine,
    reading,
    sqlite_file_of,
    write_lock,
)


def _dbapi(session: Session) -> object:
    return session.connection().connection.dbapi_connection


def _setup(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))


def test_writers_keep_one_connection_while_reads_and_checkpoints_go_on(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    try:
        _setup(engine)
        # Two writers' connections at once (an HTTP intake beside a batch, say):
        # the pool keeps both, and handing them out in turn would alternate them.
        with engine.connect(), engine.connect():
            pass
        writers: list[object] = []
        readers: list[object] = []
        in_read = threading.Event()
        release = threading.Event()

        def long_read() -> None:
            with Session(reading(engine)) as s:
                s.execute(text("SELECT count(*) FROM t")).scalar_one()
                readers.append(_dbapi(s))
                in_read.set()
                release.wait(10)

        for i in range(4):
            in_read.clear()
            release.clear()
            # A read holds a connection while the write runs; a checkpoint too.
            t = threading.Thread(target=long_read)
            t.start()
            assert in_read.wait(10)
            checkpoint_wal(engine)
            with write_lock(engine), Session(engine) as s, s.begin():
                s.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                writers.append(_dbapi(s))
            release.set()
            t.join(10)
            with Session(reading(engine)) as s:  # a read after the write, alone
                assert s.execute(text("SELECT count(*) FROM t")).scalar_one() == i + 1
                readers.append(_dbapi(s))

        assert len({id(c) for c in writers}) == 1
        assert not {id(c) for c in writers} & {id(c) for c in readers}
    finally:
        engine.dispose()


def test_reading_connections_have_small_caches_and_go_with_the_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/r.db")
    try:
        _setup(engine)
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar_one() == -SQLITE_CACHE_KIB
        reader = reading(engine)
        with reader.connect() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar_one() == -SQLITE_READER_CACHE_KIB
        assert reader.pool is not engine.pool
        assert reader.pool.checkedin() == 1
    finally:
        engine.dispose()
    assert reader.pool.checkedin() == 0


def test_a_uri_filename_makes_the_file_s_folder_not_one_named_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///file:data/u.db?mode=rwc&uri=true")
    try:
        _setup(engine)
        with Session(reading(engine)) as s:
            assert s.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    finally:
        engine.dispose()
    assert (tmp_path / "data" / "u.db").is_file()
    assert not (tmp_path / "file:data").exists()
    assert sqlite_file_of("sqlite:///file:/abs/x%20y.db?uri=true") == "/abs/x y.db"
    assert sqlite_file_of("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_file_of("sqlite://") == ""


def test_a_cache_smaller_than_the_readers_default_is_kept_for_both(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/s.db", sqlite_cache_kib=1024)
    try:
        with reading(engine).connect() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar_one() == -1024
    finally:
        engine.dispose()


def test_an_in_memory_database_is_read_through_its_own_connections(tmp_path):
    # A second pool would open a second, empty database.
    engine = make_engine("sqlite://")
    try:
        with Session(engine) as s, s.begin():
            s.execute(text("CREATE TABLE t (x INTEGER)"))
            s.execute(text("INSERT INTO t VALUES (1)"))
        with Session(reading(engine)) as s:
            assert s.execute(text("SELECT x FROM t")).scalar_one() == 1
    finally:
        engine.dispose()
