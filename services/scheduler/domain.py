"""IDT windows and outcomes (spec §2-§4) as pure functions of a claim's events.

`evaluate(history, as_of, config)` gives every window of a claim on both bases with
its outcome. It depends only on the *set* of events (duplicates by id are
dropped) and the business date `as_of`, never on arrival order, the wall clock
or any I/O. Everything else in the scheduler (storage, alerts, publishing) calls
this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, NamedTuple

from idt_contract.events import (
    ClaimCleared,
    ClaimClosed,
    ClaimRegistered,
    Envelope,
    InterviewBooked,
    InterviewConducted,
    InterviewDeferred,
    InterviewFailedToAttend,
    InterviewWaived,
    LmiDoubtRaised,
    LmiFollowUpConducted,
    MarkerSet,
)
from idt_domain.calendar import add_months, add_working_days, london_date, month_end, utc_key

Basis = Literal["policy", "measured"]
BASES: tuple[Basis, Basis] = ("policy", "measured")
LMI = "LMI_FOLLOW_UP"


class Status(StrEnum):
    UPCOMING = "UPCOMING"  # business time has not reached the window
    OPEN = "OPEN"  # inside the window, nothing decided yet
    MET = "MET"
    WAIVED = "WAIVED"
    DEFERRED = "DEFERRED"
    MISSED = "MISSED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        # A module-level set, not `(Status.UPCOMING, Status.OPEN)`: reading an enum
        # member through its class is slow, and this runs for every window.
        return self not in _UNDECIDED


_UNDECIDED = frozenset({Status.UPCOMING, Status.OPEN})


#: On the same date: MET beats WAIVED beats DEFERRED beats CANCELLED (spec §4).
_PRECEDENCE = {Status.MET: 0, Status.WAIVED: 1, Status.DEFERRED: 2, Status.CANCELLED: 3}

ELEMENT = {
    "IB_INITIAL_WFI": "IB",
    "LP_WFI_REVIEW": "LP",
    "JSA_13_WEEK": "JSA",
    "JSA_26_WEEK": "JSA",
    LMI: "LMI",
}


@dataclass(frozen=True)
class RulesConfig:
    lp_review_months: int = 6
    lmi_deadline_working_days: int = 10
    #: Guard against a runaway chain; far beyond any real claim.
    max_chain: int = 200


# --------------------------------------------------------------------------- history

Order = tuple[str, str]  # (UTC time key, event id): a total order in event time


class Marker(NamedTuple):
    # NamedTuples (immutable, plain data), not frozen dataclasses: every evaluation
    # of a claim makes one per fact, and a frozen dataclass sets each field through
    # object.__setattr__.
    day: date
    order: Order
    marker: str
    value: str


class Dated(NamedTuple):
    """A dated fact about one intervention (interview, waiver, deferral...)."""

    day: date
    order: Order
    intervention: str
    ref: str = ""  # slot date, doubt id, jobcentre id: what the fact is about
    extra: str = ""


@dataclass(frozen=True)
class ClaimHistory:
    claim_id: str
    benefit: str | None = None
    claim_start_date: date | None = None
    registered_day: date | None = None
    contact_centre_id: str | None = None
    markers: tuple[Marker, ...] = ()
    #: (day, order, outcome, received_date)
    clearances: tuple[tuple[date, Order, str, date], ...] = ()
    conducted: tuple[Dated, ...] = ()
    waived: tuple[Dated, ...] = ()
    deferred: tuple[Dated, ...] = ()
    booked: tuple[Dated, ...] = ()  # ref = slot date ISO, extra = jobcentre id
    failed_to_attend: tuple[Dated, ...] = ()  # ref = slot date ISO
    lmi_raised: tuple[Dated, ...] = ()  # ref = doubt id
    lmi_done: tuple[Dated, ...] = ()  # ref = doubt id
    closed: tuple[date, ...] = ()

    @staticmethod
    def from_events(claim_id: str, events: Iterable[Envelope]) -> ClaimHistory:
        """Reduce a claim's events (any order, duplicates allowed) to plain data."""
        return ClaimHistory.from_facts(claim_id, (f for ev in events if (f := fact_of(ev))))

    @staticmethod
    def from_facts(claim_id: str, facts: Iterable[Sequence[Any]]) -> ClaimHistory:
        """The same from the events' facts (`fact_of`), as stored by the scheduler:
        any order, duplicates (by event id) allowed."""
        seen: dict[str, Sequence[Any]] = {}
        for f in facts:
            seen.setdefault(f[3], f)
        regs: list[tuple[Order, Sequence[Any]]] = []
        markers: list[Marker] = []
        clearances: list[tuple[date, Order, str, date]] = []
        lists: dict[str, list[Dated]] = {k: [] for k in _DATED_KINDS}
        closed: list[date] = []
        fromiso = date.fromisoformat
        for f in seen.values():
            kind = f[0]
            day, order = fromiso(f[1]), (f[2], f[3])
            if kind == "reg":
                regs.append((order, f))
            elif kind == "marker":
                markers.append(Marker(day, order, f[4], f[5]))
            elif kind == "cleared":
                clearances.append((day, order, f[4], fromiso(f[5])))
            elif kind == "closed":
                closed.append(day)
            else:
                lists[kind].append(Dated(day, order, *f[4:]))
        benefit = start = registered = cc = None
        if regs:
            # The latest registration in event time wins (a corrected re-send).
            _, reg = max(regs, key=lambda x: x[0])
            benefit, start, registered, cc = reg[4], fromiso(reg[5]), fromiso(reg[1]), reg[6]

        def srt(xs: list[Dated]) -> tuple[Dated, ...]:
            # Most kinds have no fact or one: nothing to sort.
            return tuple(sorted(xs, key=_by_day)) if len(xs) > 1 else tuple(xs)

        return ClaimHistory(
            claim_id=claim_id,
            benefit=benefit,
            claim_start_date=start,
            registered_day=registered,
            contact_centre_id=cc,
            markers=tuple(sorted(markers, key=lambda m: (m.day, m.order))),
            clearances=tuple(sorted(clearances, key=lambda c: (c[0], c[1]))),
            conducted=srt(lists["conducted"]),
            waived=srt(lists["waived"]),
            deferred=srt(lists["deferred"]),
            booked=srt(lists["booked"]),
            failed_to_attend=srt(lists["fta"]),
            lmi_raised=srt(lists["raised"]),
            lmi_done=srt(lists["done"]),
            closed=tuple(sorted(closed)),
        )

    # ------------------------------------------------------------------ queries

    def eligibility(self) -> tuple[date, date] | None:
        """(confirmed day, received day) when the latest clearance is ELIGIBLE."""
        if not self.clearances:
            return None
        latest = max(self.clearances, key=lambda c: (c[0], c[1]))
        if latest[2] != "ELIGIBLE":
            return None
        # Confirmed on the earliest ELIGIBLE clearance of the final run of ELIGIBLEs.
        day = latest[0]
        for c in sorted(self.clearances, key=lambda c: (c[0], c[1]), reverse=True):
            if c[2] != "ELIGIBLE":
                break
            day = c[0]
        return day, latest[3]

    def marker_on(self, marker: str, day: date) -> str | None:
        """The marker's value in force at the end of `day` (latest set dated on or before)."""
        value = None
        for m in self.markers:
            if m.marker == marker and m.day <= day:
                value = m.value
        return value

    def marker_resets(self) -> list[date]:
        """Dates of marker resets (spec §3): a `marker-set` whose value differs from the
        marker's current value, dated after the registration date; either marker."""
        current: dict[str, str | None] = {}
        resets = []
        for m in self.markers:  # sorted in event time
            before = current.get(m.marker)
            current[m.marker] = m.value
            if (
                m.value != before
                and self.registered_day is not None
                and m.day > self.registered_day
            ):
                resets.append(m.day)
        return resets


