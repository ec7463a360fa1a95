"""The scheduler service: opens IDT windows on eligibility, decides outcomes in
event time, publishes outcome revisions and alerts, and answers staff queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from time import perf_counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel, Field
from sqlmodel import Session

from idt_contract.events import ClaimId, OfficeId
from idt_runtime.clock import Clock
from idt_runtime.consumer import is_infra, is_race
from idt_runtime.db import ChunkTally, paced_chunks, write_turn
from idt_runtime.service import ServiceRuntime, ServiceSpec, build_app
from idt_runtime.settings import RuntimeSettings

from . import handlers
from .alerts import AlertConfig
from .domain import RulesConfig
from .models import PREFIX, TABLES

log = logging.getLogger("idt.scheduler")

NAME = "scheduler"

SPEC = ServiceSpec.of(NAME, PREFIX, TABLES, __file__)


class ErrorItemOut(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    detail: list[ErrorItemOut]


NOT_FOUND: dict[str, Any] = {"model": ErrorOut, "description": "Unknown claim"}


class SchedulerSettings(RuntimeSettings):
    #: Days before a window closes that WINDOW_CLOSING is sent (nothing conducted).
    closing_alert_days: int = Field(default=7, ge=0, le=60)
    #: Fewer days left than this to book inside a window: the late stage is blamed.
    min_booking_lead_days: int = Field(default=5, ge=0, le=60)
    lp_review_months: int = Field(default=6, ge=1, le=24)
    lmi_deadline_working_days: int = Field(default=10, ge=1, le=60)

    def scheduler_config(self) -> handlers.SchedulerConfig:
        return handlers.SchedulerConfig(
            rules=RulesConfig(
                lp_review_months=self.lp_review_months,
                lmi_deadline_working_days=self.lmi_deadline_working_days,
            ),
            alerts=AlertConfig(closing_days=self.closing_alert_days),
            min_booking_lead_days=self.min_booking_lead_days,
        )


class WindowsCollector:
    """Open and at-risk windows per element and district, read at scrape time."""

    def __init__(self, runtime: ServiceRuntime, closing_days: int) -> None:
        self.runtime = runtime
        self.closing_days = closing_days

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            "idt_windows_open",
            "Windows not yet decided (policy basis), by element and district.",
            labels=["element", "district"],
        )
        risk = GaugeMetricFamily(
            "idt_windows_at_risk",
            "Open windows closing within the alert period with nothing booked.",
            labels=["element", "district"],
        )
        if self.runtime.engine is not None:
            with self.runtime.read_session() as s:
                opened, at_risk = handlers.open_windows_by_district(s, self.closing_days)
            for (element, district), n in sorted(opened.items()):
                open_.add_metric([element, district], n)
            for (element, district), n in sorted(at_risk.items()):
                risk.add_metric([element, district], n)
        yield open_
        yield risk


#: The least a sweep chunk waits for the consumer to be quiet.
QUIET_WAIT_MIN_S = 0.01
#: After each chunk the sweep pauses this many times as long as the chunk held the
#: write lock: it takes at most a third of the scheduler's time, so that the
#: claim events beside it keep the rest (after a 10M replay a tick made about
#: 20,000 claims due, and their sweep back to back took the whole core for ten
#: seconds, alerts 264 ms late at p99).
SWEEP_PAUSE_FACTOR = 2.0


def due_sweeper(
    scheduler: handlers.Scheduler, interval_s: float = 1.0
) -> Callable[[ServiceRuntime], Coroutine[Any, Any, None]]:
    """A loop re-evaluating the claims business time made due beyond what the tick
    itself did (`Scheduler.sweep_due`), a chunk per transaction, each when the
    consumer has no batch in hand (`EventConsumer.quiet`), so that the thousands of
    claims a tick makes due never hold claim events back; it looks every
    `interval_s` seconds."""

    # Claims whose evaluation failed on their own, until business time moves on:
    # skipped, so that one bad claim cannot hold back every claim due after it.
    failing: dict[str, date] = {}

    def sweep_once(runtime: ServiceRuntime) -> tuple[int, float]:
        """Claims re-evaluated, and the seconds the write lock was held for them."""
        engine = runtime.engine
        assert engine is not None
        held = 0.0

        @contextlib.contextmanager
        def writing() -> Iterator[Session]:
            nonlocal held
            with write_turn(engine, "the sweeper") as began:
                try:
                    with Session(engine) as s, s.begin():
                        yield s
                finally:
                    held += perf_counter() - began

        if failing:
            with runtime.read_session() as s:
                today = handlers.business_date(s)
            for claim_id, day in list(failing.items()):
                if day != today:
                    del failing[claim_id]
        skip = frozenset(failing)
        try:
            with writing() as s:
                n = len(scheduler.sweep_due(s, skip=skip))
            return n, held
        except Exception as exc:
            if is_infra(exc) or is_race(exc):
                raise  # the database away, or a replica got there first: next time
            log.warning("scheduler: a sweep chunk failed (%r); one claim at a time", exc)
        # A claim in the chunk cannot be evaluated: one claim at a time, to find it.
        with runtime.read_session() as s:
            as_of = handlers.business_date(s)
            due = handlers.due_claims(s, as_of, handlers.SWEEP_CHUNK + len(skip)) if as_of else []
        done = 0
        for claim_id in [c for c in due if c not in skip][: handlers.SWEEP_CHUNK]:
            try:
                with writing() as s:
                    scheduler.reevaluate(s, [claim_id])
                done += 1
            except Exception as exc:
                if is_infra(exc) or is_race(exc):
                    raise
                assert as_of is not None
                failing[claim_id] = as_of
                runtime.metrics.sweep_failures.labels(runtime.spec.name).inc()
                log.error("scheduler: claim %s could not be re-evaluated (skipped until "
                          "business time moves): %r", claim_id, exc)  # fmt: skip
        return done, held

    async def run(runtime: ServiceRuntime) -> None:
        # Both counters exported from the start at 0, so that a first failure is
        # an increase Prometheus sees (the IdtClaimsNotReevaluated alert).
        runtime.metrics.swept.labels(runtime.spec.name)
        runtime.metrics.sweep_failures.labels(runtime.spec.name)

        def swept(n: int) -> None:
            runtime.metrics.swept.labels(runtime.spec.name).inc(n)
            if runtime.relay is not None:
                runtime.relay.notify()

        while True:
            await asyncio.sleep(interval_s)
            tally = ChunkTally()
            try:
                await paced_chunks(
                    lambda: sweep_once(runtime), handlers.SWEEP_CHUNK, tally,
                    quiet=runtime.consumer.quiet if runtime.consumer is not None else None,
                    pause_factor=SWEEP_PAUSE_FACTOR, quiet_min_s=QUIET_WAIT_MIN_S, after=swept,
                )  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost race or the database away: next time
                log.warning("scheduler: sweeping due claims failed: %r", exc)
            if tally.done:
                log.info("scheduler: swept %d due claims %s", tally.done, tally.summary())

    return run


def create_app(settings: SchedulerSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or SchedulerSettings()
    scheduler = handlers.Scheduler(settings.scheduler_config())
    runtime = ServiceRuntime(
        SPEC, settings, appliers=scheduler.appliers(), clock=clock,
        background=[due_sweeper(scheduler)],
    )  # fmt: skip
    runtime.metrics.registry.register(WindowsCollector(runtime, settings.closing_alert_days))  # type: ignore[arg-type]
    router = APIRouter(prefix="/v1")

    session = runtime.read_session  # the queries only read

    @router.get("/claims/{claim_id}", tags=["queries"], responses={404: NOT_FOUND})
    def claim(claim_id: ClaimId) -> dict[str, Any]:
        """A claim's timeline, its windows on both bases with outcomes, and for each
        MISSED window the stage that consumed the time."""
        with session() as s:
            view = handlers.claim_view(s, claim_id)
        if view is None:
            msg = f"claim {claim_id!r} is not known to the scheduler"
            raise HTTPException(
                404, [{"loc": ["path", "claim_id"], "msg": msg, "type": "not_found"}]
            )
        return view

    @router.get("/jobcentres/{office_id}/windows", tags=["queries"])
    def jobcentre_windows(
        office_id: OfficeId,
        status: Annotated[
            Literal["open", "closing", "missed"],
            Query(description="open: nothing decided yet; closing: within the alert period "
                  "of the close; missed: missed on either basis"),
        ] = "open",
    ) -> dict[str, Any]:  # fmt: skip
        """A DASO's work queue: the Jobcentre's windows sorted by close date, with
        booking status."""
        with session() as s:
            items = handlers.jobcentre_queue(s, office_id, status, settings.closing_alert_days)
            as_of: date | None = handlers.business_date(s)
        return {
            "office_id": office_id,
            "status": status,
            "as_of": as_of,
            "count": len(items),
            "windows": items,
        }

    return build_app(
        runtime,
        title="IDT Scheduler",
        description="IDT windows on the policy and measured bases, outcomes in event time, "
        "alerts to each Jobcentre.",
        routers=[router],
    )
