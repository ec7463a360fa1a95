"""Contact Centre handlers: the bus appliers (run inside the batch transaction)
and the intake commands (run inside a request transaction). Each takes its
dependencies explicitly; the rules come from `domain`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlmodel import Session, select

from idt_contract import Envelope, make_event, stream_for
from idt_contract.events import (
    Benefit,
    ClaimCleared,
    ClaimRegistered,
    ClaimRegisteredData,
    MarkerName,
    MarkerSet,
    MarkerSetData,
    OfficeKind,
    OfficeRegistered,
)
from idt_domain.calendar import london_date
from idt_runtime.latest import all_of as _all
from idt_runtime.latest import upsert_latest_many
from idt_runtime.outbox import add_to_outbox

from . import domain
from .models import TABLES, CcClaim, CcClearance, CcIntake, CcMarker, CcOffice

# ---------------------------------------------------------------- bus appliers


def apply_offices(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, CcOffice, (
        (ev.data.office_id, ev, {"kind": ev.data.kind.value, "name": ev.data.name,
                                 "district": ev.data.district, "region": ev.data.region})
        for ev in _all(events, OfficeRegistered)
    ))  # fmt: skip


def apply_claims(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, CcClaim, (
        (ev.data.claim_id, ev, {
            "customer_ref": ev.data.customer_ref, "benefit": ev.data.benefit.value,
            "claim_start_date": ev.data.claim_start_date,
            "contact_centre_id": ev.data.contact_centre_id,
            "registered_date": london_date(ev.time),
        })
        for ev in _all(events, ClaimRegistered)
    ))  # fmt: skip


def apply_markers(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, CcMarker, (
        ((ev.data.claim_id, ev.data.marker.value), ev, {"value": ev.data.value})
        for ev in _all(events, MarkerSet)
    ))  # fmt: skip


def apply_clearances(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, CcClearance, (
        (ev.data.claim_id, ev, {"outcome": ev.data.outcome.value, "bdc_id": ev.data.bdc_id,
                                "cleared_date": london_date(ev.time)})
        for ev in _all(events, ClaimCleared)
    ))  # fmt: skip


APPLIERS = {
    stream_for("office-registered"): apply_offices,
    stream_for("claim-registered"): apply_claims,
    stream_for("marker-set"): apply_markers,
    stream_for("claim-cleared"): apply_clearances,
}

#: Streams this service publishes to (through its outbox).
PUBLISHES = (stream_for("claim-registered"), stream_for("marker-set"))

# ---------------------------------------------------------------- intake commands


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


class Invalid(ValueError):
    """Bad input; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def load_offices(session: Session) -> dict[str, domain.Office]:
    return {
        o.office_id: domain.Office(o.office_id, OfficeKind(o.kind), o.name, o.district, o.region)
        for o in session.exec(select(CcOffice)).all()
    }


@dataclass(frozen=True)
class RegisterClaim:
    claim_id: str
    nino: str
    benefit: Benefit
    claim_start_date: date
    contact_centre_id: str
    jobcentre_id: str
    primary_benefit: str | None
    occurred_at: datetime


def register_claim(session: Session, cmd: RegisterClaim, key: bytes) -> list[Envelope]:
    """Validate, record the intake and queue `claim-registered` + both markers."""
    try:
        ref = domain.customer_ref(cmd.nino, key)
    except domain.InvalidNino as exc:
        raise Invalid("nino", str(exc)) from None
    offices = load_offices(session)
    cc = offices.get(cmd.contact_centre_id)
    if cc is None or cc.kind is not OfficeKind.CONTACT_CENTRE:
        raise Invalid(
            "contact_centre_id",
            f"{cmd.contact_centre_id!r} is not a registered Contact Centre",
        )
    try:
        domain.check_jobcentre_marker(cmd.jobcentre_id, offices)
    except domain.MarkerRefused as exc:
        raise Invalid("jobcentre_id", str(exc)) from None
    primary = cmd.primary_benefit or domain.EXPECTED_PRIMARY[cmd.benefit].value
    try:
        domain.check_primary_marker(primary, cmd.benefit)
    except domain.MarkerRefused as exc:
        raise Invalid("primary_benefit", str(exc)) from None
    if session.get(CcIntake, cmd.claim_id) or session.get(CcClaim, cmd.claim_id):
        raise Conflict(f"claim {cmd.claim_id!r} is already registered")

    session.add(
        CcIntake(
            claim_id=cmd.claim_id,
            customer_ref=ref,
            benefit=cmd.benefit.value,
            claim_start_date=cmd.claim_start_date,
            contact_centre_id=cmd.contact_centre_id,
        )
    )
    source = f"/offices/{cmd.contact_centre_id}"
    events: list[Envelope] = [
        make_event(
            ClaimRegistered,
            source=source,
            time=cmd.occurred_at,
            data=ClaimRegisteredData(
                claim_id=cmd.claim_id,
                customer_ref=ref,
                benefit=cmd.benefit,
                claim_start_date=cmd.claim_start_date,
                contact_centre_id=cmd.contact_centre_id,
            ),
        ),
        make_event(
            MarkerSet,
            source=source,
            time=cmd.occurred_at,
            data=MarkerSetData(
                claim_id=cmd.claim_id, marker=MarkerName.PRIMARY_BENEFIT, value=primary
            ),
        ),
        make_event(
            MarkerSet,
            source=source,
            time=cmd.occurred_at,
            data=MarkerSetData(
                claim_id=cmd.claim_id, marker=MarkerName.JOBCENTRE, value=cmd.jobcentre_id
            ),
        ),
    ]
    add_to_outbox(session, TABLES, events)
    return events


