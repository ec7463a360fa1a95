"""A synthetic year of claims: the planner behind the live demo (`idt up --demo`,
what `make run` shows) and the national log (`idt simulate`).

`DemoPlanner` decides, day by day and deterministically for a seed, what happens
to every claim: registration at a Contact Centre (a legacy system sometimes
leaves the JOBCENTRE marker at, or resets it to, the Contact Centre default, and
the JP process report prompts most fixes), receipt, evidence and clearance at a
BDC (in working days, bank holidays respected; some claims disallowed), the
Jobcentre's bookings, failures to attend, interviews early, on time and late,
waivers and deferrals (on working days), labour-market doubts and follow-ups,
closures, and a `clock-tick` at 23:30 closing each day.

What it plans are *steps* (what happened), delivered in one of two ways:

- `as_action(step)`: requests to the Contact Centre and BDC intakes plus the bus
  events of the systems without an intake (the live demo, `run` below);
- `as_events(step)`: the CloudEvents those intakes publish, straight to a log
  (`idt simulate`). Receipt and evidence put nothing on the bus; the NI number
  becomes the pseudonymous `customer_ref` and is never part of an event.

    python -m idt_cli.demo --redis-url ... --contact-centre http://... --bdc http://...
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from idt_contract import Envelope, entry_fields, make_event, new_event_id, stream_for
from idt_contract.events import (
    Benefit,
    ClaimCleared,
    ClaimClearedData,
    ClaimClosed,
    ClaimRegistered,
    ClaimRegisteredData,
    ClearanceOutcome,
    ClockTick,
    InterviewBooked,
    InterviewConducted,
    InterviewDeferred,
    InterviewFailedToAttend,
    InterviewWaived,
    LmiDoubtRaised,
    LmiFollowUpConducted,
    MarkerName,
    MarkerSet,
    MarkerSetData,
)
from idt_domain.calendar import LONDON, add_months, add_working_days, is_working_day
from services.contact_centre.domain import EXPECTED_PRIMARY, customer_ref

DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "deploy" / "registry" / "offices.csv"

#: The source of the daily ticks (the live clock publisher uses the same).
CLOCK_SOURCE = "/clock"
#: The source of markers set by legacy systems that bypass the Contact Centre intake.
LEGACY_SOURCE = "/legacy/jsaps"
#: When the day's clock tick is published: after everything else of that day.
TICK_HOUR, TICK_MINUTE = 23, 30

EVIDENCE_KINDS = ("MEDICAL_EVIDENCE", "SSP1", "EMPLOYMENT_DETAILS", "NI_ACCOUNT_PROBLEM")


def at(day: date, hour: int, minute: int = 0) -> datetime:
    """A London wall-clock time on `day` (aware)."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON)


def working_day_on_or_after(day: date) -> date:
    while not is_working_day(day):
        day += timedelta(days=1)
    return day


def working_day_on_or_before(day: date) -> date:
    while not is_working_day(day):
        day -= timedelta(days=1)
    return day


def _nino(rnd: random.Random) -> str:
    """A well-formed NI number (HMRC's allocatable letters and prefixes)."""
    while True:
        prefix = rnd.choice("ABCEGHJKLMNPRSTWXYZ") + rnd.choice("ABCEGHJKLMNPRSTWXYZ")
        if prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            return f"{prefix}{rnd.randint(0, 999999):06d}{rnd.choice('ABCD')}"


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Register:
    """An FCO registers a claim at the Contact Centre intake."""

    at: datetime
    claim_id: str
    #: Goes only to the intake, which pseudonymises it; never into an event.
    nino: str
    benefit: Benefit
    claim_start_date: date
    contact_centre_id: str
    jobcentre_id: str


@dataclass(frozen=True)
class FixMarker:
    """An FCO corrects the JOBCENTRE marker through the intake (JP process report)."""

    at: datetime
    claim_id: str
    contact_centre_id: str
    jobcentre_id: str


@dataclass(frozen=True)
class Receive:
    at: datetime
    claim_id: str
    bdc_id: str
    received_date: date


@dataclass(frozen=True)
class RequestEvidence:
    at: datetime
    claim_id: str
    kind: str


@dataclass(frozen=True)
class ReceiveEvidence:
    at: datetime
    claim_id: str
    kind: str


@dataclass(frozen=True)
class Clear:
    at: datetime
    claim_id: str
    bdc_id: str
    received_date: date
    eligible: bool


