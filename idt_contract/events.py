"""The event contract (spec §6): CloudEvents 1.0 envelopes with strictly typed `data`.

Every event type is one envelope class whose `type` is a literal and whose `data`
is a model that forbids unknown fields. `Event` is the discriminated union of all
of them, so one `TypeAdapter` validates any event and picks the class by `type`.

Plain data only: no I/O, no clock. Producers pass `time` explicitly.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: A National Insurance number anywhere in a text (two prefix letters, six digits
#: in pairs or not, a suffix A-D), case-insensitive. Personal data: never on the bus.
NINO_IN_TEXT = re.compile(r"(?i)[A-Z]{2}[\s_.-]?\d{2}[\s_.-]?\d{2}[\s_.-]?\d{2}[\s_.-]?[A-D]")
#: The pseudonym format the Contact Centre issues: exempt from the search above,
#: since 40 hex digits can happen to contain such a run.
OUR_CUSTOMER_REF = re.compile(r"^cr_[0-9a-f]{40}$")

# Office ids appear inside stream keys (`idt:window-alerts:<office_id>`), so they
# are restricted to characters that are safe there and in ACL key patterns.
OfficeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
ClaimId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class OfficeKind(StrEnum):
    CONTACT_CENTRE = "CONTACT_CENTRE"
    BDC = "BDC"
    JOBCENTRE = "JOBCENTRE"


class Benefit(StrEnum):
    IB = "IB"
    IS_LP = "IS_LP"
    JSA = "JSA"


class MarkerName(StrEnum):
    PRIMARY_BENEFIT = "PRIMARY_BENEFIT"
    JOBCENTRE = "JOBCENTRE"


class PrimaryBenefit(StrEnum):
    INCAPACITATED_DISABLED = "INCAPACITATED_DISABLED"
    LONE_PARENT = "LONE_PARENT"
    JOBSEEKER = "JOBSEEKER"
    OTHER = "OTHER"


class ClearanceOutcome(StrEnum):
    ELIGIBLE = "ELIGIBLE"
    DISALLOWED = "DISALLOWED"


class Intervention(StrEnum):
    IB_INITIAL_WFI = "IB_INITIAL_WFI"
    LP_WFI_REVIEW = "LP_WFI_REVIEW"
    JSA_13_WEEK = "JSA_13_WEEK"
    JSA_26_WEEK = "JSA_26_WEEK"


class InterviewMode(StrEnum):
    FACE_TO_FACE = "FACE_TO_FACE"
    TELEPHONE = "TELEPHONE"
    HOME_VISIT = "HOME_VISIT"


class LmiKind(StrEnum):
    NOT_AVAILABLE = "NOT_AVAILABLE"
    REFUSED_WORK = "REFUSED_WORK"


class CloseReason(StrEnum):
    JOB_OUTCOME = "JOB_OUTCOME"
    OTHER = "OTHER"


class AlertKind(StrEnum):
    WINDOW_OPENED = "WINDOW_OPENED"
    WINDOW_CLOSING = "WINDOW_CLOSING"
    WINDOW_MISSED = "WINDOW_MISSED"
    BOOKING_OUTSIDE_WINDOW = "BOOKING_OUTSIDE_WINDOW"
    PRE_CALL_DUE = "PRE_CALL_DUE"
    REBOOK_NEEDED = "REBOOK_NEEDED"
    MARKER_UNALLOCATED = "MARKER_UNALLOCATED"


# --------------------------------------------------------------------------- data


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ClaimData(_Data):
    claim_id: ClaimId

    @model_validator(mode="after")
    def _claim_id_is_not_a_nino(self) -> _ClaimData:
        if NINO_IN_TEXT.search(self.claim_id):
            raise ValueError("claim_id contains a National Insurance number; use a claim reference")
        return self


class OfficeRegisteredData(_Data):
    office_id: OfficeId
    kind: OfficeKind
    name: Text
    district: Text
    region: Text


class ClaimRegisteredData(_ClaimData):
    customer_ref: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:-]{8,80}$")] = Field(
        description="Pseudonymous customer reference (keyed HMAC); never a raw NI number."
    )
    benefit: Benefit
    claim_start_date: date
    contact_centre_id: OfficeId

    @model_validator(mode="after")
    def _not_a_raw_nino(self) -> ClaimRegisteredData:
        ref = self.customer_ref
        whole = re.fullmatch(r"[A-Za-z]{2}\d{6}[A-Za-z]?", ref)
        if whole or (not OUR_CUSTOMER_REF.match(ref) and NINO_IN_TEXT.search(ref)):
            raise ValueError(
                "customer_ref contains a raw National Insurance number; publish the "
                "pseudonymous reference (keyed HMAC) instead"
            )
        return self


# Built once: validators run for every event every service decodes.
_PRIMARY_BENEFITS = frozenset(p.value for p in PrimaryBenefit)
_OFFICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_LONDON = ZoneInfo("Europe/London")


class MarkerSetData(_ClaimData):
    marker: MarkerName
    value: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        description="PRIMARY_BENEFIT: one of PrimaryBenefit; JOBCENTRE: an office id."
    )

    @model_validator(mode="after")
    def _value_fits_marker(self) -> MarkerSetData:
        if self.marker is MarkerName.PRIMARY_BENEFIT:
            if self.value not in _PRIMARY_BENEFITS:
                raise ValueError(
                    f"PRIMARY_BENEFIT marker value must be one of {sorted(_PRIMARY_BENEFITS)}, "
                    f"not {self.value!r}"
                )
        else:
            if not _OFFICE_ID.fullmatch(self.value):
                raise ValueError(f"JOBCENTRE marker value {self.value!r} is not an office id")
        return self


class ClaimClearedData(_ClaimData):
    bdc_id: OfficeId
    outcome: ClearanceOutcome
    received_date: date


class InterviewBookedData(_ClaimData):
    intervention: Intervention
    slot_date: date
    jobcentre_id: OfficeId


class InterviewConductedData(_ClaimData):
    intervention: Intervention
    jobcentre_id: OfficeId
    mode: InterviewMode
    duration_minutes: Annotated[int, Field(ge=1, le=600)]


class InterviewFailedToAttendData(_ClaimData):
    intervention: Intervention
    slot_date: date


class InterviewWaivedData(_ClaimData):
    intervention: Intervention
    reason: Text


class InterviewDeferredData(_ClaimData):
    intervention: Intervention
    deferred_to: date
    reason: Text


class LmiDoubtRaisedData(_ClaimData):
    doubt_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    kind: LmiKind


class LmiFollowUpConductedData(_ClaimData):
    doubt_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    action: Text


class ClaimClosedData(_ClaimData):
    reason: CloseReason


class ClockTickData(_Data):
    """No fields: business time is the event's `time`."""