def _by_day(x: Dated) -> tuple[date, Order]:
    return x.day, x.order


#: Kinds of fact that become a `Dated` (their fields after the event id are
#: Dated's intervention, ref and extra).
_DATED_KINDS = ("conducted", "waived", "deferred", "booked", "fta", "raised", "done")


def fact_of(ev: Envelope) -> list[Any] | None:
    """What the rules need of one event, as plain JSON-able data:
    `[kind, London date, UTC time key, event id, *fields]`; None for an event the
    rules ignore. The scheduler stores these so that re-evaluating a claim never
    re-parses its CloudEvents; `ClaimHistory.from_facts` reads them back."""
    day, key = london_date(ev.time).isoformat(), utc_key(ev.time)
    head: list[Any] = [day, key, ev.id]
    d: Any = getattr(ev, "data", None)
    if isinstance(ev, ClaimRegistered):
        return ["reg", *head, d.benefit.value, d.claim_start_date.isoformat(), d.contact_centre_id]
    if isinstance(ev, MarkerSet):
        return ["marker", *head, d.marker.value, d.value]
    if isinstance(ev, ClaimCleared):
        return ["cleared", *head, d.outcome.value, d.received_date.isoformat()]
    if isinstance(ev, InterviewConducted):
        iv = d.intervention.value
        return ["conducted", *head, iv, d.jobcentre_id, str(d.duration_minutes)]
    if isinstance(ev, InterviewWaived):
        return ["waived", *head, d.intervention.value]
    if isinstance(ev, InterviewDeferred):
        return ["deferred", *head, d.intervention.value, d.deferred_to.isoformat()]
    if isinstance(ev, InterviewBooked):
        iv = d.intervention.value
        return ["booked", *head, iv, d.slot_date.isoformat(), d.jobcentre_id]
    if isinstance(ev, InterviewFailedToAttend):
        return ["fta", *head, d.intervention.value, d.slot_date.isoformat()]
    if isinstance(ev, LmiDoubtRaised):
        return ["raised", *head, LMI, d.doubt_id, d.kind.value]
    if isinstance(ev, LmiFollowUpConducted):
        return ["done", *head, LMI, d.doubt_id]
    if isinstance(ev, ClaimClosed):
        return ["closed", *head]
    return None


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    claim_id: str
    intervention: str
    seq: int  # 1.. along an LP chain; 1 otherwise
    basis: Basis
    opens: date
    closes: date
    status: Status
    outcome_date: date | None
    jobcentre_id: str | None  # the JOBCENTRE marker at the outcome date (or as_of)
    ref: str = ""  # LMI doubt id
    late_interview: date | None = None  # conducted after close (recorded, still MISSED)
    early_interviews: tuple[date, ...] = ()  # conducted before open (do not count)
    clock_start: date | None = None  # IB measured basis: the measurement clock start

    @cached_property
    def element(self) -> str:
        return ELEMENT[self.intervention]

    @cached_property
    def window_id(self) -> str:
        # Cached (in the instance's __dict__; the dataclass stays frozen): read
        # many times for every window of every claim re-evaluated.
        tail = self.ref if self.intervention == LMI else str(self.seq)
        return f"{self.claim_id}:{self.intervention}:{tail}"


