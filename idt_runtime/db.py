"""Storage: one engine per service, SQLite by default, PostgreSQL by URL.

Every service's tables carry its prefix (`cc_`, `bdc_`, ...), so all services can
share one PostgreSQL database. Schemas are created by Alembic migrations
(`services/<name>/migrations`), never by `create_all`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any
from urllib.parse import unquote, urlsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import Session, create_engine

log = logging.getLogger("idt.db")

#: SQLite's page cache per connection, in KiB.
SQLITE_CACHE_KIB = 32 * 1024
#: The page cache of each reading connection (`reading`), in KiB: SQLite's own
#: default. SQLite empties a connection's cache when it begins a transaction after
#: another connection wrote, so in a service that writes all the time a reader's
#: cache serves one transaction; 32 MiB each held memory and saved nothing.
SQLITE_READER_CACHE_KIB = 2 * 1024
#: SQLite's own: a commit that leaves the WAL longer than this many pages
#: checkpoints it (copies its pages into the database file and syncs both).
SQLITE_AUTOCHECKPOINT_PAGES = 1000
#: With a checkpointer of the service's own (`checkpoint_wal`), commits checkpoint
#: only past this many pages (160 MiB): the checkpointer falling behind or stopping
#: never lets the WAL grow without end. At 10,000 the scheduler's WAL reached it
#: every few seconds at 1,000 events/s (SQLite restarts the WAL only after a
#: checkpoint no commit overlapped), and each commit that did checkpointed 50-100
#: ms while the batches behind it waited (docs/decisions.md, Storage).
SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES = 40_000
#: The execution option `reading` sets: the connection only reads.
READ_ONLY_OPTION = "idt_read_only"


def reading(engine: Engine) -> Engine:
    """`engine` for reads alone (scrapes, queries, health): on SQLite their
    transactions begin DEFERRED, a snapshot of the WAL that takes no lock, so a
    long read never holds a commit back. Every other transaction begins IMMEDIATE
    (`make_engine`), taking the write lock at its start; a scrape on those held
    the scheduler's commits for as long as it read (0.1-4 s at 1M events). A
    write through it fails on SQLite whenever another connection wrote since the
    read began. On PostgreSQL reads never block writes: the same engine.

    On a SQLite file the reads have connections of their own, a second pool
    (`_SqliteReaders`): SQLite empties a connection's page cache whenever it
    begins a transaction after another connection wrote, so a connection a scrape
    or a checkpoint had used, handed next to a writer, came with an empty cache
    (docs/decisions.md, Storage)."""
    readers = _READERS.get(engine)
    if readers is not None:
        return readers.engine()
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def make_engine(
    url: str,
    *,
    sqlite_cache_kib: int = SQLITE_CACHE_KIB,
    sqlite_autocheckpoint_pages: int = SQLITE_AUTOCHECKPOINT_PAGES,
) -> Engine:
    """An engine; for SQLite: WAL, a busy timeout, a page cache of `sqlite_cache_kib`
    per connection, commits checkpointing past `sqlite_autocheckpoint_pages` of WAL
    and the file's folder created. A SQLite file's pool hands out the connection
    returned last (`pool_use_lifo`): the process's writers take turns
    (`write_lock`), so one connection serves them all and its page cache stays
    valid; reads get a pool of their own (`reading`)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = sqlite_file_of(url)
    in_memory = path in ("", ":memory:") or "mode=memory" in url
    if not in_memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = _sqlite_engine(url, sqlite_cache_kib, sqlite_autocheckpoint_pages, not in_memory)
    if not in_memory:
        _READERS[engine] = _SqliteReaders(
            url, min(sqlite_cache_kib, SQLITE_READER_CACHE_KIB), sqlite_autocheckpoint_pages
        )
        event.listen(engine, "engine_disposed", _dispose_readers)
    return engine