class WindowDates(_Data):
    opens: date
    closes: date


class WindowAlertData(_ClaimData):
    kind: AlertKind
    intervention: Intervention | Literal["LMI_FOLLOW_UP"] | None = None
    opens: dict[Literal["policy", "measured"], date]
    closes: dict[Literal["policy", "measured"], date]
    office_id: OfficeId
    # Optional additions beyond spec §6 (contract v1.1; consumers may ignore them):
    window_id: Annotated[str, StringConstraints(max_length=160)] | None = None
    #: True when the policy and measured windows differ (report §6.5.3).
    bases_conflict: bool | None = None
    slot_date: date | None = None
    detail: Annotated[str, StringConstraints(max_length=500)] | None = None


class WindowOutcomeKind(StrEnum):
    MET = "MET"
    WAIVED = "WAIVED"
    DEFERRED = "DEFERRED"
    MISSED = "MISSED"
    CANCELLED = "CANCELLED"
    #: A revision saying an earlier final outcome no longer holds (a late event
    #: reopened the window); the window counts nowhere until it is final again.
    PENDING = "PENDING"
    #: The window no longer exists (eligibility overturned, LP chain re-dated).
    WITHDRAWN = "WITHDRAWN"


class Element(StrEnum):
    IB = "IB"
    LP = "LP"
    JSA = "JSA"
    LMI = "LMI"


class StageName(StrEnum):
    CONTACT_CENTRE = "CONTACT_CENTRE"
    BDC = "BDC"
    JOBCENTRE = "JOBCENTRE"


class WindowOutcomeData(_ClaimData):
    """One window's outcome on one basis; the highest revision is the current one."""

    window_id: Annotated[str, StringConstraints(min_length=1, max_length=160)]
    element: Element
    intervention: Intervention | Literal["LMI_FOLLOW_UP"]
    basis: Literal["policy", "measured"]
    outcome: WindowOutcomeKind
    outcome_date: date | None = None
    opens: date
    closes: date
    #: The JOBCENTRE marker in force at the outcome date, as set (it may name no
    #: registered Jobcentre: scoring attributes those to UNALLOCATED).
    jobcentre_id: Annotated[str, StringConstraints(max_length=32)] | None = None
    revision: Annotated[int, Field(ge=1)]
    stage: StageName | None = None
    stage_days: dict[StageName, Annotated[int, Field(ge=0)]] | None = None
    late_interview_date: date | None = None


# --------------------------------------------------------------------------- envelopes


