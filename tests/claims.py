"""A small builder of claim histories as real CloudEvents (used by scheduler tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from idt_contract.events import (
    ClaimCleared,
    ClaimClearedData,
    ClaimClosed,
    ClaimClosedData,
    ClaimRegistered,
    ClaimRegisteredData,
    Envelope,
    InterviewBooked,
    InterviewBookedData,
    InterviewConducted,
    InterviewConductedData,
    InterviewDeferred,
    InterviewDeferredData,
    InterviewFailedToAttend,
    InterviewFailedToAttendData,
    InterviewWaived,
    InterviewWaivedData,
    LmiDoubtRaised,
    LmiDoubtRaisedData,
    LmiFollowUpConducted,
    LmiFollowUpConductedData,
    MarkerSet,
    MarkerSetData,
    make_event,
)


def mk(cls: type[Any], **kw: Any) -> Any:
    """Plain values (strings for enums) validated leniently; the wire stays strict."""
    return cls.model_validate(kw, strict=False)


def d(s: str) -> date:
    return date.fromisoformat(s)


def at(day: str, hour: int = 10) -> datetime:
    x = d(day)
    return datetime(x.year, x.month, x.day, hour, tzinfo=UTC)


class Claim:
    """Builds the events of one claim; `.events` in the order they were added."""

    def __init__(
        self,
        claim_id: str = "C1",
        benefit: str = "IB",
        start: str = "2007-01-01",
        registered: str | None = None,
        jobcentre: str | None = "JC0101",
    ) -> None:
        self.claim_id = claim_id
        self.events: list[Envelope] = []
        self.n = 0
        reg_day = registered or start
        self._add(
            ClaimRegistered,
            reg_day,
            mk(
                ClaimRegisteredData,
                claim_id=claim_id,
                customer_ref="cr_test000000000000",
                benefit=benefit,  # type: ignore[arg-type]
                claim_start_date=d(start),
                contact_centre_id="CC01",
            ),
        )
        primary = {"IB": "INCAPACITATED_DISABLED", "IS_LP": "LONE_PARENT", "JSA": "JOBSEEKER"}
        self.marker("PRIMARY_BENEFIT", primary[benefit], reg_day)
        if jobcentre:
            self.marker("JOBCENTRE", jobcentre, reg_day)

    def _add(self, cls: type[Envelope], day: str, data: Any, hour: int = 10) -> Claim:
        self.n += 1
        self.events.append(
            make_event(
                cls,
                source="/test",
                time=at(day, hour),
                data=data,
                id=f"{self.claim_id}-{self.n:03d}",
            )
        )
        return self

    def marker(self, marker: str, value: str, day: str, hour: int = 10) -> Claim:
        return self._add(
            MarkerSet,
            day,
            mk(MarkerSetData, claim_id=self.claim_id, marker=marker, value=value),
            hour,
        )  # type: ignore[arg-type]

    def cleared(self, day: str, outcome: str = "ELIGIBLE", received: str | None = None) -> Claim:
        return self._add(
            ClaimCleared,
            day,
            mk(
                ClaimClearedData,
                claim_id=self.claim_id,
                bdc_id="BDC01",
                outcome=outcome,  # type: ignore[arg-type]
                received_date=d(received or day),
            ),
        )

    def conducted(self, day: str, iv: str = "IB_INITIAL_WFI", minutes: int = 50) -> Claim:
        return self._add(
            InterviewConducted,
            day,
            mk(
                InterviewConductedData,
                claim_id=self.claim_id,
                intervention=iv,
                jobcentre_id="JC0101",  # type: ignore[arg-type]
                mode="FACE_TO_FACE",
                duration_minutes=minutes,
            ),
        )  # type: ignore[arg-type]

    def waived(self, day: str, iv: str = "IB_INITIAL_WFI") -> Claim:
        return self._add(
            InterviewWaived,
            day,
            mk(InterviewWaivedData, claim_id=self.claim_id, intervention=iv, reason="health"),
        )  # type: ignore[arg-type]

    def deferred(self, day: str, iv: str = "IB_INITIAL_WFI", to: str = "2030-01-01") -> Claim:
        return self._add(
            InterviewDeferred,
            day,
            mk(
                InterviewDeferredData,
                claim_id=self.claim_id,
                intervention=iv,
                deferred_to=d(to),
                reason="care",
            ),
        )  # type: ignore[arg-type]

    def booked(self, day: str, slot: str, iv: str = "IB_INITIAL_WFI", jc: str = "JC0101") -> Claim:
        return self._add(
            InterviewBooked,
            day,
            mk(
                InterviewBookedData,
                claim_id=self.claim_id,
                intervention=iv,
                slot_date=d(slot),
                jobcentre_id=jc,
            ),
        )  # type: ignore[arg-type]

    def fta(self, slot: str, iv: str = "IB_INITIAL_WFI") -> Claim:
        return self._add(
            InterviewFailedToAttend,
            slot,
            mk(
                InterviewFailedToAttendData,
                claim_id=self.claim_id,
                intervention=iv,
                slot_date=d(slot),
            ),
            hour=17,
        )  # type: ignore[arg-type]

    def lmi(self, day: str, doubt: str = "D1", kind: str = "REFUSED_WORK") -> Claim:
        return self._add(
            LmiDoubtRaised,
            day,
            mk(LmiDoubtRaisedData, claim_id=self.claim_id, doubt_id=doubt, kind=kind),
        )  # type: ignore[arg-type]

    def lmi_done(self, day: str, doubt: str = "D1") -> Claim:
        return self._add(
            LmiFollowUpConducted,
            day,
            mk(LmiFollowUpConductedData, claim_id=self.claim_id, doubt_id=doubt, action="referred"),
        )

    def closed(self, day: str, reason: str = "JOB_OUTCOME") -> Claim:
        return self._add(
            ClaimClosed, day, mk(ClaimClosedData, claim_id=self.claim_id, reason=reason)
        )  # type: ignore[arg-type]
