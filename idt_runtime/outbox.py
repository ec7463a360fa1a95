"""The transactional outbox: an event is stored in the same transaction as the
state change that caused it, then relayed to Redis by pipelined XADDs.

If Redis is down the request still succeeds (the state and the event are
committed) and the relay publishes when Redis is back. A crash between XADD and
marking the row published republishes it with the same CloudEvent `id`, which every
consumer deduplicates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import Any

import redis
from sqlalchemy import Select, Table, bindparam, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from idt_contract import Envelope, encode, stream_for
from idt_contract.streams import DATA_FIELD, outbox_run_key

from .bulk import bulk_insert
from .db import ChunkTally, RuntimeTables, lock_scope, paced_chunks, write_turn
from .metrics import RuntimeMetrics

log = logging.getLogger("idt.outbox")


def add_to_outbox(
    session: Session,
    tables: RuntimeTables,
    events: Iterable[Envelope],
    *,
    stream: str | None = None,
) -> None:
    """Queue events for publication inside the caller's transaction."""
    rows = [
        {
            "event_id": ev.id,
            "stream": stream or stream_for(ev.type),
            "payload": encode(ev),
            "created_at": datetime.now(UTC),  # operator audit stamp, not a business date
        }
        for ev in events
    ]
    bulk_insert(session, tables.outbox, rows)
    _note_queued(session, len(rows))


def add_routed_to_outbox(
    session: Session, tables: RuntimeTables, routed: Iterable[tuple[Envelope, str]]
) -> None:
    """Queue (event, stream) pairs in one insert, inside the caller's transaction."""
    created = datetime.now(UTC)  # operator audit stamp, not a business date
    rows = [
        {"event_id": ev.id, "stream": stream, "payload": encode(ev), "created_at": created}
        for ev, stream in routed
    ]
    bulk_insert(session, tables.outbox, rows)
    _note_queued(session, len(rows))


#: `Session.info` key: outbox rows the session's transaction queued.
OUTBOX_QUEUED = "idt_outbox_queued"


def _note_queued(session: Session, n: int) -> None:
    if n:
        session.info[OUTBOX_QUEUED] = session.info.get(OUTBOX_QUEUED, 0) + n


def queued_in(session: Session) -> int:
    """Outbox rows queued in `session` (by `add_to_outbox`/`add_routed_to_outbox`)."""
    return int(session.info.get(OUTBOX_QUEUED, 0))


#: Published rows deleted per transaction by the prune: small, since a claim event
#: arriving meanwhile waits for the chunk under way.
PRUNE_CHUNK = 500
#: After each chunk the prune pauses this many times as long as the chunk took.
PRUNE_PAUSE_FACTOR = 2.0
#: The least a prune chunk waits for the consumer to be quiet.
PRUNE_QUIET_MIN_S = 0.01


def prunable(outbox: Table, cutoff: datetime, limit: int) -> Select[tuple[int]]:
    """Up to `limit` rows published before `cutoff`, oldest first, found by the
    `published_at` index. (Ordered by `seq`, SQLite walked the table in `seq`
    order instead, testing every row: while nothing was old enough, as in a
    service's first hour, every prune read the whole outbox under the write
    lock, 0.2-0.9 s at 1M events, once a minute.)"""
    return (
        select(outbox.c.seq)
        .where(outbox.c.published_at < cutoff)
        .order_by(outbox.c.published_at)
        .limit(limit)
    )


def relay_lock(outbox: Table) -> str:
    """The name of the lock the relays of one outbox take turns on (`lock_scope`)."""
    return f"outbox:{outbox.name}"


def pending(outbox: Table, limit: int) -> Select[tuple[int, str, bytes]]:
    """The relay's next batch: up to `limit` rows not yet published, in `seq` order,
    found by the partial index of waiting rows (`ix_<prefix>_outbox_pending`)."""
    return (
        select(outbox.c.seq, outbox.c.stream, outbox.c.payload)
        .where(outbox.c.published_at.is_(None))
        .order_by(outbox.c.seq)
        .limit(limit)
    )


def pending_count(outbox: Table) -> Select[Any]:
    """How many rows wait, counted in the same partial index."""
    return select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))


#: Under a backlog every relay batch is full and would count the rows left; the
#: count (for `idt_outbox_pending`) is taken at most this often.
COUNT_EVERY_S = 1.0


