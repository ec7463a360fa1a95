"""BDC handlers: the bus appliers (run inside the batch transaction), the intake
commands and the queries (run inside a request's session). Each takes its
dependencies explicitly; the rules come from `domain`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from idt_contract import Envelope, make_event, stream_for
from idt_contract.events import (
    ClaimCleared,
    ClaimClearedData,
    ClaimRegistered,
    ClearanceOutcome,
    OfficeKind,
    OfficeRegistered,
)
from idt_domain.calendar import london_date, utc_key
from idt_runtime.consumer import Applier, Reject
from idt_runtime.latest import all_of as _all
from idt_runtime.latest import upsert_latest_many
from idt_runtime.outbox import add_to_outbox

from . import domain
from .domain import EvidenceKind, Stage
from .models import TABLES, BdcClearance, BdcEvidence, BdcIntake, BdcOffice, BdcRegisteredClaim

# ---------------------------------------------------------------- bus appliers


def apply_offices(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, BdcOffice, (
        (ev.data.office_id, ev, {"kind": ev.data.kind.value, "name": ev.data.name})
        for ev in _all(events, OfficeRegistered)
    ))  # fmt: skip


def apply_claims(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, BdcRegisteredClaim, (
        (ev.data.claim_id, ev, {
            "benefit": ev.data.benefit.value, "claim_start_date": ev.data.claim_start_date,
            "contact_centre_id": ev.data.contact_centre_id,
            "registered_date": london_date(ev.time),
        })
        for ev in _all(events, ClaimRegistered)
    ))  # fmt: skip


def apply_clearances(session: Session, events: Sequence[Envelope]) -> None:
    """Every `claim-cleared`, this service's own and any other system's: the latest
    in event time per claim is the one in force (and the one AACT counts).

    A clearance dated before its own received_date is impossible (the contract
    already refuses it); the guard raises `Reject`, a dead letter at once."""
    rows = []
    for ev in _all(events, ClaimCleared):
        d = ev.data
        cleared_date = london_date(ev.time)
        try:
            domain.check_clearance_dates(d.received_date, cleared_date)
        except domain.Refused as exc:
            # The contract already refuses these; kept as a guard, never retried.
            raise Reject(f"claim-cleared {ev.id!r} for {d.claim_id!r}: {exc}") from None
        rows.append((d.claim_id, ev, {
            "bdc_id": d.bdc_id, "outcome": d.outcome.value, "received_date": d.received_date,
            "cleared_date": cleared_date,
        }))  # fmt: skip
    upsert_latest_many(session, BdcClearance, rows)


APPLIERS: dict[str, Applier] = {
    stream_for("office-registered"): apply_offices,
    stream_for("claim-registered"): apply_claims,
    stream_for("claim-cleared"): apply_clearances,
}

#: Streams this service publishes to (through its outbox).
PUBLISHES = (stream_for("claim-cleared"),)

# ---------------------------------------------------------------- errors


class NotFound(LookupError):
    """Unknown claim (or evidence request); `loc` says which part of the request."""

    def __init__(self, message: str, loc: tuple[str, str] = ("path", "claim_id")) -> None:
        super().__init__(message)
        self.loc = loc


class Conflict(ValueError):
    """The claim's state forbids the command; `loc` says which part of the request."""

    def __init__(self, message: str, loc: tuple[str, str] = ("path", "claim_id")) -> None:
        super().__init__(message)
        self.loc = loc