class _Decision(NamedTuple):  # one per window evaluated (see Marker)
    status: Status
    day: date | None


def decide(
    opens: date,
    closes: date,
    *,
    conducted: Sequence[date],
    waived: Sequence[date] = (),
    deferred: Sequence[date] = (),
    closed: Sequence[date] = (),
    after: date | None = None,
    as_of: date | None,
) -> _Decision:
    """The outcome of one window (spec §4). `after`: facts dated on or before it
    belong to an earlier window of the same chain. The earliest-dated deciding
    fact wins; on one date MET > WAIVED > DEFERRED > CANCELLED."""

    def later(d: date) -> bool:
        return after is None or d > after

    candidates: list[tuple[date, int, Status]] = []
    met = [d for d in conducted if opens <= d <= closes and later(d)]
    if met:
        candidates.append((min(met), _PRECEDENCE[Status.MET], Status.MET))
    for days, status in ((waived, Status.WAIVED), (deferred, Status.DEFERRED)):
        ok = [d for d in days if d <= closes and later(d)]
        if ok:
            candidates.append((min(ok), _PRECEDENCE[status], status))
    # A closure ends whatever window is running, whatever chain position.
    shut = [d for d in closed if d <= closes]
    if shut:
        candidates.append((min(shut), _PRECEDENCE[Status.CANCELLED], Status.CANCELLED))
    if candidates:
        day, _, status = min(candidates)
        return _Decision(status, day)
    if as_of is not None and as_of > closes:
        return _Decision(Status.MISSED, closes)
    if as_of is not None and as_of >= opens:
        return _Decision(Status.OPEN, None)
    return _Decision(Status.UPCOMING, None)


def _window(
    h: ClaimHistory,
    intervention: str,
    seq: int,
    basis: Basis,
    opens: date,
    closes: date,
    d: _Decision,
    as_of: date | None,
    *,
    conducted: Sequence[date],
    after: date | None = None,
    ref: str = "",
    clock_start: date | None = None,
) -> Window:
    # Final: the marker at the outcome date (spec §5). Otherwise: the current owner.
    marker_day = d.day if d.day is not None else date.max
    late = [c for c in conducted if c > closes and (after is None or c > after)]
    early = tuple(c for c in conducted if c < opens and (after is None or c > after))
    return Window(
        claim_id=h.claim_id,
        intervention=intervention,
        seq=seq,
        basis=basis,
        opens=opens,
        closes=closes,
        status=d.status,
        outcome_date=d.day,
        jobcentre_id=h.marker_on("JOBCENTRE", marker_day),
        ref=ref,
        late_interview=min(late) if d.status is Status.MISSED and late else None,
        early_interviews=early,
        clock_start=clock_start,
    )


