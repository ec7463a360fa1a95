"""The Contact Centre service: HTTP intake for the FCO desktop, the bus consumer
that keeps a view of every claim's markers, and the live JP process report."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from idt_contract.events import Benefit, ClaimId, MarkerName, OfficeId
from idt_domain.calendar import london_date
from idt_runtime.api_types import Day, Moment, SafeClaimId
from idt_runtime.clock import Clock
from idt_runtime.service import ServiceRuntime, ServiceSpec, build_app
from idt_runtime.settings import VIEW_READ_LINGER_MS, RuntimeSettings

from . import handlers
from .models import PREFIX, TABLES

NAME = "contact_centre"
PLACEHOLDER_KEY = "development-only-customer-ref-key-change-me"


class ContactCentreSettings(RuntimeSettings):
    #: Key of the HMAC that turns an NI number into `customer_ref`. Must be a
    #: secret of at least 32 characters outside development and test.
    customer_ref_key: str = PLACEHOLDER_KEY

    @model_validator(mode="after")
    def _real_key_in_production(self) -> ContactCentreSettings:
        if self.environment != "development" and (
            self.customer_ref_key == PLACEHOLDER_KEY or len(self.customer_ref_key) < 32
        ):
            raise ValueError(
                "IDT_CUSTOMER_REF_KEY must be set to a secret of at least 32 characters "
                f"outside development (IDT_ENVIRONMENT={self.environment}; the development "
                "placeholder is refused)"
            )
        return self


SPEC = ServiceSpec.of(NAME, PREFIX, TABLES, __file__, read_linger_ms=VIEW_READ_LINGER_MS)

# ---------------------------------------------------------------- API models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimIn(_Strict):
    claim_id: SafeClaimId | None = Field(
        default=None, description="Optional; a new id is generated when absent."
    )
    nino: str = Field(
        max_length=20,
        description="National Insurance number; validated, turned into customer_ref, "
        "never stored or published.",
        examples=["JT123456C"],
    )
    benefit: Benefit
    claim_start_date: Day
    contact_centre_id: OfficeId
    jobcentre_id: OfficeId = Field(
        description="Mandatory JOBCENTRE marker: the Jobcentre that owns the customer."
    )
    primary_benefit: str | None = Field(
        default=None, description="PRIMARY_BENEFIT marker; defaults to the benefit's own."
    )
    occurred_at: Moment | None = Field(
        default=None, description="When the FCO registered the claim; default: now."
    )


class EventRef(BaseModel):
    id: str
    type: str


class ClaimOut(BaseModel):
    claim_id: str
    customer_ref: str
    events: list[EventRef]


class MarkerIn(_Strict):
    value: str = Field(min_length=1, max_length=32)
    source_office: OfficeId | None = Field(
        default=None, description="The office making the change; default: the claim's CC."
    )
    occurred_at: Moment | None = None


class MarkerOut(BaseModel):
    claim_id: str
    marker: MarkerName
    value: str
    changed: bool
    event_id: str | None


class ReportRowOut(BaseModel):
    claim_id: str
    benefit: str
    contact_centre_id: str
    claim_start_date: date
    registered_date: date
    age_days: int
    eligibility_confirmed: bool
    clearance: Literal["ELIGIBLE", "DISALLOWED"] | None
    jobcentre_marker: str | None
    primary_benefit_marker: str | None
    problems: list[str]


class ReportOut(BaseModel):
    as_of: date
    count: int
    rows: list[ReportRowOut]


class ErrorItemOut(BaseModel):
    loc: list[str | int] = Field(description='Where the problem is, e.g. ["body", "nino"].')
    msg: str = Field(description="What is wrong and what to fix, in words.")
    type: str


class ErrorOut(BaseModel):
    detail: list[ErrorItemOut]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {404: "Unknown claim", 409: "The claim id is already registered", 422: "Invalid input"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


def _error(status: int, field: str, message: str, *, loc: str = "body") -> HTTPException:
    return HTTPException(
        status_code=status, detail=[{"loc": [loc, field], "msg": message, "type": "invalid"}]
    )


def create_app(
    settings: ContactCentreSettings | None = None, clock: Clock | None = None
) -> FastAPI:
    settings = settings or ContactCentreSettings()
    key = settings.customer_ref_key.encode()
    runtime = ServiceRuntime(SPEC, settings, appliers=dict(handlers.APPLIERS), clock=clock)
    router = APIRouter(prefix="/v1")

    writing = runtime.writing
    read_session = runtime.read_session

    def now(value: datetime | None) -> datetime:
        return value or runtime.clock.now()

    @router.post(
        "/claims",
        status_code=201,
        response_model=ClaimOut,
        responses=_responses(409, 422),
        tags=["intake"],
    )
    async def register_claim(body: ClaimIn) -> ClaimOut:
        """Register a claim with both JP markers; publishes `claim-registered` and two
        `marker-set` events."""
        cmd = handlers.RegisterClaim(
            # Digits only: a generated reference can never look like an NI number.
            claim_id=body.claim_id or f"CLM-{uuid.uuid4().int % 10**12:012d}",
            nino=body.nino,
            benefit=body.benefit,
            claim_start_date=body.claim_start_date,
            contact_centre_id=body.contact_centre_id,
            jobcentre_id=body.jobcentre_id,
            primary_benefit=body.primary_benefit,
            occurred_at=now(body.occurred_at),
        )

        def write() -> list[Any]:
            with writing("an HTTP claim registration") as s:
                return handlers.register_claim(s, cmd, key)

        try:
            events = await asyncio.to_thread(write)
        except handlers.Invalid as exc:
            raise _error(422, exc.field, str(exc)) from None
        except handlers.Conflict as exc:
            raise _error(409, "claim_id", str(exc)) from None
        await _publish()
        ref = events[0].data.customer_ref  # type: ignore[attr-defined]
        return ClaimOut(
            claim_id=cmd.claim_id,
            customer_ref=ref,
            events=[EventRef(id=e.id, type=e.type) for e in events],
        )

    @router.put(
        "/claims/{claim_id}/markers/{marker}",
        response_model=MarkerOut,
        responses=_responses(404, 422),
        tags=["intake"],
    )
    async def set_marker(claim_id: ClaimId, marker: MarkerName, body: MarkerIn) -> MarkerOut:
        """Change one JP marker; publishes `marker-set` when the value changes."""
        cmd = handlers.SetMarker(
            claim_id=claim_id,
            marker=marker,
            value=body.value,
            source_office=body.source_office,
            occurred_at=now(body.occurred_at),
        )

        def write() -> Any:
            with writing("an HTTP marker change") as s:
                return handlers.set_marker(s, cmd)

        try:
            event = await asyncio.to_thread(write)
        except handlers.NotFound as exc:
            raise _error(404, "claim_id", str(exc), loc="path") from None
        except handlers.Invalid as exc:
            raise _error(422, exc.field, str(exc)) from None
        await _publish()
        return MarkerOut(
            claim_id=claim_id,
            marker=marker,
            value=body.value,
            changed=event is not None,
            event_id=event.id if event else None,
        )

    @router.get("/reports/jp-process", response_model=ReportOut, tags=["reports"])
    def jp_process_report(
        as_of: Annotated[Day | None, Query(description="Business date; default today")] = None,
        contact_centre_id: OfficeId | None = None,
        eligible_only: bool = False,
    ) -> ReportOut:
        """Claims whose JOBCENTRE marker names no registered Jobcentre, or whose
        PRIMARY_BENEFIT marker disagrees with the benefit, live from the bus."""
        day = as_of or london_date(runtime.clock.now())
        with read_session() as s:
            rows = handlers.jp_process_report(
                s, day, contact_centre_id=contact_centre_id, eligible_only=eligible_only
            )
        return ReportOut(
            as_of=day, count=len(rows), rows=[ReportRowOut(**r.__dict__) for r in rows]
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
        title="IDT Contact Centre",
        description="Claim intake with mandatory JP markers and the live JP process report.",
        routers=[router],
    )
    return app