@dataclass(frozen=True)
class SetMarker:
    claim_id: str
    marker: MarkerName
    value: str
    source_office: str | None
    occurred_at: datetime


def set_marker(session: Session, cmd: SetMarker) -> Envelope | None:
    """Validate and queue a `marker-set`; None when the value is already in force."""
    intake = session.get(CcIntake, cmd.claim_id)
    claim = session.get(CcClaim, cmd.claim_id)
    if intake is None and claim is None:
        raise NotFound(f"claim {cmd.claim_id!r} is not known to the Contact Centre")
    benefit = Benefit(intake.benefit if intake else claim.benefit)  # type: ignore[union-attr]
    offices = load_offices(session)
    try:
        if cmd.marker is MarkerName.JOBCENTRE:
            domain.check_jobcentre_marker(cmd.value, offices)
        else:
            domain.check_primary_marker(cmd.value, benefit)
    except domain.MarkerRefused as exc:
        raise Invalid("value", str(exc)) from None
    if cmd.source_office is not None:
        src = offices.get(cmd.source_office)
        if src is None:
            raise Invalid("source_office", f"{cmd.source_office!r} is not a registered office")
    current = session.get(CcMarker, (cmd.claim_id, cmd.marker.value))
    if current is not None and current.value == cmd.value:
        return None
    origin = cmd.source_office or (intake.contact_centre_id if intake else claim.contact_centre_id)  # type: ignore[union-attr]
    event = make_event(
        MarkerSet,
        source=f"/offices/{origin}",
        time=cmd.occurred_at,
        data=MarkerSetData(claim_id=cmd.claim_id, marker=cmd.marker, value=cmd.value),
    )
    add_to_outbox(session, TABLES, [event])
    return event


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class ReportRow:
    claim_id: str
    benefit: str
    contact_centre_id: str
    claim_start_date: date
    registered_date: date
    age_days: int
    eligibility_confirmed: bool
    clearance: str | None
    jobcentre_marker: str | None
    primary_benefit_marker: str | None
    problems: list[str]


def jp_process_report(
    session: Session,
    as_of: date,
    *,
    contact_centre_id: str | None = None,
    eligible_only: bool = False,
) -> list[ReportRow]:
    offices = load_offices(session)
    markers: dict[tuple[str, str], str] = {
        (m.claim_id, m.marker): m.value for m in session.exec(select(CcMarker)).all()
    }
    clearances = {c.claim_id: c.outcome for c in session.exec(select(CcClearance)).all()}
    q = select(CcClaim)
    if contact_centre_id:
        q = q.where(CcClaim.contact_centre_id == contact_centre_id)
    rows: list[ReportRow] = []
    for claim in session.exec(q).all():
        jc = markers.get((claim.claim_id, MarkerName.JOBCENTRE.value))
        pb = markers.get((claim.claim_id, MarkerName.PRIMARY_BENEFIT.value))
        problems = domain.marker_problems(Benefit(claim.benefit), jc, pb, offices)
        if not problems:
            continue
        outcome = clearances.get(claim.claim_id)
        eligible = outcome == "ELIGIBLE"
        if eligible_only and not eligible:
            continue
        rows.append(
            ReportRow(
                claim_id=claim.claim_id,
                benefit=claim.benefit,
                contact_centre_id=claim.contact_centre_id,
                claim_start_date=claim.claim_start_date,
                registered_date=claim.registered_date,
                age_days=domain.age_days(claim.registered_date, as_of),
                eligibility_confirmed=eligible,
                clearance=outcome,
                jobcentre_marker=jc,
                primary_benefit_marker=pb,
                problems=problems,
            )
        )
    # Eligible claims first (their interview windows are running), oldest first.
    rows.sort(key=lambda r: (not r.eligibility_confirmed, r.registered_date, r.claim_id))
    return rows