def sqlite_file_of(url: str) -> str:
    """The file a SQLite URL names ("" or ":memory:" for none), a URI filename's
    included (`sqlite:///file:data/x.db?mode=rwc&uri=true`: data/x.db, where the
    driver is handed "file:data/x.db?mode=rwc")."""
    u = make_url(url)
    path = u.database or ""
    if path.startswith("file:") and u.query.get("uri") in ("true", "1"):
        return unquote(urlsplit(path).path)
    return path


def _sqlite_engine(url: str, cache_kib: int, autocheckpoint_pages: int, file: bool) -> Engine:
    # An in-memory database has a connection a thread (SingletonThreadPool).
    pool_args: dict[str, Any] = {"pool_use_lifo": True} if file else {}
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, **pool_args
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # The driver's own transaction handling off: SQLAlchemy's "begin"
        # below opens every transaction itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _wal_mode(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        # A page cache of `cache_kib` per connection: the writers' connection
        # IDT_SQLITE_CACHE_MIB (32 MiB unless set; SQLite's default is 2 MiB),
        # since a store of a national year is many GiB and every page that
        # falls out of the cache is a system call to read it back; a reading
        # connection at most 2 MiB (`SQLITE_READER_CACHE_KIB`).
        cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        # Every transaction takes the write lock when it starts, so two
        # processes on one file (two replicas, or a service and a migration)
        # run their read-modify-write transactions one after the other
        # instead of failing with SQLITE_BUSY_SNAPSHOT half-way through.
        # Reads alone (`reading`) take a snapshot and no lock.
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN DEFERRED")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _SqliteReaders:
    """The pool a SQLite file's reads take their connections from, made at the
    first read (a process that never reads opens none), with small page caches
    (`SQLITE_READER_CACHE_KIB`)."""

    def __init__(self, url: str, cache_kib: int, autocheckpoint_pages: int) -> None:
        self._args = (url, cache_kib, autocheckpoint_pages)
        self._engine: Engine | None = None
        self._guard = threading.Lock()

    def engine(self) -> Engine:
        with self._guard:
            if self._engine is None:
                self._engine = _sqlite_engine(*self._args, True).execution_options(
                    **{READ_ONLY_OPTION: True}
                )
            return self._engine

    def dispose(self) -> None:
        with self._guard:
            if self._engine is not None:
                self._engine.dispose()


_READERS: weakref.WeakKeyDictionary[Engine, _SqliteReaders] = weakref.WeakKeyDictionary()


def _dispose_readers(engine: Engine) -> None:
    readers = _READERS.get(engine)
    if readers is not None:
        readers.dispose()


def checkpoint_wal(engine: Engine) -> tuple[int, int, int]:
    """A passive WAL checkpoint of a SQLite database, on a connection of its own
    (outside any transaction, taking no write lock): the WAL's pages copied into
    the database file as far as no reader still needs them, while writers go on.
    Returns SQLite's (busy, WAL frames, frames checkpointed). It takes a reading
    connection: one of the writers' would come back to them with its cache
    emptied (`reading`)."""
    raw = reading(engine).raw_connection()
    try:
        cur = raw.cursor()
        try:
            busy, frames, done = cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            cur.close()
        return int(busy), int(frames), int(done)
    finally:
        raw.close()