class Invalid(ValueError):
    """Bad input; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- loading state


def load_offices(session: Session) -> dict[str, tuple[OfficeKind, str]]:
    return {o.office_id: (OfficeKind(o.kind), o.name) for o in session.exec(select(BdcOffice))}


def load_evidence(session: Session, claim_id: str) -> list[domain.Evidence]:
    rows = session.exec(
        select(BdcEvidence)
        .where(BdcEvidence.claim_id == claim_id)
        .order_by(
            col(BdcEvidence.requested_date), col(BdcEvidence.kind), col(BdcEvidence.request_no)
        )
    ).all()
    return [domain.Evidence(EvidenceKind(e.kind), e.requested_date, e.received_date) for e in rows]


def _bus_clearance(row: BdcClearance | None) -> domain.Clearance | None:
    if row is None:
        return None
    return domain.Clearance(
        bdc_id=row.bdc_id,
        outcome=ClearanceOutcome(row.outcome),
        received_date=row.received_date,
        cleared_date=row.cleared_date,
        time_key=row.time_key,
        event_id=row.event_id,
    )


def _local_clearance(intake: BdcIntake | None) -> domain.Clearance | None:
    if (
        intake is None
        or intake.cleared_outcome is None
        or intake.cleared_date is None
        or intake.cleared_time_key is None
        or intake.cleared_event_id is None
    ):
        return None
    return domain.Clearance(
        bdc_id=intake.bdc_id,
        outcome=ClearanceOutcome(intake.cleared_outcome),
        received_date=intake.received_date,
        cleared_date=intake.cleared_date,
        time_key=intake.cleared_time_key,
        event_id=intake.cleared_event_id,
    )


def clearance_in_force(session: Session, claim_id: str) -> domain.Clearance | None:
    """The bus's clearance or this intake's own (not yet back from the bus),
    whichever is later in event time."""
    return domain.latest_clearance(
        _bus_clearance(session.get(BdcClearance, claim_id)),
        _local_clearance(session.get(BdcIntake, claim_id)),
    )


def _describe(c: domain.Clearance) -> str:
    return f"{c.outcome.value} on {c.cleared_date.isoformat()} by {c.bdc_id}"


def _lock(session: Session, intake: BdcIntake) -> None:
    """Bump the claim's version if nobody else did since we read it; a concurrent
    command on the same claim makes this a Conflict instead of a double write."""
    result = session.execute(
        update(BdcIntake)
        .where(col(BdcIntake.claim_id) == intake.claim_id, col(BdcIntake.version) == intake.version)
        .values(version=intake.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"claim {intake.claim_id!r} was changed by another request; try again")
    session.refresh(intake)


# ---------------------------------------------------------------- intake commands


@dataclass(frozen=True)
class ReceiveClaim:
    claim_id: str
    bdc_id: str
    received_date: date
    #: London date of the moment the receipt is recorded (occurred_at or now).
    recorded_on: date


def receive_claim(session: Session, cmd: ReceiveClaim) -> bool:
    """Record that a BDC received the claim; False when the very same receipt was
    already recorded (an idempotent repeat), True when it is new."""
    try:
        domain.check_bdc(cmd.bdc_id, load_offices(session))
    except domain.Refused as exc:
        raise Invalid("bdc_id", str(exc)) from None
    intake = session.get(BdcIntake, cmd.claim_id)
    if intake is not None:
        if intake.bdc_id == cmd.bdc_id and intake.received_date == cmd.received_date:
            return False
        if intake.bdc_id != cmd.bdc_id:
            raise Conflict(f"claim {cmd.claim_id!r} was already received by {intake.bdc_id}")
        raise Conflict(
            f"claim {cmd.claim_id!r} was already received on {intake.received_date.isoformat()}"
        )
    cleared = clearance_in_force(session, cmd.claim_id)
    if cleared is not None:
        raise Conflict(f"claim {cmd.claim_id!r} is already cleared ({_describe(cleared)})")
    try:
        domain.check_not_after(
            "received_date", cmd.received_date, cmd.recorded_on, "the date it is recorded"
        )
        registered = session.get(BdcRegisteredClaim, cmd.claim_id)
        if registered is not None:
            domain.check_not_before(
                "received_date",
                cmd.received_date,
                registered.registered_date,
                "the date the claim was registered",
            )
    except domain.Refused as exc:
        raise Invalid("received_date", str(exc)) from None
    session.add(
        BdcIntake(claim_id=cmd.claim_id, bdc_id=cmd.bdc_id, received_date=cmd.received_date)
    )
    session.flush()
    return True


def _received_uncleared(session: Session, claim_id: str, action: str) -> BdcIntake:
    intake = session.get(BdcIntake, claim_id)
    if intake is None:
        raise NotFound(f"claim {claim_id!r} has not been received by a BDC through this service")
    cleared = clearance_in_force(session, claim_id)
    if cleared is not None:
        raise Conflict(f"claim {claim_id!r} is already cleared ({_describe(cleared)}); {action}")
    return intake


@dataclass(frozen=True)
class RequestEvidence:
    claim_id: str
    kind: EvidenceKind
    requested_date: date
    recorded_on: date


def request_evidence(session: Session, cmd: RequestEvidence) -> None:
    intake = _received_uncleared(session, cmd.claim_id, "no evidence can be requested")
    try:
        domain.check_not_before(
            "requested_date", cmd.requested_date, intake.received_date, "the claim's received_date"
        )
        domain.check_not_after(
            "requested_date", cmd.requested_date, cmd.recorded_on, "the date it is recorded"
        )
    except domain.Refused as exc:
        raise Invalid("requested_date", str(exc)) from None
    if cmd.kind in domain.outstanding_evidence(load_evidence(session, cmd.claim_id)):
        raise Conflict(
            f"{cmd.kind.value} is already outstanding for claim {cmd.claim_id!r}; "
            "record it as received before asking again",
            ("body", "kind"),
        )
    _lock(session, intake)
    previous = session.exec(
        select(func.max(BdcEvidence.request_no)).where(
            BdcEvidence.claim_id == cmd.claim_id, BdcEvidence.kind == cmd.kind.value
        )
    ).one()
    session.add(
        BdcEvidence(
            claim_id=cmd.claim_id,
            kind=cmd.kind.value,
            request_no=(previous or 0) + 1,
            requested_date=cmd.requested_date,
        )
    )
    session.flush()


@dataclass(frozen=True)
class ReceiveEvidence:
    claim_id: str
    kind: EvidenceKind
    received_date: date
    recorded_on: date


def receive_evidence(session: Session, cmd: ReceiveEvidence) -> None:
    intake = _received_uncleared(session, cmd.claim_id, "its evidence is closed")
    request = session.exec(
        select(BdcEvidence).where(
            BdcEvidence.claim_id == cmd.claim_id,
            BdcEvidence.kind == cmd.kind.value,
            col(BdcEvidence.received_date).is_(None),
        )
    ).first()
    if request is None:
        raise NotFound(
            f"no {cmd.kind.value} evidence is outstanding for claim {cmd.claim_id!r}",
            ("path", "kind"),
        )
    try:
        domain.check_not_before(
            "received_date", cmd.received_date, request.requested_date, "the date it was requested"
        )
        domain.check_not_after(
            "received_date", cmd.received_date, cmd.recorded_on, "the date it is recorded"
        )
    except domain.Refused as exc:
        raise Invalid("received_date", str(exc)) from None
    _lock(session, intake)
    request.received_date = cmd.received_date
    session.add(request)
    session.flush()


@dataclass(frozen=True)
class ClearClaim:
    claim_id: str
    outcome: ClearanceOutcome
    occurred_at: datetime


def clear_claim(session: Session, cmd: ClearClaim) -> Envelope:
    """Decide the claim and queue `claim-cleared` in the same transaction."""
    intake = _received_uncleared(session, cmd.claim_id, "it cannot be cleared again")
    outstanding = domain.outstanding_evidence(load_evidence(session, cmd.claim_id))
    try:
        domain.check_eligible_allowed(cmd.outcome, outstanding)
    except domain.Refused as exc:
        raise Conflict(str(exc), ("body", "outcome")) from None
    cleared_date = london_date(cmd.occurred_at)
    try:
        domain.check_clearance_dates(intake.received_date, cleared_date)
    except domain.Refused as exc:
        raise Invalid("occurred_at", str(exc)) from None
    _lock(session, intake)
    event = make_event(
        ClaimCleared,
        source=f"/offices/{intake.bdc_id}",
        time=cmd.occurred_at,
        data=ClaimClearedData(
            claim_id=cmd.claim_id,
            bdc_id=intake.bdc_id,
            outcome=cmd.outcome,
            received_date=intake.received_date,
        ),
    )
    intake.cleared_outcome = cmd.outcome.value
    intake.cleared_date = cleared_date
    intake.cleared_time_key = utc_key(cmd.occurred_at)
    intake.cleared_event_id = event.id
    session.add(intake)
    session.flush()
    add_to_outbox(session, TABLES, [event])
    return event


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class ClaimStatus:
    claim_id: str
    bdc_id: str | None
    stage: Stage
    registered_date: date | None
    received_date: date | None
    cleared_date: date | None
    outstanding_evidence: list[EvidenceKind]
    evidence: list[domain.Evidence]
    working_days_elapsed: int | None
    as_of: date


def claim_status(session: Session, claim_id: str, as_of: date) -> ClaimStatus:
    """What a Jobcentre would otherwise phone the BDC to ask."""
    registered = session.get(BdcRegisteredClaim, claim_id)
    intake = session.get(BdcIntake, claim_id)
    cleared = clearance_in_force(session, claim_id)
    evidence = load_evidence(session, claim_id) if intake is not None else []
    # Once decided, nothing is outstanding any more (the evidence list keeps the history).
    outstanding = domain.outstanding_evidence(evidence) if cleared is None else []
    stage = domain.derive_stage(
        registered=registered is not None,
        received=intake is not None,
        outstanding=outstanding,
        clearance=cleared.outcome if cleared else None,
    )
    if stage is None:
        raise NotFound(
            f"claim {claim_id!r} is not known to the BDC service: it has not been "
            "registered, received or cleared"
        )
    if cleared is not None:
        bdc_id: str | None = cleared.bdc_id
        received_date: date | None = cleared.received_date
    elif intake is not None:
        bdc_id, received_date = intake.bdc_id, intake.received_date
    else:
        bdc_id, received_date = None, None
    cleared_date = cleared.cleared_date if cleared else None
    return ClaimStatus(
        claim_id=claim_id,
        bdc_id=bdc_id,
        stage=stage,
        registered_date=registered.registered_date if registered else None,
        received_date=received_date,
        cleared_date=cleared_date,
        outstanding_evidence=outstanding,
        evidence=evidence,
        working_days_elapsed=(
            domain.working_days_elapsed(received_date, cleared_date, as_of)
            if received_date is not None
            else None
        ),
        as_of=as_of,
    )


def aact(session: Session, first: date, last: date) -> list[domain.AactRow]:
    """AACT per BDC for claims whose clearance in force (from the bus) falls in
    [first, last]."""
    rows = session.exec(
        select(BdcClearance).where(
            col(BdcClearance.cleared_date) >= first, col(BdcClearance.cleared_date) <= last
        )
    ).all()
    return domain.aact_rows(
        (domain.ClearedClaim(r.claim_id, r.bdc_id, r.received_date, r.cleared_date) for r in rows),
        first,
        last,
    )
