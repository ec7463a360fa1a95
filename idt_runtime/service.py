"""The skeleton every service shares: storage, migrations, the stream consumer
(one XREADGROUP for all of a service's streams), the outbox relay, `/health`,
`/metrics` and the OpenAPI document.

Nothing here does I/O at import time: `ServiceRuntime.start()` runs in the app's
lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from . import memory
from .clock import Clock, SystemClock
from .consumer import Applier, EventConsumer
from .db import (
    SLOW_WRITE_S,
    SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES,
    SQLITE_AUTOCHECKPOINT_PAGES,
    RuntimeTables,
    checkpoint_wal,
    is_sqlite,
    make_engine,
    migrate,
    reading,
    write_turn,
)
from .logs import configure_logging
from .metrics import RuntimeMetrics, StreamCollector
from .outbox import OutboxRelay
from .settings import DEFAULT_READ_LINGER_MS, RuntimeSettings

log = logging.getLogger("idt.service")

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`fn(*args)` and the seconds it took (in the thread that runs it, so a wait
    for a free worker thread is not counted)."""
    began = time.perf_counter()
    return fn(*args), time.perf_counter() - began


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service itself: its name, table prefix, migrations, tables, and
    how fresh its view of the streams must be (`read_linger_ms`: the pause after a
    read that was not full, unless `IDT_READ_LINGER_MS` sets one for every service;
    docs/decisions.md, Consuming)."""

    name: str
    prefix: str
    migrations: Path
    metadata: MetaData
    tables: RuntimeTables
    read_linger_ms: int = DEFAULT_READ_LINGER_MS

    @classmethod
    def of(
        cls,
        name: str,
        prefix: str,
        tables: RuntimeTables,
        app_file: str,
        *,
        read_linger_ms: int = DEFAULT_READ_LINGER_MS,
    ) -> ServiceSpec:
        """A service laid out as usual: SQLModel tables, `migrations/` beside `app.py`."""
        from sqlmodel import SQLModel

        migrations = Path(app_file).parent / "migrations"
        return cls(name, prefix, migrations, SQLModel.metadata, tables, read_linger_ms)


class ServiceRuntime:
    def __init__(
        self,
        spec: ServiceSpec,
        settings: RuntimeSettings,
        *,
        appliers: dict[str, Applier] | None = None,
        clock: Clock | None = None,
        metrics: RuntimeMetrics | None = None,
        background: Sequence[Callable[[ServiceRuntime], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self.spec = spec
        #: Loops run beside the consumer (started after it, cancelled at stop).
        self.background = list(background)
        self.settings = settings
        self.appliers = appliers or {}
        self.clock = clock or SystemClock()
        self.metrics = metrics or RuntimeMetrics(spec.name)
        self.engine: Engine | None = None
        self.redis: aredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self.consumer: EventConsumer | None = None
        self.relay: OutboxRelay | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._streams: StreamCollector | None = None

    @property
    def read_linger_ms(self) -> int:
        """The pause after a read that was not full: `IDT_READ_LINGER_MS` when set,
        else the service's own (`ServiceSpec.read_linger_ms`)."""
        configured = self.settings.read_linger_ms
        return configured if configured is not None else self.spec.read_linger_ms

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        configure_logging(s.log_level, self.spec.name)
        url = s.database_url_for(self.spec.name)
        checkpointing = url.startswith("sqlite") and s.sqlite_checkpoint_s > 0
        self.engine = make_engine(
            url,
            sqlite_cache_kib=s.sqlite_cache_mib * 1024,
            sqlite_autocheckpoint_pages=(
                SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES
                if checkpointing
                else SQLITE_AUTOCHECKPOINT_PAGES
            ),
        )
        await asyncio.to_thread(
            migrate, self.engine, self.spec.migrations, f"{self.spec.prefix}_alembic_version"
        )
        self.redis = aredis.from_url(
            s.redis_url,
            socket_timeout=s.block_ms / 1000 + s.redis_timeout_s,
            socket_connect_timeout=min(5.0, s.redis_timeout_s),
        )
        await self.redis.ping()
        self.relay = OutboxRelay(
            service=self.spec.name,
            engine=self.engine,
            tables=self.spec.tables,
            redis_url=s.redis_url,
            metrics=self.metrics,
            batch_size=s.batch_size,
            republish_s=s.outbox_republish_s,
            retention_s=s.outbox_retention_s,
        )
        self._tasks.append(asyncio.create_task(self.relay.run_forever()))
        if checkpointing:
            self._tasks.append(asyncio.create_task(self._checkpoint_forever(s.sqlite_checkpoint_s)))
        if s.memory_trim_s > 0:
            if memory.can_trim():
                self._tasks.append(asyncio.create_task(self._trim_memory_forever(s.memory_trim_s)))
            else:
                log.info("%s: this C library cannot give freed memory back (no malloc_trim); "
                         "IDT_MEMORY_TRIM_S does nothing here", self.spec.name)  # fmt: skip
        if self.appliers:
            await self._start_consumer()
        for loop in self.background:
            self._tasks.append(asyncio.create_task(loop(self)))

    async def _start_consumer(self) -> None:
        assert self.engine is not None and self.redis is not None and self.relay is not None
        s = self.settings
        name = s.consumer_name(self.spec.name)
        self.consumer = EventConsumer(
            service=self.spec.name,
            group=self.spec.name,
            consumer=name,
            redis=self.redis,
            engine=self.engine,
            tables=self.spec.tables,
            appliers=self.appliers,
            metrics=self.metrics,
            clock_now=self.clock.now,
            reclaim_idle_ms=s.reclaim_idle_ms,
            max_deliveries=s.max_deliveries,
            batch_size=s.batch_size,
            after_commit=self.relay.notify,
            publish_now=self.relay.publish_once,
        )
        self.relay.quiet = self.consumer.quiet  # the prune lets batches go first
        await self.consumer.ensure_groups()
        self._reader = asyncio.create_task(
            self.consumer.read_forever(s.block_ms, self.read_linger_ms)
        )
        self._reader.add_done_callback(self._reader_ended)
        self.metrics.consumer_up.labels(self.spec.name).set(1)
        self._streams = StreamCollector(
            self.spec.name, s.redis_url, self.spec.name, self.consumer.streams
        )
        self.metrics.registry.register(self._streams)  # type: ignore[arg-type]
        self._tasks.append(asyncio.create_task(self.consumer.reclaim_forever(s.reclaim_interval_s)))
        log.info("%s: consuming %d streams in group %s as consumer %s", self.spec.name,
                 len(self.consumer.streams), self.spec.name, name)  # fmt: skip

    async def _checkpoint_forever(self, interval_s: float) -> None:
        """Checkpoint the SQLite WAL every `interval_s`, in a thread of its own
        (`checkpoint_wal`): a commit that checkpointed itself (every 1,000 pages, 4
        MiB, a few times a second under load) took 20-120 ms instead of 1-5 ms, and
        the batches behind it waited (docs/decisions.md).

        Each checkpoint first waits, up to 0.1 s, until the consumer has no batch in
        hand, so that it is likely to end before the next commit: SQLite starts the
        WAL again only when a writer begins after a complete checkpoint, and beside
        steady commits the WAL otherwise grew until a commit took it past the
        fallback and checkpointed it itself (140 ms at 1M events)."""
        engine = self.engine
        assert engine is not None
        quiet_within_s = min(interval_s, 0.1)
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.consumer is not None:
                    await self.consumer.quiet(quiet_within_s)
                (_, frames, done), took = await asyncio.to_thread(timed, checkpoint_wal, engine)
                self.metrics.wal_frames.labels(self.spec.name).set(frames)
                if took >= SLOW_WRITE_S:
                    log.warning("%s: slow write: a WAL checkpoint took %.2f s (%d of %d frames)",
                                self.spec.name, took, done, frames)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # commits checkpoint past the fallback meanwhile
                log.warning("%s: checkpointing the WAL failed: %r", self.spec.name, exc)

    async def _trim_memory_forever(self, interval_s: float) -> None:
        """Give the memory freed in malloc's arenas back to the system every
        `interval_s`, in a thread (idt_runtime/memory.py): the resident size then
        follows what the service holds, not the peaks each thread ever reached.
        A trim holds each arena's lock in turn, and any thread allocating from
        that arena meanwhile waits (the event loop's too; the scheduler's trims
        took 35-95 ms in the 1M bench, giving back 50-85 MiB every 10 s), so it
        first waits, up to 0.1 s, for the consumer to have no batch in hand."""
        name = self.spec.name
        released = self.metrics.trim_released.labels(name)
        seconds = self.metrics.trim_seconds.labels(name)
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.consumer is not None:  # as the checkpointer does, briefly
                    await self.consumer.quiet(0.1)
                done = await asyncio.to_thread(memory.trim)
                if done is not None:
                    released.inc(done.released)
                    seconds.inc(done.seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # next time; the service goes on either way
                log.warning("%s: giving freed memory back failed: %r", name, exc)

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: the stream reader stopped: %r (/health says so; restart the "
                      "service)", self.spec.name, task.exception())  # fmt: skip

    def subscribers_running(self) -> bool:
        """The stream reader is reading (a service with no streams: trivially)."""
        if self._reader is None:
            return not self.appliers
        return not self._reader.done()

    async def stop(self) -> None:
        """Stop in order, each step bounded so a stuck dependency cannot hang shutdown."""
        if self.consumer is not None:
            self.consumer.stop()
        if self._reader is not None:
            # Ends after the read under way (block_ms), once the batches it is
            # handling are committed and acked; past the limit it is cancelled (its
            # batches too: their entries stay pending for the reclaimer).
            reader = self._reader
            _, late = await asyncio.wait({reader}, timeout=10.0)
            if late:
                log.error("%s: the stream reader took over 10s to stop; cancelling it",
                          self.spec.name)  # fmt: skip
                reader.cancel()
                await asyncio.wait({reader}, timeout=10.0)
        if self.relay is not None:
            self.relay.stop()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await self._bounded(
                "background tasks", asyncio.gather(*self._tasks, return_exceptions=True)
            )
        self._tasks.clear()
        if self.consumer is not None:
            self.consumer.close()
        if self.relay is not None:
            await self._bounded("outbox flush", self.relay.flush())
            self.relay.close()
        if self.redis is not None:
            await self._bounded("redis", self.redis.aclose())
        if self._streams is not None:
            self.metrics.registry.unregister(self._streams)  # type: ignore[arg-type]
            self._streams.close()
            self._streams = None
        if self.engine is not None:
            self.engine.dispose()

    async def _bounded(self, what: str, aw: Any, limit_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(aw, limit_s)
        except TimeoutError:
            log.error("%s: stopping %s took over %.0fs; moving on", self.spec.name, what, limit_s)
        except Exception as exc:
            log.warning("%s: stopping %s failed: %r", self.spec.name, what, exc)

    # ------------------------------------------------------------------ sessions

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[Session]:
        """A write transaction for an HTTP request (`what` names it in slow-write
        lines); on SQLite in the process's write turn (`write_turn`), as the
        consumer's commits and the relay take it: the writers then share one
        connection, whose page cache stays valid, and SQLite's busy handler does not
        sleep the request (idt_runtime/db.py). On PostgreSQL its row locks are
        enough, and a request does not queue behind the consumer's commits."""
        engine = self.engine
        assert engine is not None
        turn = write_turn(engine, what) if is_sqlite(engine) else contextlib.nullcontext()
        with turn, Session(engine) as s, s.begin():
            yield s

    def read_session(self) -> Session:
        """A session for reads, on the reading connections (`reading`)."""
        assert self.engine is not None
        return Session(reading(self.engine))

    # ------------------------------------------------------------------ health

    async def health(self) -> dict[str, Any]:
        checks: dict[str, str] = {}
        try:
            assert self.redis is not None
            try:
                await self.redis.ping()
            except (aredis.ConnectionError, aredis.TimeoutError):
                # A pooled connection a restarted Redis broke (the pool drops it
                # on this error): whether Redis answers now is one more try away.
                await self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            # redis-py 8's repr of its errors drops the message ("network:...").
            checks["redis"] = f"error: {type(exc).__name__}: {exc}"
        try:
            assert self.engine is not None
            engine = reading(self.engine)

            def ping() -> None:
                with engine.connect() as c:
                    c.execute(text("SELECT 1"))

            await asyncio.to_thread(ping)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc!r}"
        running = self.subscribers_running()
        self.metrics.consumer_up.labels(self.spec.name).set(1 if running else 0)
        problem = self.consumer.reading_problem() if self.consumer is not None else None
        checks["subscribers"] = (
            "stopped" if not running else f"error: {problem}" if problem else "ok"
        )
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return {"service": self.spec.name, "status": status, "checks": checks}


#: Collect the youngest generation after this many more container objects were
#: made than freed (CPython's default is 700).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> tuple[int, int, int]:
    """Garbage collection for a service that decodes and applies thousands of
    events a second; returns the thresholds before, for shutdown to restore.

    - What the process holds once started (modules, classes, models, the app:
      some 130,000 objects) is frozen, left out of every later collection. No
      collection first: garbage there is then stays, a small one-off, and a
      full collection of a process that runs many apps (the tests) cost a
      second or more per app started.
    - Collections start after `GC_THRESHOLDS[0]` more objects made than freed,
      not 700: nearly every object of a batch is freed by its reference count
      when the batch is done, so the default made a collection every few hundred
      objects that found nothing, moving the batch in flight up a generation, and
      a full collection every few seconds.

    Measured on the scheduler alone (100k events, bench.alone): collections took
    3.6 s of CPU in 48 s by default, 1.4 s frozen, 0.01 s with both; under the
    bench's steady load full collections paused a service 50-400 ms each
    (docs/decisions.md)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


def build_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    description: str,
    routers: list[Any],
) -> FastAPI:
    """A FastAPI app whose lifespan starts and stops the runtime."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        thresholds = tune_gc()
        try:
            yield
        finally:
            await runtime.stop()
            gc.unfreeze()
            gc.set_threshold(*thresholds)

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/health", tags=["operations"], summary="Liveness and dependencies")
    async def health(response: Response) -> dict[str, Any]:
        body = await runtime.health()
        if body["status"] != "ok":
            response.status_code = 503
        return body

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """422s that never echo submitted values (an NI number must not bounce into
    logs or proxies), and every error in one shape: {"detail": [{loc, msg, type}]}.

    Any NI number left in an error (a path's claim id quoted by a 404, an unknown
    body field's name in a `loc`) is masked, whichever handler wrote the message."""
    from http import HTTPStatus

    from starlette.exceptions import HTTPException as StarletteHTTPException

    from idt_contract.events import NINO_IN_TEXT

    phrases = {s.value: s.phrase for s in HTTPStatus}

    def masked(value: Any) -> Any:
        return NINO_IN_TEXT.sub("[NI-NUMBER-REDACTED]", value) if isinstance(value, str) else value

    def reply(status: int, detail: list[Any], headers: Any = None) -> JSONResponse:
        items = [
            {
                "loc": [masked(p) for p in d.get("loc", [])],
                "msg": masked(str(d.get("msg", ""))),
                "type": str(d.get("type", "")),
            }
            for d in detail
        ]
        return JSONResponse(status_code=status, content={"detail": items}, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(422, list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's 400 for a body it could not read as JSON (not UTF-8, nested too
            # deep, an integer too long): the same error as malformed JSON, a 422.
            msg = "the body is not readable JSON (UTF-8, not nested too deep)"
            return reply(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        if isinstance(exc.detail, list):
            detail = exc.detail
        else:  # Starlette's own 404 and 405, or a plain-string detail
            phrase = phrases.get(exc.status_code, "error")
            kind = phrase.lower().replace(" ", "_").replace("-", "_")
            detail = [{"loc": [], "msg": str(exc.detail), "type": kind}]
        return reply(exc.status_code, detail, exc.headers)
