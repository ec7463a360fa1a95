"""The Benefit Delivery Centre service: intake of claims received, evidence
requested and received, clearance (publishing `claim-cleared`), the claim-status
endpoint Jobcentres call instead of phoning, and AACT per BDC and month computed
from every `claim-cleared` on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from idt_contract.events import ClearanceOutcome, OfficeId
from idt_domain.calendar import london_date, parse_period
from idt_runtime.api_types import Day, Moment, SafeClaimId
from idt_runtime.clock import Clock
from idt_runtime.service import ServiceRuntime, ServiceSpec, build_app
from idt_runtime.settings import VIEW_READ_LINGER_MS, RuntimeSettings

from . import domain, handlers
from .domain import EvidenceKind, Stage
from .models import PREFIX, TABLES

NAME = "bdc"

T = TypeVar("T")


class BdcSettings(RuntimeSettings):
    """The shared runtime settings (`IDT_*`, `REDIS_URL`, `DATABASE_URL`); the BDC
    needs nothing of its own."""


SPEC = ServiceSpec.of(NAME, PREFIX, TABLES, __file__, read_linger_ms=VIEW_READ_LINGER_MS)

# ---------------------------------------------------------------- API models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReceivedIn(_Strict):
    bdc_id: OfficeId = Field(description="The registered BDC that received the claim.")
    received_date: Day = Field(description="When the BDC received the claim (AACT starts here).")
    occurred_at: Moment | None = Field(
        default=None, description="When the receipt is recorded; default: now."
    )


class EvidenceRequestIn(_Strict):
    kind: EvidenceKind
    requested_date: Day | None = Field(
        default=None, description="Default: the London date of occurred_at (or now)."
    )
    occurred_at: Moment | None = None


class EvidenceReceivedIn(_Strict):
    received_date: Day | None = Field(
        default=None, description="Default: the London date of occurred_at (or now)."
    )
    occurred_at: Moment | None = None


class ClearanceIn(_Strict):
    outcome: ClearanceOutcome
    occurred_at: Moment | None = Field(
        default=None,
        description="The decision's moment: the `time` of `claim-cleared`; its London "
        "date is the cleared date. Default: now.",
    )


class EvidenceOut(BaseModel):
    kind: EvidenceKind
    requested_date: date
    received_date: date | None


class ClaimStatusOut(BaseModel):
    claim_id: str
    bdc_id: str | None
    stage: Stage
    registered_date: date | None = Field(description="From `claim-registered`, when seen.")
    received_date: date | None
    cleared_date: date | None
    outstanding_evidence: list[EvidenceKind]
    evidence: list[EvidenceOut]
    working_days_elapsed: int | None = Field(
        description="Working days from received_date (exclusive) to the cleared date, or "
        "to as_of while not cleared (inclusive); null before receipt."
    )
    as_of: date


class EventRef(BaseModel):
    id: str
    type: str


class ClearanceOut(BaseModel):
    event: EventRef
    status: ClaimStatusOut


class AactRowOut(BaseModel):
    bdc_id: str
    claims: int
    aact: float = Field(description="Mean working days to clear, 2 decimals (target 18).")


class AactOut(BaseModel):
    period: str
    rows: list[AactRowOut]


def _error(status: int, loc: list[str | int], message: str, kind: str) -> HTTPException:
    return HTTPException(status_code=status, detail=[{"loc": loc, "msg": message, "type": kind}])


def _status_out(st: handlers.ClaimStatus) -> ClaimStatusOut:
    return ClaimStatusOut(
        claim_id=st.claim_id,
        bdc_id=st.bdc_id,
        stage=st.stage,
        registered_date=st.registered_date,
        received_date=st.received_date,
        cleared_date=st.cleared_date,
        outstanding_evidence=st.outstanding_evidence,
        evidence=[
            EvidenceOut(kind=e.kind, requested_date=e.requested_date, received_date=e.received_date)
            for e in st.evidence
        ],
        working_days_elapsed=st.working_days_elapsed,
        as_of=st.as_of,
    )


class ErrorItemOut(BaseModel):
    loc: list[str | int] = Field(description='Where the problem is, e.g. ["body", "bdc_id"].')
    msg: str = Field(description="What is wrong and what to fix, in words.")
    type: str


class ErrorOut(BaseModel):
    detail: list[ErrorItemOut]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        404: "Unknown claim or evidence request",
        409: "Conflicts with the claim's state",
        422: "Invalid input",
    }
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


#: How far ahead of the service's clock an `occurred_at` may be (clock skew).
FUTURE_TOLERANCE = timedelta(minutes=5)


def create_app(settings: BdcSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or BdcSettings()
    runtime = ServiceRuntime(SPEC, settings, appliers=dict(handlers.APPLIERS), clock=clock)
    router = APIRouter(prefix="/v1")

    writing = runtime.writing
    read_session = runtime.read_session

    def now(value: datetime | None) -> datetime:
        """The moment of a command: its `occurred_at`, never in the future, or now."""
        current = runtime.clock.now()
        if value is None:
            return current
        try:
            domain.check_not_future("occurred_at", value, current, FUTURE_TOLERANCE)
        except domain.Refused as exc:
            raise _error(422, ["body", "occurred_at"], str(exc), "invalid") from None
        return value

    def today() -> date:
        return london_date(runtime.clock.now())

    def transact(work: Callable[[Session], T]) -> T:
        """One command in one transaction; domain refusals become clear 4xx."""
        try:
            with writing("an HTTP intake request") as s:
                return work(s)
        except handlers.NotFound as exc:
            raise _error(404, list(exc.loc), str(exc), "not_found") from None
        except handlers.Conflict as exc:
            raise _error(409, list(exc.loc), str(exc), "conflict") from None
        except handlers.Invalid as exc:
            raise _error(422, ["body", exc.field], str(exc), "invalid") from None
        except IntegrityError:
            raise _error(
                409,
                ["path", "claim_id"],
                "the claim was changed by another request at the same moment; try again",
                "conflict",
            ) from None

    def status_now(claim_id: str) -> ClaimStatusOut:
        with read_session() as s:
            return _status_out(handlers.claim_status(s, claim_id, today()))

    @router.post(
        "/claims/{claim_id}/received",
        status_code=201,
        response_model=ClaimStatusOut,
        responses={
            200: {"model": ClaimStatusOut, "description": "The very same receipt again"},
            **_responses(409, 422),
        },
        summary="Record that a BDC received a claim",
        tags=["intake"],
    )
    async def claim_received(
        claim_id: SafeClaimId, body: ReceivedIn, response: Response
    ) -> ClaimStatusOut:
        """Record that a BDC received the claim (201); repeating the very same receipt
        is harmless (200)."""
        cmd = handlers.ReceiveClaim(
            claim_id=claim_id,
            bdc_id=body.bdc_id,
            received_date=body.received_date,
            recorded_on=london_date(now(body.occurred_at)),
        )
        created = await asyncio.to_thread(transact, lambda s: handlers.receive_claim(s, cmd))
        if not created:
            response.status_code = 200
        return await asyncio.to_thread(status_now, claim_id)

    @router.post(
        "/claims/{claim_id}/evidence-requests",
        status_code=201,
        response_model=ClaimStatusOut,
        responses=_responses(404, 409, 422),
        summary="Request evidence for a received claim",
        tags=["intake"],
    )
    async def evidence_requested(claim_id: SafeClaimId, body: EvidenceRequestIn) -> ClaimStatusOut:
        """Ask for evidence (medical evidence, SSP1, employment details, an NI account
        problem); the claim is AWAITING_EVIDENCE until it arrives."""
        recorded_on = london_date(now(body.occurred_at))
        cmd = handlers.RequestEvidence(
            claim_id=claim_id,
            kind=body.kind,
            requested_date=body.requested_date or recorded_on,
            recorded_on=recorded_on,
        )
        await asyncio.to_thread(transact, lambda s: handlers.request_evidence(s, cmd))
        return await asyncio.to_thread(status_now, claim_id)

    @router.post(
        "/claims/{claim_id}/evidence-requests/{kind}/received",
        response_model=ClaimStatusOut,
        responses=_responses(404, 409, 422),
        summary="Record that requested evidence arrived",
        tags=["intake"],
    )
    async def evidence_received(
        claim_id: SafeClaimId, kind: EvidenceKind, body: EvidenceReceivedIn
    ) -> ClaimStatusOut:
        """Record that outstanding evidence of this kind arrived."""
        recorded_on = london_date(now(body.occurred_at))
        cmd = handlers.ReceiveEvidence(
            claim_id=claim_id,
            kind=kind,
            received_date=body.received_date or recorded_on,
            recorded_on=recorded_on,
        )
        await asyncio.to_thread(transact, lambda s: handlers.receive_evidence(s, cmd))
        return await asyncio.to_thread(status_now, claim_id)

    @router.post(
        "/claims/{claim_id}/clearance",
        status_code=201,
        response_model=ClearanceOut,
        responses=_responses(404, 409, 422),
        summary="Clear a claim (publishes claim-cleared)",
        tags=["intake"],
    )
    async def clearance(claim_id: SafeClaimId, body: ClearanceIn) -> ClearanceOut:
        """Decide the claim (ELIGIBLE or DISALLOWED); publishes `claim-cleared`
        through the outbox."""
        cmd = handlers.ClearClaim(
            claim_id=claim_id, outcome=body.outcome, occurred_at=now(body.occurred_at)
        )
        event = await asyncio.to_thread(transact, lambda s: handlers.clear_claim(s, cmd))
        await _publish()
        status = await asyncio.to_thread(status_now, claim_id)
        return ClearanceOut(event=EventRef(id=event.id, type=event.type), status=status)

    @router.get(
        "/claims/{claim_id}/status",
        response_model=ClaimStatusOut,
        responses=_responses(404, 422),
        summary="Claim status, for Jobcentres instead of phoning",
        tags=["queries"],
    )
    def claim_status(
        claim_id: SafeClaimId,
        as_of: Annotated[
            Day | None,
            Query(description="Business date for working days elapsed; default: today"),
        ] = None,
    ) -> ClaimStatusOut:
        """Where a claim stands at its BDC: stage, outstanding evidence and working
        days elapsed. Jobcentres call this instead of phoning the BDC."""
        day = as_of or today()
        with read_session() as s:
            try:
                return _status_out(handlers.claim_status(s, claim_id, day))
            except handlers.NotFound as exc:
                raise _error(404, ["path", "claim_id"], str(exc), "not_found") from None

    @router.get(
        "/aact",
        response_model=AactOut,
        responses=_responses(422),
        summary="AACT per BDC for a month",
        tags=["queries"],
    )
    def aact(
        period: Annotated[
            str | None,
            Query(description="Calendar month YYYY-MM; default: the current month"),
        ] = None,
    ) -> AactOut:
        """Average actual clearance time per BDC for a month (spec §5), from every
        `claim-cleared` on the bus: the mean working days from received_date
        (exclusive) to the cleared date (inclusive) over the claims cleared that month."""
        wanted = period if period is not None else today().strftime("%Y-%m")
        try:
            first, last = parse_period(wanted)
        except ValueError:
            raise _error(
                422,
                ["query", "period"],
                f"period must be a calendar month YYYY-MM (e.g. 2007-08), got {wanted!r}",
                "invalid",
            ) from None
        with read_session() as s:
            rows = handlers.aact(s, first, last)
        return AactOut(
            period=wanted,
            rows=[AactRowOut(bdc_id=r.bdc_id, claims=r.claims, aact=r.aact) for r in rows],
        )

    async def _publish() -> None:
        # Best effort now; the relay retries until Redis takes it.
        assert runtime.relay is not None
        try:
            await runtime.relay.flush()
        except Exception:
            runtime.relay.notify()

    app = build_app(
        runtime,
        title="IDT Benefit Delivery Centre",
        description="Claim receipt, evidence and clearance; claim status for Jobcentres; "
        "AACT per BDC and month.",
        routers=[router],
    )
    return app