@dataclass(frozen=True)
class Emit:
    """An event of a system without an intake here (Jobcentres, legacy systems,
    the clock): published to the bus as it is."""

    at: datetime
    event_cls: type[Envelope]
    source: str
    data: BaseModel | None


Step = Register | FixMarker | Receive | RequestEvidence | ReceiveEvidence | Clear | Emit


@dataclass(frozen=True)
class Http:
    """A request to one of the services' intakes."""

    service: str  # "contact_centre" | "bdc"
    method: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Bus:
    event: Envelope


Action = Http | Bus


def as_action(step: Step, new_id: Callable[[], str] = new_event_id) -> Action:
    """The live demo's delivery of a step: a request to an intake, or a bus event."""
    if isinstance(step, Emit):
        event = make_event(
            step.event_cls, source=step.source, time=step.at, data=step.data, id=new_id()
        )
        return Bus(event)
    occurred = step.at.isoformat()
    claim = f"/v1/claims/{step.claim_id}"
    if isinstance(step, Register):
        body = {
            "claim_id": step.claim_id,
            "nino": step.nino,
            "benefit": step.benefit.value,
            "claim_start_date": step.claim_start_date.isoformat(),
            "contact_centre_id": step.contact_centre_id,
            "jobcentre_id": step.jobcentre_id,
            "occurred_at": occurred,
        }
        return Http("contact_centre", "POST", "/v1/claims", body)
    if isinstance(step, FixMarker):
        body = {"value": step.jobcentre_id, "occurred_at": occurred}
        return Http("contact_centre", "PUT", f"{claim}/markers/JOBCENTRE", body)
    if isinstance(step, Receive):
        body = {
            "bdc_id": step.bdc_id,
            "received_date": step.received_date.isoformat(),
            "occurred_at": occurred,
        }
        return Http("bdc", "POST", f"{claim}/received", body)
    if isinstance(step, RequestEvidence):
        body = {"kind": step.kind, "occurred_at": occurred}
        return Http("bdc", "POST", f"{claim}/evidence-requests", body)
    if isinstance(step, ReceiveEvidence):
        path = f"{claim}/evidence-requests/{step.kind}/received"
        return Http("bdc", "POST", path, {"occurred_at": occurred})
    outcome = "ELIGIBLE" if step.eligible else "DISALLOWED"
    return Http("bdc", "POST", f"{claim}/clearance", {"outcome": outcome, "occurred_at": occurred})


def as_events(step: Step, new_id: Callable[[], str], customer_ref_key: bytes) -> list[Envelope]:
    """The CloudEvents the intakes publish for a step (what a log of the bus holds):
    registration gives `claim-registered` (the NI number pseudonymised with
    `customer_ref_key`) and both JP markers; a marker fix gives `marker-set`;
    clearance gives `claim-cleared`; receipt and evidence give nothing."""
    if isinstance(step, Emit):
        event = make_event(
            step.event_cls, source=step.source, time=step.at, data=step.data, id=new_id()
        )
        return [event]
    if isinstance(step, Register):
        source = f"/offices/{step.contact_centre_id}"
        registered = ClaimRegisteredData(
            claim_id=step.claim_id,
            customer_ref=customer_ref(step.nino, customer_ref_key),
            benefit=step.benefit,
            claim_start_date=step.claim_start_date,
            contact_centre_id=step.contact_centre_id,
        )
        primary = MarkerSetData(
            claim_id=step.claim_id,
            marker=MarkerName.PRIMARY_BENEFIT,
            value=EXPECTED_PRIMARY[step.benefit].value,
        )
        jobcentre = MarkerSetData(
            claim_id=step.claim_id, marker=MarkerName.JOBCENTRE, value=step.jobcentre_id
        )
        return [
            make_event(ClaimRegistered, source=source, time=step.at, data=registered, id=new_id()),
            make_event(MarkerSet, source=source, time=step.at, data=primary, id=new_id()),
            make_event(MarkerSet, source=source, time=step.at, data=jobcentre, id=new_id()),
        ]
    if isinstance(step, FixMarker):
        data = MarkerSetData(
            claim_id=step.claim_id, marker=MarkerName.JOBCENTRE, value=step.jobcentre_id
        )
        source = f"/offices/{step.contact_centre_id}"
        return [make_event(MarkerSet, source=source, time=step.at, data=data, id=new_id())]
    if isinstance(step, Clear):
        outcome = ClearanceOutcome.ELIGIBLE if step.eligible else ClearanceOutcome.DISALLOWED
        cleared = ClaimClearedData(
            claim_id=step.claim_id,
            bdc_id=step.bdc_id,
            outcome=outcome,
            received_date=step.received_date,
        )
        source = f"/offices/{step.bdc_id}"
        return [make_event(ClaimCleared, source=source, time=step.at, data=cleared, id=new_id())]
    return []  # receipt and evidence are the BDC's local state: nothing on the bus