class _Envelope(BaseModel):
    """CloudEvents 1.0, JSON structured mode. Unknown attributes are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Event types whose `data` carries a claim id (the `subject` must match it).
    claim_event: ClassVar[bool] = True

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    type: str
    time: AwareDatetime
    subject: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    datacontenttype: Literal["application/json"] | None = None

    @model_validator(mode="after")
    def _subject_is_claim(self) -> _Envelope:
        data = getattr(self, "data", None)
        claim_id = getattr(data, "claim_id", None)
        if self.subject is not None and claim_id is not None and self.subject != claim_id:
            raise ValueError(f"subject {self.subject!r} does not match data.claim_id {claim_id!r}")
        return self

    @classmethod
    def event_type(cls) -> str:
        field = cls.model_fields["type"]
        return str(field.default)


class OfficeRegistered(_Envelope):
    """An office joins or changes in the registry (Jobcentre, Contact Centre or BDC)."""

    claim_event: ClassVar[bool] = False
    type: Literal["office-registered"] = "office-registered"
    data: OfficeRegisteredData


class ClaimRegistered(_Envelope):
    """A Contact Centre registered a claim."""

    type: Literal["claim-registered"] = "claim-registered"
    data: ClaimRegisteredData


class MarkerSet(_Envelope):
    """A JP marker (primary benefit, or owning Jobcentre) was set or changed."""

    type: Literal["marker-set"] = "marker-set"
    data: MarkerSetData


class ClaimCleared(_Envelope):
    """A BDC decided eligibility; ELIGIBLE opens the claim's IDT windows."""

    type: Literal["claim-cleared"] = "claim-cleared"
    data: ClaimClearedData

    @model_validator(mode="after")
    def _not_cleared_before_received(self) -> ClaimCleared:
        try:
            cleared = self.time.astimezone(_LONDON).date()
        except OverflowError:
            raise ValueError("time has no date in London (outside years 1 to 9999)") from None
        if cleared < self.data.received_date:
            raise ValueError(
                f"cleared on {cleared} (London date of `time`), before its "
                f"received_date {self.data.received_date}"
            )
        return self


class InterviewBooked(_Envelope):
    """A Jobcentre booked an interview slot."""

    type: Literal["interview-booked"] = "interview-booked"
    data: InterviewBookedData


class InterviewConducted(_Envelope):
    """An interview took place (the event's time is when)."""

    type: Literal["interview-conducted"] = "interview-conducted"
    data: InterviewConductedData


class InterviewFailedToAttend(_Envelope):
    """The customer did not attend a booked slot."""

    type: Literal["interview-failed-to-attend"] = "interview-failed-to-attend"
    data: InterviewFailedToAttendData


class InterviewWaived(_Envelope):
    """An adviser waived the interview."""

    type: Literal["interview-waived"] = "interview-waived"
    data: InterviewWaivedData


class InterviewDeferred(_Envelope):
    """An adviser deferred the interview."""

    type: Literal["interview-deferred"] = "interview-deferred"
    data: InterviewDeferredData


class LmiDoubtRaised(_Envelope):
    """A labour-market doubt (not available, refused work) was raised."""

    type: Literal["lmi-doubt-raised"] = "lmi-doubt-raised"
    data: LmiDoubtRaisedData


class LmiFollowUpConducted(_Envelope):
    """The labour-market follow-up was done."""

    type: Literal["lmi-follow-up-conducted"] = "lmi-follow-up-conducted"
    data: LmiFollowUpConductedData


class ClaimClosed(_Envelope):
    """The claim ended (job outcome or other)."""

    type: Literal["claim-closed"] = "claim-closed"
    data: ClaimClosedData


class ClockTick(_Envelope):
    """Business time advanced to the event's time."""

    claim_event: ClassVar[bool] = False
    type: Literal["clock-tick"] = "clock-tick"
    data: ClockTickData | None = None


class WindowAlert(_Envelope):
    """An alert to one office about one IDT window."""

    type: Literal["window-alert"] = "window-alert"
    data: WindowAlertData


class WindowOutcome(_Envelope):
    """A window's outcome on one basis, or a revision of it (published by the scheduler)."""

    type: Literal["window-outcome"] = "window-outcome"
    data: WindowOutcomeData


EVENT_CLASSES: tuple[type[_Envelope], ...] = (
    OfficeRegistered,
    ClaimRegistered,
    MarkerSet,
    ClaimCleared,
    InterviewBooked,
    InterviewConducted,
    InterviewFailedToAttend,
    InterviewWaived,
    InterviewDeferred,
    LmiDoubtRaised,
    LmiFollowUpConducted,
    ClaimClosed,
    ClockTick,
    WindowAlert,
    WindowOutcome,
)

EVENT_TYPES: dict[str, type[_Envelope]] = {cls.event_type(): cls for cls in EVENT_CLASSES}

Event = Annotated[
    OfficeRegistered
    | ClaimRegistered
    | MarkerSet
    | ClaimCleared
    | InterviewBooked
    | InterviewConducted
    | InterviewFailedToAttend
    | InterviewWaived
    | InterviewDeferred
    | LmiDoubtRaised
    | LmiFollowUpConducted
    | ClaimClosed
    | ClockTick
    | WindowAlert
    | WindowOutcome,
    Field(discriminator="type"),
]

Envelope = _Envelope


def new_event_id() -> str:
    """A fresh, globally unique CloudEvent id."""
    return str(uuid.uuid4())


def make_event(
    event_cls: type[_Envelope],
    *,
    source: str,
    time: datetime,
    data: Any,
    id: str | None = None,
) -> _Envelope:
    """Build an envelope; `subject` is set to the claim id for claim events."""
    subject = getattr(data, "claim_id", None) if event_cls.claim_event else None
    return event_cls(  # type: ignore[call-arg]
        id=id or new_event_id(),
        source=source,
        time=time,
        subject=subject,
        datacontenttype="application/json",
        data=data,
    )
