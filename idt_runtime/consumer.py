"""Consuming safely from Redis Streams (see ../shared/docs/redis-streams-notes.md).

- One consumer group per service, one stable consumer name per process slot.
- Groups are created at id `0` before reading starts (XGROUP CREATE at `$`, as
  FastStream's subscriber does, would skip what was published before the first start).
- Reading: ONE `XREADGROUP` for all of the service's streams (`read_forever`), up
  to `batch_size` entries of each; the entries are decoded, the fresh ones
  (CloudEvent `id` not yet processed) of every stream are applied in ONE database
  transaction that also records their ids, and only then are each stream's entries
  acked in one MULTI together with the XADDs of any dead letters. (FastStream's
  subscribers read one stream each: a service paid a read, a transaction and an
  ack round per stream, which at a steady rate spread over a dozen streams left
  every batch a few entries long; docs/decisions.md.)
- An entry that fails validation goes to `idt:dead-letters` with its original
  bytes, source stream, entry id and reason, and is acked in the same MULTI.
- A handler failure leaves the entry pending. The reclaimer (XAUTOCLAIM, a loop
  of its own beside the reader) picks up entries idle longer than
  `reclaim_idle_ms`, whether their consumer died or failed, and retries them; once
  an entry has been delivered more than `max_deliveries` times and fails again with
  a non-infrastructure error it is dead-lettered with that error as the reason.
- Database unavailability (SQLAlchemy OperationalError/InterfaceError) never
  dead-letters: the entry stays pending and is retried when the database is back.
- A stream Redis refuses (a key of another type at its name, a permission
  missing) is set aside (`unreadable`) and tried again every few seconds; the
  service's other streams are read meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import BusyLoadingError, ResponseError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlmodel import Session

from idt_contract import DEAD_LETTERS, DecodeError, Envelope, decode_entry
from idt_contract.events import NINO_IN_TEXT
from idt_contract.streams import DATA_FIELD_B

from .bulk import bulk_insert, ids_in
from .db import RuntimeTables, write_turn
from .metrics import RuntimeMetrics
from .outbox import queued_in

log = logging.getLogger("idt.consumer")

#: Applies fresh events to the service's state inside the batch transaction.
#: Runs in a worker thread; must not commit (the runtime does).
Applier = Callable[[Session, Sequence[Envelope]], None]

INFRA_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
_NINO_BYTES = re.compile(NINO_IN_TEXT.pattern.encode())


class Reject(Exception):
    """Raised by an applier for an event that is valid by the contract but can
    never be applied; the entry goes to the dead letters at once, with the
    message as its reason, instead of being retried."""


class _GroupFailed(Exception):
    """A transaction shared by several batches failed; each is committed alone."""


@dataclass(frozen=True)
class RawEntry:
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]


#: `Session.info` key, set for the appliers of a batch transaction: each fresh
#: event's id -> its `__data__` as read from the stream (the bytes its envelope
#: was validated from), for an applier that stores events as they came without
#: encoding them again. The contract forbids unknown attributes and data fields,
#: so those bytes hold nothing the envelope does not (only spacing, key order and
#: null optionals can differ).
WIRE_PAYLOADS = "idt_wire_payloads"


def wire_payload(session: Session, event: Envelope) -> bytes | None:
    """The event's bytes as read from its stream, when a batch transaction of the
    consumer is applying it (None otherwise: the caller encodes it)."""
    wire: dict[str, bytes] | None = session.info.get(WIRE_PAYLOADS)
    return wire.get(event.id) if wire is not None else None


@dataclass
class BatchResult:
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    dead: list[tuple[RawEntry, str]] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)


#: SQLSTATEs of a transaction that lost a race with another (serialization
#: failure, deadlock, unique violation): run it again at once.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "23505"})
CONFLICT_RETRIES = 5
#: At most this many entries in one shared transaction (`_commit_grouped`).
GROUP_MAX_ENTRIES = 5_000
#: A stream set aside as unreadable (`EventConsumer.unreadable`) is tried again
#: this often.
UNREADABLE_RETRY_S = 5.0
#: XREADGROUP at this id reads the consumer's own pending entries after it: none.
#: So it checks that the group can read a stream (the key's type, the user's
#: permissions, the group) without reading or redelivering anything.
_PAST_EVERY_ENTRY = "18446744073709551615-18446744073709551615"


def is_race(exc: BaseException) -> bool:
    """A conflict PostgreSQL says another transaction caused (a unique violation,
    a deadlock, a serialization failure)."""
    return isinstance(exc, DBAPIError) and _sqlstate(exc) in _CONFLICT_SQLSTATES


def is_conflict(exc: BaseException) -> bool:
    """A concurrent replica got there first: two inserted the same new row, or
    PostgreSQL broke a deadlock. Retrying the whole transaction sees its work.
    Unlike `is_race`, also any SQLite integrity error: SQLite gives no SQLSTATE,
    and its unique violations could only come from a race if BEGIN IMMEDIATE were
    off, so a retry is harmless there (the sweeper, which isolates failing claims,
    asks `is_race` instead)."""
    return is_race(exc) or (isinstance(exc, IntegrityError) and _sqlstate(exc) is None)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def is_infra(exc: BaseException) -> bool:
    """The database (or its connection) is unavailable: retry later, never give up."""
    if isinstance(exc, INFRA_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def stream_entries(resp: Any) -> list[tuple[str, list[Any]]]:
    """(stream, [(entry id, fields), ...]) of an XREADGROUP reply as redis-py gives
    it: RESP2 (and RESP3 by default) `[[stream, entries], ...]`; RESP3 asked for
    explicitly (`protocol=3`) `{stream: [entries]}`, the entries one list deeper."""
    out = []
    for name, entries in resp.items() if isinstance(resp, dict) else resp:
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        out.append((name.decode() if isinstance(name, bytes) else name, list(entries or [])))
    return out


class EventConsumer:
    """Everything between a raw stream entry and an ack."""

    def __init__(
        self,
        *,
        service: str,
        group: str,
        consumer: str,
        redis: aredis.Redis,
        engine: Engine,
        tables: RuntimeTables,
        appliers: dict[str, Applier],
        metrics: RuntimeMetrics,
        clock_now: Callable[[], datetime] | None = None,
        reclaim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        batch_size: int = 500,
        after_commit: Callable[[], None] | None = None,
        publish_now: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        self.group = group
        self.consumer = consumer
        self.redis = redis
        self.engine = engine
        self.tables = tables
        self.appliers = appliers
        # In a shared transaction appliers run in the order `appliers` lists them:
        # a service lists first those taking locks exclusively (the scheduler's
        # ticks and registry), since a lock held shared and then asked for
        # exclusively deadlocks with a replica holding it shared.
        self._applier_rank = {a: i for i, a in enumerate(dict.fromkeys(appliers.values()))}
        self.metrics = metrics
        # Only stamps processed_at for operators; never a business date.
        self._now = clock_now or (lambda: datetime.now(UTC))
        self.reclaim_idle_ms = reclaim_idle_ms
        self.max_deliveries = max_deliveries
        self.batch_size = batch_size
        self.after_commit = after_commit
        # Publishes pending outbox rows in the calling thread (True: none left).
        self.publish_now = publish_now
        self._running = True
        # Batches of different streams are read concurrently; their commits run
        # one at a time (`write_turn`) so that a claim's recomputation never
        # interleaves with another (across processes, services lock the claim's row
        # as well).
        self._seen_query = ids_in(tables.processed)  # built once (bulk.py)
        # Commits run in a thread of their own (they take turns anyway): in the
        # loop's default executor, shared with HTTP requests waiting for the write
        # turn, checkpoints, trims and the health check, a commit could wait for a
        # free thread while those held them all.
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{service}-commit")
        # Batches waiting for the next shared transaction (`_commit_grouped`).
        self._waiting: list[
            tuple[str, Sequence[tuple[RawEntry, Envelope]], asyncio.Future[Any]]
        ] = []
        self._committer: asyncio.Task[None] | None = None
        # Set (in the committing thread) after a transaction queued outbox rows.
        self._queued_outbox = False
        #: Why the last read of the streams failed; None once one succeeds.
        self.read_error: str | None = None
        #: Streams the group cannot read (a key of another type at the stream's
        #: name, a permission missing), set aside with Redis's reason so that the
        #: others are still read; tried again every `UNREADABLE_RETRY_S`.
        self.unreadable: dict[str, str] = {}
        # Batches being handled (read and not yet acked), and set while there are
        # none: when a writer that can wait (the scheduler's sweeper) takes its turn.
        self._in_hand = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        """Let the commit thread go (once stopped: a commit under way finishes)."""
        self._commit_thread.shutdown(wait=False)

    @property
    def streams(self) -> list[str]:
        return list(self.appliers)

    # ------------------------------------------------------------------ groups

    async def ensure_groups(self) -> None:
        """XGROUP CREATE <stream> <group> 0 MKSTREAM for every stream (idempotent).
        A stream Redis refuses (a key of another type at its name, no permission) is
        set aside as unreadable, not the service stopped: the others are read."""
        for stream in self.streams:
            try:
                await self._create_group(stream)
            except ResponseError as exc:
                self._set_aside(stream, _why(exc))
                continue
            if stream not in self.unreadable:  # a series from the start, for the alert
                self.metrics.stream_unreadable.labels(self.service, stream).set(0)

    async def _create_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _set_aside(self, stream: str, why: str) -> None:
        if self.unreadable.get(stream) != why:
            log.error("%s: cannot read %s (%s); reading the other streams, trying it again "
                      "every %.0f s", self.service, stream, why, UNREADABLE_RETRY_S)  # fmt: skip
        self.unreadable[stream] = why
        self.metrics.stream_unreadable.labels(self.service, stream).set(1)

    async def _why_unreadable(self, stream: str) -> str | None:
        """None if the group can read `stream` now (its group created if it was
        missing), else Redis's reason. Connection errors are raised."""
        try:
            try:
                await self.redis.xreadgroup(
                    self.group, self.consumer, {stream: _PAST_EVERY_ENTRY}, count=1
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group(stream)  # the other key was deleted, say
        except ResponseError as exc:
            return _why(exc)
        return None

    async def _set_aside_unreadable(self, streams: Sequence[str]) -> bool:
        """After a read of `streams` failed with an error of Redis's: check each
        alone, set aside those the group cannot read; True if any were."""
        found = False
        for stream in streams:
            why = await self._why_unreadable(stream)
            if why is not None:
                self._set_aside(stream, why)
                found = True
        return found

    async def _readmit(self) -> None:
        """Try the streams set aside again; read those that can be read now."""
        for stream in list(self.unreadable):
            why = await self._why_unreadable(stream)
            if why is None:
                del self.unreadable[stream]
                self.metrics.stream_unreadable.labels(self.service, stream).set(0)
                log.warning("%s: %s can be read again", self.service, stream)
            else:
                self._set_aside(stream, why)

    def reading_problem(self) -> str | None:
        """What /health reports of reading: the last read's error, or the streams
        set aside; None when every stream is being read."""
        if self.read_error:
            return self.read_error
        if self.unreadable:
            return "cannot read " + "; ".join(f"{s} ({why})" for s, why in self.unreadable.items())
        return None

    # ------------------------------------------------------------------ reading

    async def read_forever(self, block_ms: int, linger_ms: int = 0, in_flight: int = 2) -> None:
        """Read every stream of the service with ONE `XREADGROUP ... COUNT batch_size
        BLOCK block_ms STREAMS s1 s2 ... > > ...` (COUNT is per stream) and hand what
        came to `handle`, all streams at once, so that they share one transaction and
        one relay run. Up to `in_flight` reads are handled at a time: the next read
        overlaps the commit of the last (commits stay in order, `_commit_waiting`).
        After a read no stream of which filled its COUNT (no backlog), the next
        waits `linger_ms`, so that it brings what arrived meanwhile.

        A failed read (Redis unreachable or loading, permission denied) is retried
        after a growing pause, the error kept in `read_error` for /health; what was
        read and not acked stays pending for the reclaimer. NOGROUP (Redis emptied,
        a stream deleted): the groups are created again at 0. Stops after the read
        under way once `stop()` was called, waiting for the reads being handled;
        cancelled, it cancels them (their entries stay pending)."""
        handling: set[asyncio.Task[None]] = set()
        streams: dict[Any, Any] = {}
        pause = 0.0
        loop = asyncio.get_running_loop()
        retry_at = loop.time() + UNREADABLE_RETRY_S
        try:
            while self._running:
                try:
                    if self.unreadable and loop.time() >= retry_at:
                        retry_at = loop.time() + UNREADABLE_RETRY_S
                        await self._readmit()
                    streams = {s: ">" for s in self.streams if s not in self.unreadable}
                    if not streams:  # every stream set aside: wait for the next try
                        await asyncio.sleep(max(0.0, retry_at - loop.time()))
                        continue
                    resp = await self.redis.xreadgroup(
                        self.group, self.consumer, streams, count=self.batch_size, block=block_ms
                    )
                    pause, self.read_error = 0.0, None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Redis away or loading, a group missing, a permission denied:
                    # nothing read is lost (unacked entries stay pending); read again
                    # after a growing pause, the error shown by /health meanwhile.
                    self.read_error = _why(exc)
                    pause = min(5.0, max(0.05, pause * 2))
                    if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                        log.error("%s: consumer group missing (Redis emptied?); recreating",
                                  self.service)  # fmt: skip
                        with contextlib.suppress(Exception):
                            await self.ensure_groups()
                            pause = 0.0
                            await asyncio.sleep(0.05)
                            continue
                    if isinstance(exc, ResponseError) and not isinstance(exc, BusyLoadingError):
                        # One stream Redis refuses fails the read of all of them: find
                        # it, and read the others.
                        with contextlib.suppress(Exception):
                            if await self._set_aside_unreadable(list(streams)):
                                pause, self.read_error = 0.0, None
                                continue
                    log.warning("%s: reading the streams failed (%s); again in %.2fs",
                                self.service, self.read_error, pause)  # fmt: skip
                    await asyncio.sleep(pause)
                    continue
                got = stream_entries(resp) if resp else []
                if not got:
                    continue
                task = asyncio.create_task(self._handle_read(got))
                handling.add(task)
                task.add_done_callback(handling.discard)
                if len(handling) >= in_flight:
                    await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
                # No stream gave a full COUNT (no backlog): let more gather.
                if linger_ms and all(len(entries) < self.batch_size for _, entries in got):
                    await asyncio.sleep(linger_ms / 1000)
        except asyncio.CancelledError:
            for task in handling:
                task.cancel()
            raise
        finally:
            if handling:
                await asyncio.gather(*handling, return_exceptions=True)

    async def _handle_read(self, got: list[tuple[str, list[Any]]]) -> None:
        """One read's entries (`stream_entries`): every stream's handled at once."""
        jobs = [
            self.handle(stream, [e[0] for e in entries], [e[1] for e in entries])
            for stream, entries in got
            if entries
        ]
        for res in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(res, BaseException):
                # Not acked (Redis went away mid-batch, say): pending, reclaimed later.
                log.warning("%s: a batch failed after it was read: %r", self.service, res)

    # ------------------------------------------------------------------ batches

    async def quiet(self, within_s: float) -> bool:
        """Wait until no batch is being handled, so that a writer who can wait (the
        scheduler's sweeper) takes the write lock when no claim event would wait
        behind it; at most `within_s` seconds, so that it is not starved under a
        backlog. True if quiet."""
        if not self._in_hand:
            return True
        try:
            await asyncio.wait_for(self._quiet.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def handle(
        self, stream: str, ids: Sequence[bytes | str], datas: Sequence[Any]
    ) -> BatchResult:
        """Process entries read from `stream` (by the subscriber or the reclaimer)."""
        self._in_hand += 1
        self._quiet.clear()
        try:
            return await self._handle(stream, ids, datas)
        finally:
            self._in_hand -= 1
            if not self._in_hand:
                self._quiet.set()

    async def _handle(
        self, stream: str, ids: Sequence[bytes | str], datas: Sequence[Any]
    ) -> BatchResult:
        started = perf_counter()
        entries = [
            RawEntry(stream, i.decode() if isinstance(i, bytes) else i, dict(d or {}))
            for i, d in zip(ids, datas, strict=True)
        ]
        result = BatchResult()
        good: list[tuple[RawEntry, Envelope]] = []
        for entry in entries:
            if not entry.fields:
                # Deleted from the stream while pending (XTRIM/XDEL): nothing to apply.
                result.duplicates.append(entry.entry_id)
                continue
            try:
                good.append((entry, decode_entry(stream, entry.fields)))
            except DecodeError as exc:
                result.dead.append((entry, str(exc)))

        if good:
            try:
                try:
                    applied, dups = await self._commit_grouped(stream, good)
                except _GroupFailed:
                    # Something in a shared transaction failed: this batch on its own.
                    applied, dups = await self._commit_retrying(stream, good)
                result.applied += applied
                result.duplicates += dups
            except Exception as exc:
                if isinstance(exc, Reject) and len(good) == 1:
                    result.dead.append((good[0][0], f"rejected by {self.service}: {exc}"))
                elif is_infra(exc) or len(good) == 1:
                    for entry, _ in good:
                        result.failed[entry.entry_id] = exc
                else:
                    # Isolate the failing entry: one transaction each.
                    for entry, event in good:
                        try:
                            applied, dups = await self._commit_retrying(stream, [(entry, event)])
                            result.applied += applied
                            result.duplicates += dups
                        except Reject as rejected:
                            result.dead.append((entry, f"rejected by {self.service}: {rejected}"))
                        except Exception as one_exc:
                            result.failed[entry.entry_id] = one_exc
            if result.failed:
                first = next(iter(result.failed.values()))
                log.warning(
                    "%s: %d entr%s of %s failed and stay pending: %r",
                    self.service,
                    len(result.failed),
                    "y" if len(result.failed) == 1 else "ies",
                    stream,
                    first,
                )
                self.metrics.handler_failures.labels(self.service, stream).inc(len(result.failed))

        await self._ack_and_dead_letter(stream, result.applied + result.duplicates, result.dead)
        m = self.metrics.consumed
        if result.applied:
            m.labels(self.service, stream, "applied").inc(len(result.applied))
        if result.duplicates:
            m.labels(self.service, stream, "duplicate").inc(len(result.duplicates))
        if result.dead:
            m.labels(self.service, stream, "dead_letter").inc(len(result.dead))
        self.metrics.batch_seconds.labels(self.service, stream).observe(perf_counter() - started)
        if self._queued_outbox and self.after_commit is not None:
            # Reset before notifying: a commit whose flag this swallows finished
            # before the notify, so the relay's run after it sees its rows.
            self._queued_outbox = False
            self.after_commit()
        return result

    async def _commit_grouped(
        self, stream: str, items: Sequence[tuple[RawEntry, Envelope]]
    ) -> tuple[list[str], list[str]]:
        """Commit the batch together with every other batch waiting meanwhile (from
        the other streams' subscribers): one transaction for all of them, so the
        per-transaction work is paid once and an applier shared by several streams
        (the scheduler's claim events) sees them all at once. The first batch after
        a quiet spell is committed at once; batches arriving during a commit wait
        for the next one. Raises `_GroupFailed` when a shared transaction failed
        (the caller then commits its batch alone)."""
        future: asyncio.Future[tuple[list[str], list[str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((stream, items, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        while self._waiting:
            # Every waiting batch, up to GROUP_MAX_ENTRIES entries (always one
            # batch): bound parameters in one statement have limits (SQLite's
            # 32,766, PostgreSQL's 65,535) that a larger group would exceed.
            take, total = 0, 0
            for _, items, _ in self._waiting:
                if take and total + len(items) > GROUP_MAX_ENTRIES:
                    break
                take, total = take + 1, total + len(items)
            group, self._waiting = self._waiting[:take], self._waiting[take:]
            batches = [(stream, items) for stream, items, _ in group]
            try:
                results = await self._retrying(batches)
            except asyncio.CancelledError:
                for *_, future in (*group, *self._waiting):
                    future.cancel()
                self._waiting = []
                raise
            except Exception as exc:
                for *_, future in group:
                    if not future.done():
                        future.set_exception(exc if len(group) == 1 else _GroupFailed(exc))
                continue
            for (*_, future), res in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(res)

    async def _commit_retrying(
        self, stream: str, items: Sequence[tuple[RawEntry, Envelope]]
    ) -> tuple[list[str], list[str]]:
        """`_commit`, run again when it lost a race with another replica."""
        return (await self._retrying([(stream, items)]))[0]

    async def _retrying(
        self, batches: Sequence[tuple[str, Sequence[tuple[RawEntry, Envelope]]]]
    ) -> list[tuple[list[str], list[str]]]:
        """`_commit_batches`, run again when it lost a race with another replica."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._commit_thread, self._commit_batches, batches
                )
            except Exception as exc:
                if not is_conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    raise
                streams = sorted({s for s, _ in batches})
                for stream in streams:
                    self.metrics.conflicts.labels(self.service, stream).inc()
                log.info("%s: %s batch conflicted with a replica (%r); retrying", self.service,
                         ",".join(streams), getattr(exc, "orig", exc))  # fmt: skip
                await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _commit_batches(
        self, batches: Sequence[tuple[str, Sequence[tuple[RawEntry, Envelope]]]]
    ) -> list[tuple[list[str], list[str]]]:
        """One transaction: the fresh events of every batch applied (streams that
        share an applier in one call), their ids recorded. Per batch: the entry ids
        applied and the duplicates."""
        processed = self.tables.processed
        ids = [ev.id for _, items in batches for _, ev in items]
        results: list[tuple[list[str], list[str]]] = []
        writer = f"the commit of {len(ids)} events ({', '.join(s for s, _ in batches)})"
        with write_turn(self.engine, writer), Session(self.engine) as session, session.begin():
            seen = set(session.execute(self._seen_query, {"ids": ids}).scalars())
            calls: dict[Applier, list[Envelope]] = {}
            wire: dict[str, bytes] = {}
            session.info[WIRE_PAYLOADS] = wire
            rows = []
            now = self._now()
            for stream, items in batches:
                applied: list[str] = []
                dups: list[str] = []
                results.append((applied, dups))
                for entry, ev in items:
                    if ev.id in seen:
                        dups.append(entry.entry_id)
                        continue
                    seen.add(ev.id)
                    calls.setdefault(self.appliers[stream], []).append(ev)
                    wire[ev.id] = entry.fields[DATA_FIELD_B]  # decoded from it: present
                    applied.append(entry.entry_id)
                    rows.append(
                        {
                            "event_id": ev.id,
                            "stream": stream,
                            "entry_id": entry.entry_id,
                            "event_type": ev.type,
                            "processed_at": now,
                        }
                    )
            for applier, fresh in sorted(calls.items(), key=lambda c: self._applier_rank[c[0]]):
                applier(session, fresh)
            bulk_insert(session, processed, rows)
            queued = queued_in(session)
        if queued and not self._published_inline():
            self._queued_outbox = True  # committed: the relay has something to send
        return results

    def _published_inline(self) -> bool:
        """Publish what the transaction just committed to the outbox, here in the
        committing thread before the next batch's commit can start: handed to the
        relay's task instead, its rows waited for the write lock behind that next
        commit, so every alert was a whole batch late. False when rows are left
        (more than a batch, or Redis failed): the relay is woken for them."""
        if self.publish_now is None:
            return False
        try:
            return self.publish_now()
        except Exception as exc:  # committed all the same: the relay retries
            log.debug("%s: publishing after the commit failed (%r); the relay retries",
                      self.service, exc)  # fmt: skip
            return False

    async def _ack_and_dead_letter(
        self, stream: str, ack_ids: list[str], dead: list[tuple[RawEntry, str]]
    ) -> None:
        if not ack_ids and not dead:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry, reason in dead:
                pipe.xadd(DEAD_LETTERS, self._dead_letter_fields(entry, reason))
            ids = ack_ids + [e.entry_id for e, _ in dead]
            pipe.xack(stream, self.group, *ids)
            await pipe.execute()
        for entry, reason in dead:
            masked = NINO_IN_TEXT.sub("[NI-NUMBER-REDACTED]", reason)
            log.warning("%s: dead-lettered %s %s: %s", self.service, stream, entry.entry_id, masked)

    def _dead_letter_fields(self, entry: RawEntry, reason: str) -> dict[Any, Any]:
        fields: dict[Any, Any] = {
            "reason": NINO_IN_TEXT.sub("[NI-NUMBER-REDACTED]", reason),
            "source_stream": entry.stream,
            "entry_id": entry.entry_id,
            "group": self.group,
            "consumer": self.consumer,
            "failed_at": self._now().isoformat(),
        }
        # The original fields under `original:<field>`, byte for byte except that an
        # NI number in them is masked: personal data does not go to the dead letters.
        redacted = 0
        for key, value in entry.fields.items():
            clean, n = _NINO_BYTES.subn(b"[NI-NUMBER-REDACTED]", value)
            clean_key, m = _NINO_BYTES.subn(b"[NI-NUMBER-REDACTED]", key)
            redacted += n + m
            fields[b"original:" + clean_key] = clean
        if redacted:
            fields["original_redacted"] = str(redacted)
        return fields

    # ------------------------------------------------------------------ reclaim

    async def reclaim_once(self) -> int:
        """Claim and process entries idle longer than `reclaim_idle_ms`; returns how many."""
        total = 0
        for stream in self.streams:
            if stream in self.unreadable:
                continue  # the reader tries it again
            start: bytes | str = "0-0"
            while True:
                try:
                    resp = await self.redis.xautoclaim(
                        stream,
                        self.group,
                        self.consumer,
                        min_idle_time=self.reclaim_idle_ms,
                        start_id=start,
                        count=self.batch_size,
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) or (why := await self._why_unreadable(stream)) is None:
                        raise
                    self._set_aside(stream, why)  # the other streams are still reclaimed
                    break
                start, claimed = resp[0], resp[1]
                if claimed:
                    total += len(claimed)
                    self.metrics.reclaimed.labels(self.service, stream).inc(len(claimed))
                    await self._process_claimed(stream, claimed)
                if start in (b"0-0", "0-0"):
                    break
        return total

    async def _process_claimed(self, stream: str, claimed: list[Any]) -> None:
        counts: dict[Any, int] = {}
        # The delivery count of each claimed entry, one exact XPENDING range per id.
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
            for found in await pipe.execute():
                for p in found:
                    counts[p["message_id"]] = int(p["times_delivered"])
        normal_ids, normal_data, over = [], [], []
        for entry_id, data in claimed:
            if counts.get(entry_id, 1) > self.max_deliveries:
                over.append((entry_id, data))
            else:
                normal_ids.append(entry_id)
                normal_data.append(data)
        if normal_ids:
            await self.handle(stream, normal_ids, normal_data)
        for entry_id, data in over:
            # One last try; a non-infrastructure failure makes it a dead letter.
            res = await self.handle(stream, [entry_id], [data])
            exc = res.failed.get(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
            if exc is not None and not is_infra(exc):
                entry = RawEntry(stream, entry_id.decode(), dict(data or {}))
                reason = (
                    f"handler failed on {counts.get(entry_id)} deliveries "
                    f"(max {self.max_deliveries}): {type(exc).__name__}: {exc}"
                )[:2000]
                await self._ack_and_dead_letter(stream, [], [(entry, reason)])
                self.metrics.consumed.labels(self.service, stream, "dead_letter").inc()

    async def reclaim_forever(self, interval_s: float) -> None:
        while self._running:
            try:
                await self.reclaim_once()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.error(
                        "%s: consumer group missing (Redis emptied?); recreating", self.service
                    )
                    try:
                        await self.ensure_groups()
                    except asyncio.CancelledError:
                        raise
                    except Exception as again:  # Redis away again: the next round retries
                        log.warning("%s: recreating the groups failed: %r", self.service, again)
                else:
                    log.exception("%s: reclaim failed", self.service)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: reclaim failed", self.service)
            await asyncio.sleep(interval_s)