# --------------------------------------------------------------------------- planner


class DemoPlanner:
    """Plans claims day by day. Deterministic for a seed: the same days in (and the
    same claim counts, when given) give the same steps out."""

    def __init__(
        self,
        offices: Mapping[str, Sequence[str]],
        seed: int,
        claims_per_day: int = 12,
        *,
        claim_prefix: str = "DEMO",
    ) -> None:
        self.rnd = random.Random(seed)
        self.jobcentres = list(offices["JOBCENTRE"])
        self.contact_centres = list(offices["CONTACT_CENTRE"])
        self.bdcs = list(offices["BDC"])
        if not (self.jobcentres and self.contact_centres and self.bdcs):
            raise ValueError("the registry needs at least one Jobcentre, Contact Centre and BDC")
        self.claims_per_day = claims_per_day
        self.claim_prefix = claim_prefix
        self.calendar: dict[date, list[Step]] = defaultdict(list)
        self.today: date | None = None
        self.n = 0

    def plan(self, today: date, claims: int | None = None) -> list[Step]:
        """Everything that happens on `today`, ending with its clock tick. `claims`:
        how many claims are registered today (default: a random number around
        `claims_per_day` on working days, none at weekends and on bank holidays)."""
        if self.today is not None and today <= self.today:
            raise ValueError(f"days are planned in order: {today} is not after {self.today}")
        self.today = today
        if claims is None:
            per_day = self.claims_per_day
            claims = (
                self.rnd.randint(per_day // 2, per_day * 3 // 2) if is_working_day(today) else 0
            )
        for _ in range(claims):
            self._new_claim(today)
        steps = self.calendar.pop(today, [])
        steps.append(Emit(at(today, TICK_HOUR, TICK_MINUTE), ClockTick, CLOCK_SOURCE, None))
        return steps

    def day(self, today: date) -> list[Action]:
        """The live demo's day: requests to the intakes and bus events, in order."""
        return [as_action(step) for step in self.plan(today)]

    # ------------------------------------------------------------------ helpers

    def _add(self, step: Step) -> None:
        day = step.at.date()  # `at` is London time, so this is the London date
        if self.today is not None and day < self.today:
            raise AssertionError(f"{type(step).__name__} planned on {day}, before {self.today}")
        self.calendar[day].append(step)

    def _emit(
        self, day: date, cls: type[Envelope], data: dict[str, Any], *, source: str, hour: int
    ) -> None:
        """Schedule a bus event; `data` is validated by the event's own data model."""
        model = cls.model_fields["data"].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        value = model.model_validate(data, strict=False)
        self._add(Emit(at(day, hour, self.rnd.randint(0, 59)), cls, source, value))

    # ------------------------------------------------------------------ a claim

    def _new_claim(self, today: date) -> None:
        r = self.rnd
        self.n += 1
        claim_id = f"{self.claim_prefix}-{self.n:06d}"
        benefit = Benefit(r.choices(["IB", "JSA", "IS_LP"], weights=[45, 40, 15])[0])
        start = today - timedelta(days=r.randint(0, 3))
        cc, jc, bdc = r.choice(self.contact_centres), r.choice(self.jobcentres), r.choice(self.bdcs)
        registered = at(today, 9, r.randint(0, 59))
        self._add(Register(registered, claim_id, _nino(r), benefit, start, cc, jc))
        self._plan_markers(claim_id, today, cc, jc)

        # The BDC: receipt, sometimes evidence, clearance, all on working days.
        received = add_working_days(today, r.randint(1, 3))
        self._add(Receive(at(received, 9, r.randint(0, 59)), claim_id, bdc, received))
        clear = add_working_days(received, max(1, round(r.gauss(14, 7))))
        if r.random() < 0.25:
            kind = r.choice(EVIDENCE_KINDS)
            asked = add_working_days(received, 1)
            back = add_working_days(asked, r.randint(2, 12))
            self._add(RequestEvidence(at(asked, 12, r.randint(0, 59)), claim_id, kind))
            self._add(ReceiveEvidence(at(back, 12, r.randint(0, 59)), claim_id, kind))
            clear = max(clear, add_working_days(back, 1))
        eligible = r.random() < 0.92
        self._add(Clear(at(clear, 16, r.randint(0, 59)), claim_id, bdc, received, eligible))

        closed: date | None = None
        if r.random() < 0.12:
            closed = working_day_on_or_after(start + timedelta(days=r.randint(30, 330)))
            reason = r.choice(["JOB_OUTCOME", "OTHER"])
            closure = {"claim_id": claim_id, "reason": reason}
            self._emit(closed, ClaimClosed, closure, source=f"/offices/{jc}", hour=15)
        if benefit is Benefit.JSA and r.random() < 0.1:
            self._plan_lmi(claim_id, jc, start, closed)
        if not eligible:
            return
        windows = {
            Benefit.IB: [("IB_INITIAL_WFI", start + timedelta(56), start + timedelta(90))],
            Benefit.JSA: [
                ("JSA_13_WEEK", start + timedelta(91), start + timedelta(133)),
                ("JSA_26_WEEK", start + timedelta(182), start + timedelta(224)),
            ],
            Benefit.IS_LP: [("LP_WFI_REVIEW", add_months(start, 6), add_months(start, 9))],
        }[benefit]
        for iv, opens, closes in windows:
            self._plan_interview(claim_id, jc, iv, max(opens, clear), closes, closed)

    def _plan_markers(self, claim_id: str, today: date, cc: str, jc: str) -> None:
        """A legacy system leaves the JOBCENTRE marker at the Contact Centre default
        on the day of registration (initial set-up), or resets it to that default
        later (a marker reset); the JP process report prompts most fixes, each of
        them a reset that restarts the measurement clock (report §5.2.1)."""
        r = self.rnd
        roll = r.random()
        if roll < 0.05:
            wrong = today
        elif roll < 0.15:
            wrong = today + timedelta(days=r.randint(1, 10))
        else:
            return
        marker = {"claim_id": claim_id, "marker": "JOBCENTRE", "value": cc}
        self._emit(wrong, MarkerSet, marker, source=LEGACY_SOURCE, hour=10)
        if r.random() < 0.7:
            fix = add_working_days(wrong, r.randint(2, 15))
            self._add(FixMarker(at(fix, 11, r.randint(0, 59)), claim_id, cc, jc))

    def _plan_lmi(self, claim_id: str, jc: str, start: date, closed: date | None) -> None:
        r = self.rnd
        raised = working_day_on_or_after(start + timedelta(days=r.randint(20, 100)))
        if closed is not None and raised >= closed:
            return
        # ":" keeps the doubt id from reading like an NI number (claim digits + a letter).
        doubt = f"{claim_id}:LMI1"
        kind = r.choice(["NOT_AVAILABLE", "REFUSED_WORK"])
        ids = {"claim_id": claim_id, "doubt_id": doubt}
        self._emit(raised, LmiDoubtRaised, {**ids, "kind": kind}, source=f"/offices/{jc}", hour=11)
        if r.random() < 0.9:  # some are never followed up: missed
            done = add_working_days(raised, r.choice([2, 5, 8, 10, 12, 15]))
            follow_up = {**ids, "action": "adviser follow-up"}
            self._emit(done, LmiFollowUpConducted, follow_up, source=f"/offices/{jc}", hour=14)

    def _plan_interview(
        self, claim_id: str, jc: str, iv: str, opens: date, closes: date, closed: date | None
    ) -> None:
        r = self.rnd
        fate = r.choices(
            ["on_time", "early", "late", "waived", "deferred", "none"],
            weights=[74, 5, 8, 6, 2, 5],
        )[0]
        span = max(0, (closes - opens).days)
        ids = {"claim_id": claim_id, "intervention": iv}
        source = f"/offices/{jc}"

        def book(day: date, slot: date) -> None:
            booking = {**ids, "slot_date": slot.isoformat(), "jobcentre_id": jc}
            self._emit(day, InterviewBooked, booking, source=source, hour=10)

        def conduct(day: date) -> None:
            slot = working_day_on_or_after(day)
            if closed and slot >= closed:
                return
            asked = max(opens - timedelta(days=20), slot - timedelta(days=r.randint(5, 14)))
            book(working_day_on_or_before(asked), slot)
            if r.random() < 0.1:  # failed to attend, rebooked a week later
                missed = {**ids, "slot_date": slot.isoformat()}
                self._emit(slot, InterviewFailedToAttend, missed, source=source, hour=16)
                rebooked = add_working_days(slot, 1)
                slot = working_day_on_or_after(slot + timedelta(days=7))
                book(rebooked, slot)
            mode = r.choices(["FACE_TO_FACE", "TELEPHONE", "HOME_VISIT"], [85, 12, 3])[0]
            minutes = max(10, int(r.gauss(40, 12)))
            interview = {**ids, "jobcentre_id": jc, "mode": mode, "duration_minutes": minutes}
            self._emit(slot, InterviewConducted, interview, source=source, hour=14)

        def in_window() -> date:
            return opens + timedelta(days=r.randint(0, max(0, span - 8)))

        def decision_day() -> date:
            """A working day inside the window when there is one."""
            day = opens + timedelta(days=r.randint(0, max(0, span - 1)))
            after = working_day_on_or_after(day)
            if after <= closes:
                return after
            before = working_day_on_or_before(day)
            return before if before >= opens else day

        if fate == "on_time":
            conduct(in_window())
        elif fate == "early":
            conduct(opens - timedelta(days=r.randint(3, 14)))
            if r.random() < 0.5:
                conduct(in_window())
        elif fate == "late":
            conduct(closes + timedelta(days=r.randint(1, 20)))
        elif fate == "waived":
            waiver = {**ids, "reason": "health"}
            self._emit(decision_day(), InterviewWaived, waiver, source=source, hour=11)
        elif fate == "deferred":
            day = decision_day()
            to = (day + timedelta(days=60)).isoformat()
            deferral = {**ids, "reason": "caring", "deferred_to": to}
            self._emit(day, InterviewDeferred, deferral, source=source, hour=11)


def read_offices(path: Path) -> dict[str, list[str]]:
    """Office ids by kind from a registry CSV, in file order."""
    out: dict[str, list[str]] = {"JOBCENTRE": [], "CONTACT_CENTRE": [], "BDC": []}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out[row["kind"]].append(row["office_id"])
    return out


# --------------------------------------------------------------------------- runner


def run(args: argparse.Namespace) -> int:
    import httpx
    import redis

    r = redis.Redis.from_url(args.redis_url)
    planner = DemoPlanner(read_offices(Path(args.offices)), args.seed, args.claims_per_day)
    urls = {"contact_centre": args.contact_centre.rstrip("/"), "bdc": args.bdc.rstrip("/")}
    start = date.fromisoformat(args.start)
    days = args.days
    problems = 0
    with httpx.Client(timeout=30) as http:
        for i in range(days):
            today = start + timedelta(days=i)
            begun = time.monotonic()
            pipe = r.pipeline(transaction=False)
            for action in planner.day(today):
                if isinstance(action, Bus):
                    pipe.xadd(stream_for(action.event.type), entry_fields(action.event))  # type: ignore[arg-type]
                    continue
                # Publish what happened before this request first (it may depend on it).
                pipe.execute()
                resp = http.request(
                    action.method, urls[action.service] + action.path, json=action.body
                )
                if resp.status_code >= 400:
                    problems += 1
                    print(f"{today} {action.method} {action.path}: {resp.status_code} {resp.text}")
            pipe.execute()
            if i % 30 == 0 or i == days - 1:
                print(
                    f"business day {today} ({i + 1}/{days}), {planner.n} claims so far", flush=True
                )
            time.sleep(max(0.0, args.day_seconds - (time.monotonic() - begun)))
    print(f"demo finished: {planner.n} claims over {days} days, {problems} refused requests")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="idt-demo", description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", required=True)
    p.add_argument("--contact-centre", required=True, help="base URL of the Contact Centre")
    p.add_argument("--bdc", required=True, help="base URL of the BDC")
    p.add_argument("--offices", default=str(DEFAULT_REGISTRY))
    p.add_argument("--start", required=True, help="first business day, YYYY-MM-DD")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--day-seconds", type=float, default=0.5, help="wall seconds per business day")
    p.add_argument("--claims-per-day", type=int, default=12)
    p.add_argument("--seed", type=int, default=2007)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