def _days(facts: Iterable[Dated], intervention: str) -> list[date]:
    return [f.day for f in facts if f.intervention == intervention]


def _facts(h: ClaimHistory, iv: str) -> dict[str, Sequence[date]]:
    """The dated facts that decide a window of intervention `iv` (spec §4)."""
    return {
        "conducted": _days(h.conducted, iv),
        "waived": _days(h.waived, iv),
        "deferred": _days(h.deferred, iv),
        "closed": h.closed,
    }


def ib_windows(h: ClaimHistory, as_of: date | None) -> list[Window]:
    assert h.claim_start_date is not None
    iv = "IB_INITIAL_WFI"
    kw = _facts(h, iv)
    conducted = kw["conducted"]
    start = h.claim_start_date
    out = []
    p_open, p_close = start + timedelta(days=56), start + timedelta(days=90)
    out.append(
        _window(
            h, iv, 1, "policy", p_open, p_close,
            decide(p_open, p_close, as_of=as_of, **kw),  # type: ignore[arg-type]
            as_of, conducted=conducted,
        )
    )  # fmt: skip
    # Measured basis: the measurement clock restarts on a marker reset unless the
    # measured outcome was already final as of the reset (spec §3).
    clock = start
    for r in h.marker_resets():
        m_open, m_close = clock + timedelta(days=56), clock + timedelta(days=90)
        current = decide(m_open, m_close, as_of=None, **kw)  # type: ignore[arg-type]
        decided_by_event = current.day is not None and current.day <= r
        if decided_by_event or m_close < r:
            break
        clock = r
    m_open, m_close = clock + timedelta(days=56), clock + timedelta(days=90)
    out.append(
        _window(
            h, iv, 1, "measured", m_open, m_close,
            decide(m_open, m_close, as_of=as_of, **kw),  # type: ignore[arg-type]
            as_of, conducted=conducted, clock_start=clock,
        )
    )  # fmt: skip
    return out


def lp_windows(h: ClaimHistory, as_of: date | None, config: RulesConfig) -> list[Window]:
    assert h.claim_start_date is not None
    iv = "LP_WFI_REVIEW"
    kw = _facts(h, iv)
    conducted = kw["conducted"]
    months = config.lp_review_months
    out: list[Window] = []
    for basis in BASES:
        due = add_months(h.claim_start_date, months)
        after: date | None = None
        for seq in range(1, config.max_chain + 1):
            if basis == "policy":
                closes = add_months(due, 3)
            else:
                closes = month_end(add_months(due.replace(day=1), 2))
            d = decide(due, closes, as_of=as_of, after=after, **kw)  # type: ignore[arg-type]
            out.append(
                _window(h, iv, seq, basis, due, closes, d, as_of, conducted=conducted, after=after)
            )
            if not d.status.final or d.status is Status.CANCELLED:
                break
            assert d.day is not None
            due = add_months(d.day if d.status is Status.MET else due, months)
            after = d.day
    return out


def jsa_windows(h: ClaimHistory, as_of: date | None) -> list[Window]:
    assert h.claim_start_date is not None
    out = []
    for iv, offset in (("JSA_13_WEEK", 91), ("JSA_26_WEEK", 182)):
        conducted = _days(h.conducted, iv)
        opens = h.claim_start_date + timedelta(days=offset)
        closes = opens + timedelta(days=42)
        d = decide(
            opens,
            closes,
            conducted=conducted,
            waived=_days(h.waived, iv),
            deferred=_days(h.deferred, iv),
            closed=h.closed,
            as_of=as_of,
        )
        for basis in BASES:
            out.append(_window(h, iv, 1, basis, opens, closes, d, as_of, conducted=conducted))
    return out


def lmi_windows(h: ClaimHistory, as_of: date | None, config: RulesConfig) -> list[Window]:
    out = []
    raised: dict[str, Dated] = {}
    for f in h.lmi_raised:  # the earliest raise of a doubt id opens its case
        raised.setdefault(f.ref, f)
    for doubt_id, f in sorted(raised.items()):
        opens = f.day
        closes = add_working_days(opens, config.lmi_deadline_working_days)
        done = [x.day for x in h.lmi_done if x.ref == doubt_id]
        # Waivers and deferrals do not apply to LMI cases (spec §4).
        d = decide(opens, closes, conducted=done, closed=h.closed, as_of=as_of)
        for basis in BASES:
            out.append(
                _window(h, LMI, 1, basis, opens, closes, d, as_of, conducted=done, ref=doubt_id)
            )
    return out


