"""Benefit Delivery Centre rules as pure functions: claim stages, outstanding
evidence, working days elapsed, the checks the intake applies, and AACT (spec §5).

No I/O, no clock, no framework imports: every date is passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from idt_contract.events import ClearanceOutcome, OfficeKind
from idt_domain.calendar import working_days_between
from idt_domain.ordering import TimeKey, supersedes

#: Spec §5: the AACT target, in working days.
AACT_TARGET_WORKING_DAYS = 18


class EvidenceKind(StrEnum):
    """What a BDC may ask for before it can decide a claim."""

    MEDICAL_EVIDENCE = "MEDICAL_EVIDENCE"
    SSP1 = "SSP1"
    EMPLOYMENT_DETAILS = "EMPLOYMENT_DETAILS"
    NI_ACCOUNT_PROBLEM = "NI_ACCOUNT_PROBLEM"


class Stage(StrEnum):
    REGISTERED = "REGISTERED"
    RECEIVED = "RECEIVED"
    AWAITING_EVIDENCE = "AWAITING_EVIDENCE"
    CLEARED_ELIGIBLE = "CLEARED_ELIGIBLE"
    CLEARED_DISALLOWED = "CLEARED_DISALLOWED"


class Refused(ValueError):
    """An input the BDC must not accept; the message says why and what to fix."""


# ---------------------------------------------------------------- ordering

__all__ = ["TimeKey", "supersedes"]  # re-exported: the ordering rule the appliers follow


@dataclass(frozen=True)
class Clearance:
    """One `claim-cleared`, reduced to what the BDC rules need."""

    bdc_id: str
    outcome: ClearanceOutcome
    received_date: date
    cleared_date: date
    time_key: str
    event_id: str

    @property
    def key(self) -> TimeKey:
        return (self.time_key, self.event_id)


def latest_clearance(*candidates: Clearance | None) -> Clearance | None:
    """The clearance in force: the latest in event time (ties broken by event id)."""
    best: Clearance | None = None
    for c in candidates:
        if c is not None and (best is None or supersedes(c.key, best.key)):
            best = c
    return best


def check_clearance_dates(received_date: date, cleared_date: date) -> None:
    """A claim cannot be cleared before the BDC received it."""
    if cleared_date < received_date:
        raise Refused(
            f"the cleared date {cleared_date.isoformat()} is before the claim's "
            f"received_date {received_date.isoformat()}"
        )


# ---------------------------------------------------------------- evidence and stage


@dataclass(frozen=True)
class Evidence:
    kind: EvidenceKind
    requested_date: date
    received_date: date | None


def outstanding_evidence(evidence: Sequence[Evidence]) -> list[EvidenceKind]:
    """Kinds requested and not yet received, in the order they were first requested."""
    seen: list[EvidenceKind] = []
    for item in evidence:
        if item.received_date is None and item.kind not in seen:
            seen.append(item.kind)
    return seen


def derive_stage(
    *,
    registered: bool,
    received: bool,
    outstanding: Sequence[EvidenceKind],
    clearance: ClearanceOutcome | None,
) -> Stage | None:
    """Where a claim stands at the BDC; None when nothing at all is known of it.

    A clearance decides the stage whatever else is known (a claim cleared by
    another system never passed through this intake); then receipt, with any
    evidence still outstanding; then registration on the bus."""
    if clearance is ClearanceOutcome.ELIGIBLE:
        return Stage.CLEARED_ELIGIBLE
    if clearance is ClearanceOutcome.DISALLOWED:
        return Stage.CLEARED_DISALLOWED
    if received:
        return Stage.AWAITING_EVIDENCE if outstanding else Stage.RECEIVED
    if registered:
        return Stage.REGISTERED
    return None


def working_days_elapsed(received_date: date, cleared_date: date | None, as_of: date) -> int:
    """Working days from `received_date` (exclusive) to the cleared date (inclusive)
    when cleared, else to `as_of` (inclusive); 0 when that end is not later."""
    end = cleared_date if cleared_date is not None else as_of
    return working_days_between(received_date, end)


# ---------------------------------------------------------------- intake checks


def check_bdc(office_id: str, offices: Mapping[str, tuple[OfficeKind, str]]) -> None:
    """`office_id` must be a registered office of kind BDC; `offices` maps an
    office id to its (kind, name) as registered on the bus."""
    office = offices.get(office_id)
    if office is None:
        raise Refused(f"bdc_id {office_id!r} names no registered office")
    kind, name = office
    if kind is not OfficeKind.BDC:
        raise Refused(
            f"bdc_id {office_id!r} is a {kind.value} ({name}), not a Benefit Delivery Centre"
        )


def check_not_after(field: str, day: date, limit: date, limit_name: str) -> None:
    if day > limit:
        raise Refused(f"{field} {day.isoformat()} is after {limit_name} {limit.isoformat()}")


def check_not_before(field: str, day: date, limit: date, limit_name: str) -> None:
    if day < limit:
        raise Refused(f"{field} {day.isoformat()} is before {limit_name} {limit.isoformat()}")


def check_not_future(field: str, moment: datetime, now: datetime, tolerance: timedelta) -> None:
    """A command cannot say it happened later than now (beyond a little clock skew)."""
    if moment > now + tolerance:
        raise Refused(
            f"{field} {moment.isoformat()} is in the future (the service's time is "
            f"{now.isoformat()})"
        )


def check_eligible_allowed(outcome: ClearanceOutcome, outstanding: Sequence[EvidenceKind]) -> None:
    """A claim is not found ELIGIBLE while evidence it asked for is outstanding;
    DISALLOWED stays possible (evidence that never comes is a reason to disallow)."""
    if outcome is ClearanceOutcome.ELIGIBLE and outstanding:
        kinds = ", ".join(k.value for k in outstanding)
        raise Refused(
            f"cannot clear as ELIGIBLE while evidence is outstanding: {kinds}; "
            "record it as received first (or clear as DISALLOWED)"
        )


# ---------------------------------------------------------------- AACT


@dataclass(frozen=True)
class ClearedClaim:
    """A claim's clearance in force, as AACT counts it."""

    claim_id: str
    bdc_id: str
    received_date: date
    cleared_date: date


@dataclass(frozen=True)
class AactRow:
    bdc_id: str
    claims: int
    aact: float


def aact_rows(cleared: Iterable[ClearedClaim], first: date, last: date) -> list[AactRow]:
    """AACT per BDC over the claims cleared in [first, last] (spec §5): the mean of
    the working days from received_date (exclusive) to the cleared date
    (inclusive), rounded to 2 decimals; rows sorted by bdc_id.

    Each claim is counted once: pass only the clearance in force per claim."""
    days: dict[str, list[int]] = defaultdict(list)
    counted: set[str] = set()
    for c in cleared:
        if not first <= c.cleared_date <= last:
            continue
        if c.claim_id in counted:
            raise ValueError(f"claim {c.claim_id!r} passed twice; one clearance per claim")
        counted.add(c.claim_id)
        days[c.bdc_id].append(working_days_between(c.received_date, c.cleared_date))
    return [
        AactRow(bdc_id=bdc, claims=len(v), aact=round(sum(v) / len(v), 2))
        for bdc, v in sorted(days.items())
    ]