def _wal_mode(cur: Any, *, timeout_s: float = 30.0) -> None:
    """Put the file in WAL mode (it stays so: later connections find it there).
    Changing the journal mode needs the file to itself, and SQLite answers "database
    is locked" at once, without its busy handler, while another connection reads or
    writes: replicas opening a new file together retry here for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITE_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> threading.Lock:
    """The lock a process's writers to `engine` take in turn (`write_turn`: batch
    commits, the outbox relay and its prune, the scheduler's sweeper, HTTP intake
    on SQLite). Across processes the database orders them (row and advisory locks;
    SQLite's write lock); within one process this lock does, so a writer waits its
    turn instead of SQLite's busy handler sleeping it for up to 100 ms a try. It
    is not first come, first served: under a backlog a writer can wait through
    several of the consumer's commits (the slow-write log says so)."""
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(engine)
        if lock is None:
            lock = _WRITE_LOCKS[engine] = threading.Lock()
        return lock


#: A writer that waited for or held the write lock this long is logged (`write_turn`).
SLOW_WRITE_S = 1.0
#: Turns remembered per engine, to name what a slow waiter waited behind.
_TURNS_KEPT = 64

_TURNS: weakref.WeakKeyDictionary[Engine, deque[tuple[str, float, float]]] = (
    weakref.WeakKeyDictionary()
)


def _turns(engine: Engine) -> deque[tuple[str, float, float]]:
    with _WRITE_LOCKS_GUARD:
        turns = _TURNS.get(engine)
        if turns is None:
            turns = _TURNS[engine] = deque(maxlen=_TURNS_KEPT)
        return turns


def _behind(turns: Iterable[tuple[str, float, float]], asked: float, began: float) -> str:
    """The writers whose turns ended while a waiter waited, by the time they held
    the lock then: `the outbox relay 2.10 s, the sweeper 0.03 s (2 turns)`."""
    held: dict[str, list[float]] = {}
    for writer, start, end in turns:
        if end > asked and start < began:
            held.setdefault(writer, []).append(end - max(start, asked))
    parts = sorted(held.items(), key=lambda kv: -sum(kv[1]))
    return (
        ", ".join(
            f"{w} {sum(t):.2f} s" + (f" ({len(t)} turns)" if len(t) > 1 else "") for w, t in parts
        )
        or "nothing this process remembers"
    )


@contextlib.contextmanager
def write_turn(engine: Engine, writer: str, *, slow_s: float = SLOW_WRITE_S) -> Iterator[float]:
    """Take `engine`'s write lock (`write_lock`) for `writer` (a batch's commit, an
    outbox prune chunk, ...), yielding the time it was taken (`perf_counter`). A
    turn that held the lock `slow_s` or longer is logged with the writer's name,
    and one that waited as long with the writers it waited behind: every other
    writer of the process waits while one holds it, so this is where a stall in
    the services' logs says what held them (logged once the lock is given back)."""
    lock = write_lock(engine)
    turns = _turns(engine)
    asked = perf_counter()
    with lock:
        began = perf_counter()
        try:
            yield began
        finally:
            ended = perf_counter()
            turns.append((writer, began, ended))
    held, waited = ended - began, began - asked
    if held >= slow_s or waited >= slow_s:
        log.warning(
            "slow write: %s held the write lock for %.2f s after waiting %.2f s for it%s",
            writer, held, waited,
            f" behind {_behind(list(turns), asked, began)}" if waited >= slow_s else "",
        )  # fmt: skip


@dataclass
class ChunkTally:
    """What a job done a chunk per write turn did (`paced_chunks`): rows or claims
    done, chunks run and how long they held the write lock, for its log line."""

    began: float = field(default_factory=perf_counter)
    done: int = 0
    chunks: int = 0
    held: float = 0.0
    held_max: float = 0.0

    def add(self, n: int, held: float) -> None:
        self.done += n
        self.chunks += 1
        self.held += held
        self.held_max = max(self.held_max, held)

    def summary(self) -> str:
        return (
            f"in {perf_counter() - self.began:.1f} s ({self.chunks} chunks, holding the write "
            f"lock {self.held:.2f} s in all and {self.held_max:.3f} s at most)"
        )


async def paced_chunks(
    chunk: Callable[[], tuple[int, float]],
    size: int,
    tally: ChunkTally,
    *,
    quiet: Callable[[float], Awaitable[bool]] | None = None,
    pause_factor: float = 2.0,
    quiet_min_s: float = 0.01,
    running: Callable[[], bool] = lambda: True,
    after: Callable[[int], None] | None = None,
) -> None:
    """Run `chunk` in a thread (one transaction; it returns how much it did and how
    long it held the write lock) until it does fewer than `size`, for background
    work that can wait (the outbox prune, the scheduler's due sweep). After each
    chunk it pauses `pause_factor` times the chunk's hold, so that it takes at most
    a share of the writing; before each it waits for `quiet` (the consumer having
    no batch in hand), for at most twice the last hold (at least `quiet_min_s`), so
    that claim events go first but a backlog never starves it. `after` is told
    what each chunk that did something did; `tally` keeps count, also when a chunk
    raises."""
    held = 0.0
    while running():
        if held:
            await asyncio.sleep(pause_factor * held)
        if quiet is not None:
            await quiet(max(quiet_min_s, 2 * held))
        n, held = await asyncio.to_thread(chunk)
        tally.add(n, held)
        if n > 0 and after is not None:
            after(n)
        if n < size:
            return


@dataclass(frozen=True)
class RuntimeTables:
    """The tables every consuming/publishing service keeps beside its own."""

    processed: Table
    outbox: Table


def runtime_tables(prefix: str, metadata: MetaData) -> RuntimeTables:
    processed = Table(
        f"{prefix}_processed_events",
        metadata,
        Column("event_id", String(128), primary_key=True),
        Column("stream", String(200), nullable=False),
        Column("entry_id", String(40), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )
    outbox = Table(
        f"{prefix}_outbox",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        # Not unique, and no index: nothing looks an outbox row up by its event id,
        # and the ids are random (uuid4, or hashes of a window's revision), so an
        # index on them made every queued event write a page of its own (12% of
        # the scheduler's WAL pages at a steady 1,000 events/s). Events are
        # unique where they are made (the scheduler's alert keys and window
        # revisions, fresh uuids elsewhere), and consumers drop a repeated id.
        Column("event_id", String(128), nullable=False),
        Column("stream", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True),
    )
    # Two partial indexes: the rows waiting (the relay's next batch, in `seq` order,
    # and their count) and the published ones by when (the prune, the republish
    # after a Redis restart). With one index on `published_at`, NULL for every row
    # waiting, PostgreSQL kept an entry for each row's unpublished version until
    # vacuum: after a 1M replay the relay's query walked 812k such entries and 66k
    # heap pages (0.7 s, twice a batch of 500) for 500 rows (docs/decisions.md).
    pending, published = outbox.c.published_at.is_(None), outbox.c.published_at.isnot(None)
    Index(
        f"ix_{prefix}_outbox_pending",
        outbox.c.seq,
        sqlite_where=pending,
        postgresql_where=pending,
    )
    Index(
        f"ix_{prefix}_outbox_published_at",
        outbox.c.published_at,
        sqlite_where=published,
        postgresql_where=published,
    )
    return RuntimeTables(processed=processed, outbox=outbox)


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "postgresql"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_scope(session: Session, name: str, *, exclusive: bool) -> None:
    """A transaction-long reader/writer lock named `name` across every process
    sharing the database: transactions that change state many others depend on
    (business time, the office registry) take it exclusively, the rest shared.
    On SQLite every transaction already holds the database's write lock
    (`BEGIN IMMEDIATE`), so nothing more is needed."""
    if not is_postgresql(session):
        return
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    session.execute(text(f"SELECT {fn}(:k)"), {"k": advisory_key(name)})


_MIGRATING = threading.Lock()


def migrate(engine: Engine, script_location: Path, version_table: str, *, to: str = "head") -> None:
    """Bring the service's schema to the newest migration (or revision `to`, for
    tests of a migration on a store made before it). Replicas starting
    together on PostgreSQL take turns (an advisory lock held for the migration's
    transaction); on SQLite `BEGIN IMMEDIATE` does the same."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    # Alembic's `op` and `context` are process-wide: one migration at a time here.
    with _MIGRATING, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": advisory_key("migrate:" + version_table)},
            )
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = version_table
        command.upgrade(cfg, to)