class OutboxRelay:
    """Publishes a service's outbox in `seq` order.

    Each batch is one database transaction around read, pipelined XADD and mark:
    replicas of a service share the outbox, and the transaction's lock (an
    advisory lock on PostgreSQL, the write lock on SQLite) lets one relay at a
    time publish, so no row goes out twice and the order holds across replicas.
    If the XADDs fail nothing is marked; if the process dies after XADD and before
    the commit, the rows go out again under the same CloudEvent ids.

    A Redis that restarts can come back without its last writes (with
    `appendfsync everysec`, up to about a second). The relay notices a restart
    (a new `run_id`; it asks at most once a `restart_check_s`, a second at most)
    and publishes again every row it published in the `republish_s` seconds
    before, under the same ids: consumers drop what they already had, and what
    the crash lost is back (docs/guarantees.md)."""

    def __init__(
        self,
        *,
        service: str,
        engine: Engine,
        tables: RuntimeTables,
        redis_url: str,
        metrics: RuntimeMetrics,
        batch_size: int = 500,
        republish_s: float = 10.0,
        retention_s: float = 3600.0,
        prune_interval_s: float = 60.0,
    ) -> None:
        self.service = service
        self.republish_s = republish_s
        # Published rows are kept this long (never less than the republish window),
        # then deleted: the outbox holds what is in flight, not every event forever.
        self.retention_s = max(retention_s, republish_s)
        self.prune_interval_s = prune_interval_s
        self._run_id: str | None = None
        self._checked_at = 0.0
        self.restart_check_s = min(1.0, self.republish_s / 4)
        self.engine = engine
        self.tables = tables
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.metrics = metrics
        # Exported at 0 from the start: Prometheus sees no increase in a series
        # whose first sample is already its first republish (the alert
        # IdtRedisRestartedOutboxRepublished would miss it).
        metrics.republished.labels(service)
        self.batch_size = batch_size
        # Built once, its IN list bound at execution (see bulk.py).
        o = tables.outbox
        self._mark_published = (
            update(o)
            .where(o.c.seq.in_(bindparam("seqs", expanding=True)))
            .values(published_at=bindparam("at"))
        )
        self._pending = pending(o, batch_size)
        self._pending_count = pending_count(o)
        self._counted_at = -COUNT_EVERY_S
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._running = True
        #: Set by the service once its consumer exists (`EventConsumer.quiet`): the
        #: prune's chunks then wait for the consumer to have no batch in hand.
        self.quiet: Callable[[float], Awaitable[bool]] | None = None

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    def notify(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.redis.close()

    def _publish_batch(self) -> tuple[list[str], int | None]:
        """Publish up to `batch_size` pending rows; (their streams, rows left, or
        None when not counted this time)."""
        o = self.tables.outbox
        with (
            write_turn(self.engine, "the outbox relay"),
            Session(self.engine) as s,
            s.begin(),
        ):
            lock_scope(s, relay_lock(o), exclusive=True)
            self._after_restart(s)
            rows = s.execute(self._pending).all()
            if not rows:
                return [], 0
            with self.redis.pipeline(transaction=False) as pipe:
                for _, stream, payload in rows:
                    pipe.xadd(stream, {DATA_FIELD: bytes(payload)})
                pipe.execute()
            s.execute(self._mark_published, {"seqs": [r[0] for r in rows], "at": datetime.now(UTC)})
            # A short batch took every pending row there was (the relay lock is
            # held): nothing to count. A full one counts what is left, at most once
            # a COUNT_EVERY_S (a backlog of 150k rows took PostgreSQL 0.2 s to
            # count, under the lock, for every batch of 500).
            left: int | None = 0
            if len(rows) == self.batch_size:
                left = None
                if time.monotonic() - self._counted_at >= COUNT_EVERY_S:
                    left = int(s.execute(self._pending_count).scalar_one())
                    self._counted_at = time.monotonic()
        return [r[1] for r in rows], left

    def _after_restart(self, s: Session) -> None:
        """If Redis restarted since this outbox last published, mark the rows of
        the last `republish_s` seconds unpublished again. The run id seen last is
        kept in Redis (per outbox), so of several replicas only the first to
        notice republishes (they run this one at a time, under the relay lock)."""
        # At most once a `restart_check_s` (an INFO a batch is a round trip and a
        # parse each time): a restart is still noticed well inside `republish_s`.
        if self._run_id is not None and time.monotonic() - self._checked_at < self.restart_check_s:
            return
        run_id = str(self.redis.info("server")["run_id"])
        self._checked_at = time.monotonic()
        if run_id == self._run_id:
            return
        o = self.tables.outbox
        key = outbox_run_key(self.service)
        raw = self.redis.get(key)
        seen = raw.decode() if isinstance(raw, bytes) else raw
        self.redis.set(key, run_id)
        self._run_id = run_id
        if seen is None or seen == run_id:
            return
        since = datetime.now(UTC) - timedelta(seconds=self.republish_s)
        result = s.execute(update(o).where(o.c.published_at >= since).values(published_at=None))
        again = int(getattr(result, "rowcount", 0) or 0)
        log.warning(
            "%s: Redis restarted (run %s, was %s): publishing the last %.0f s of the "
            "outbox again (%d events; consumers drop what they already have)",
            self.service, run_id[:8], seen[:8], self.republish_s, again,
        )  # fmt: skip
        self.metrics.republished.labels(self.service).inc(again)

    async def prune(self, now: datetime | None = None, chunk: int = PRUNE_CHUNK) -> int:
        """Delete rows published more than `retention_s` before `now`; returns how
        many. A chunk per transaction, each in a thread, after a pause of
        `PRUNE_PAUSE_FACTOR` times the last chunk's time and, when the service has a
        consumer, after waiting for it to have no batch in hand (for at most twice
        the time the last chunk held the write lock, so that a backlog never starves
        the prune). The first prune after a bulk replay deletes an hour of it at
        once: its chunks back to back held the write lock for seconds with only
        moments between, and claim events waited up to a chunk each
        (docs/decisions.md, Publishing)."""
        cutoff = self._prune_cutoff(now)
        tally = ChunkTally()
        await paced_chunks(
            lambda: self._prune_chunk(cutoff, chunk), chunk, tally,
            quiet=self.quiet, pause_factor=PRUNE_PAUSE_FACTOR, quiet_min_s=PRUNE_QUIET_MIN_S,
            running=lambda: self._running,
        )  # fmt: skip
        if tally.done:
            self.metrics.outbox_pruned.labels(self.service).inc(tally.done)
            log.info("%s: pruned %d published outbox rows %s",
                     self.service, tally.done, tally.summary())  # fmt: skip
        return tally.done

    def _prune_cutoff(self, now: datetime | None) -> datetime:
        return (now or datetime.now(UTC)) - timedelta(seconds=self.retention_s)

    def _prune_chunk(self, cutoff: datetime, chunk: int) -> tuple[int, float]:
        """Delete up to `chunk` rows published before `cutoff`, in one transaction;
        the rows deleted and the seconds the write lock was held."""
        o = self.tables.outbox
        with write_turn(self.engine, f"an outbox prune chunk ({chunk} rows at most)") as began:
            with Session(self.engine) as s, s.begin():
                old = prunable(o, cutoff, chunk).scalar_subquery()
                result = s.execute(delete(o).where(o.c.seq.in_(old)))
                gone = int(getattr(result, "rowcount", 0) or 0)
            return gone, perf_counter() - began

    def publish_once(self) -> bool:
        """Publish one batch of pending rows now, in the calling thread (the
        consumer's, right after a commit that queued rows); True when it took every
        pending row (a short batch). Raises what publishing raised."""
        streams, left = self._publish_batch()
        self._count(streams, left)
        return len(streams) < self.batch_size

    def _count(self, streams: list[str], left: int | None) -> None:
        if left is not None:
            self.metrics.outbox_pending.labels(self.service).set(left)
        for stream in streams:
            self.metrics.published.labels(self.service, stream).inc()

    async def flush(self) -> int:
        """Publish everything pending; returns how many were published."""
        published = 0
        async with self._lock:
            while True:
                streams, left = await asyncio.to_thread(self._publish_batch)
                self._count(streams, left)
                published += len(streams)
                if len(streams) < self.batch_size:
                    # A short batch took every row there was: no transaction more
                    # to find none (rows committed since come with a notify).
                    return published

    async def run_forever(self, interval_s: float = 1.0) -> None:
        """Publish what is pending whenever notified (at least every `interval_s`),
        and prune beside it in a task of its own: a paced prune of an hour of a
        bulk replay takes a while, and what HTTP intake queues must not wait for it."""
        pruner = asyncio.create_task(self._prune_forever())
        try:
            await self._publish_forever(interval_s)
        finally:
            pruner.cancel()
            await asyncio.gather(pruner, return_exceptions=True)

    async def _prune_forever(self) -> None:
        while self._running:
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: pruning the outbox failed: %r", self.service, exc)
            await asyncio.sleep(self.prune_interval_s)

    async def _publish_forever(self, interval_s: float) -> None:
        # A stop flag besides cancellation: on Python 3.11 `wait_for` can turn a
        # cancellation that races its timeout into a TimeoutError and lose it.
        while self._running:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: outbox relay could not publish yet: %r", self.service, exc)
            if not self._running:
                return
            try:
                async with asyncio.timeout(interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