def evaluate(
    h: ClaimHistory, as_of: date | None, config: RulesConfig | None = None
) -> list[Window]:
    """Every window of the claim on both bases. Interview windows exist once the
    claim is registered and its latest clearance is ELIGIBLE; LMI cases from
    their `lmi-doubt-raised`."""
    config = config or RulesConfig()
    out: list[Window] = []
    if h.benefit is not None and h.claim_start_date is not None and h.eligibility():
        if h.benefit == "IB":
            out += ib_windows(h, as_of)
        elif h.benefit == "IS_LP":
            out += lp_windows(h, as_of, config)
        elif h.benefit == "JSA":
            out += jsa_windows(h, as_of)
    out += lmi_windows(h, as_of, config)
    return out


# --------------------------------------------------------------------------- stages


class Stage(StrEnum):
    CONTACT_CENTRE = "CONTACT_CENTRE"
    BDC = "BDC"
    JOBCENTRE = "JOBCENTRE"


@dataclass(frozen=True)
class Attribution:
    stage: Stage
    #: Days of the window during which the JOBCENTRE marker named no Jobcentre.
    contact_centre_days: int
    #: Calendar days from BDC receipt to eligibility confirmed.
    bdc_days: int
    #: Days of the window the Jobcentre had the customer allocated and eligible.
    jobcentre_days: int
    detail: str = field(default="")


def _allocation_runs(
    jc_markers: Sequence[Marker], w: Window, jobcentres: frozenset[str]
) -> list[tuple[date, date, bool]]:
    """(first day, last day, allocated to a Jobcentre) for each run of the window's
    days with one JOBCENTRE marker value; `jc_markers` sorted in event time. One
    pass over the markers, not over every day of the window."""
    if w.closes < w.opens:
        return []
    value: str | None = None
    changes: list[tuple[date, str]] = []  # (from day, value), after the first day
    for m in jc_markers:
        if m.day <= w.opens:
            value = m.value
        elif m.day <= w.closes:
            if changes and changes[-1][0] == m.day:
                changes[-1] = (m.day, m.value)  # the day's last marker holds at its end
            else:
                changes.append((m.day, m.value))
    runs: list[tuple[date, date, bool]] = []
    start, ok = w.opens, value in jobcentres
    for day, new in changes:
        now_ok = new in jobcentres
        if now_ok != ok:
            runs.append((start, day - timedelta(days=1), ok))
            start, ok = day, now_ok
    runs.append((start, w.closes, ok))
    return runs


def attribute(
    h: ClaimHistory,
    w: Window,
    jobcentres: frozenset[str],
    *,
    min_booking_lead_days: int = 5,
) -> Attribution:
    """Which stage consumed the time of a MISSED window (spec §7).

    Rule (docs/stage-attribution.md): the Jobcentre can act on a window from
    the later of the day eligibility was confirmed and the day the JOBCENTRE
    marker last became a registered Jobcentre, up to the close date. If
    eligibility came so late that fewer than `min_booking_lead_days` days of the
    window remained, the BDC consumed the time; otherwise, if the marker left
    fewer than that many days, the Contact Centre did; otherwise the Jobcentre
    had the time and did not conduct the interview.
    """
    elig = h.eligibility()
    confirmed, received = elig if elig else (w.opens, w.opens)
    if w.intervention == LMI:
        # LMI cases do not wait for eligibility: the BDC cannot have held them up.
        confirmed = received = w.opens
    bdc_days = max(0, (confirmed - received).days)
    # The window's days as runs of one JOBCENTRE marker value (the value at the end
    # of each day: the latest marker dated on or before it), allocated or not.
    runs = _allocation_runs([m for m in h.markers if m.marker == "JOBCENTRE"], w, jobcentres)
    # Days in the window the marker was wrong, and when it last became right (the
    # start of the allocated days that run to the close; None if the close is not).
    wrong = sum((end - start).days + 1 for start, end, ok in runs if not ok)
    allocated_from: date | None = None
    for run_start, _end, ok in reversed(runs):
        if not ok:
            break
        allocated_from = run_start
    usable_from = max(confirmed, w.opens)
    bdc_left = (w.closes - usable_from).days + 1
    if bdc_left < min_booking_lead_days:
        stage = Stage.BDC
    else:
        start = max(usable_from, allocated_from) if allocated_from else None
        cc_left = (w.closes - start).days + 1 if start else 0
        stage = Stage.CONTACT_CENTRE if cc_left < min_booking_lead_days else Stage.JOBCENTRE
    # Allocated days from the first usable one.
    counted_from = max(usable_from, w.opens)
    jc_days = sum(
        (end - max(start, counted_from)).days + 1
        for start, end, ok in runs
        if ok and end >= counted_from
    )
    return Attribution(stage, wrong, bdc_days, jc_days)
