"""A demo simulator for `make run`: a year of claims in accelerated business time.

Each business day it registers claims through the Contact Centre intake, receives
and clears them through the BDC intake, publishes what the Jobcentres do
(bookings, failures to attend, interviews early, on time and late, waivers,
deferrals), labour-market doubts, legacy systems' wrong markers and closures, then
a `clock-tick` for the day. Windows open, alerts flow, outcomes are decided, the
JP process report and AACT fill up.

    python -m idt_cli.demo --redis-url ... --contact-centre http://... --bdc http://...

`DemoPlanner` is deterministic for a seed: the day in, the actions out.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from idt_contract import Envelope, entry_fields, make_event, stream_for
from idt_contract.events import (
    ClaimClosed,
    ClockTick,
    InterviewBooked,
    InterviewConducted,
    InterviewDeferred,
    InterviewFailedToAttend,
    InterviewWaived,
    LmiDoubtRaised,
    LmiFollowUpConducted,
    MarkerSet,
)
from idt_domain.calendar import LONDON, add_months, add_working_days

DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "deploy" / "registry" / "offices.csv"


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


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON)


def _nino(rnd: random.Random) -> str:
    """A well-formed NI number (HMRC's allocatable letters and prefixes)."""
    while True:
        prefix = rnd.choice("ABCEGHJKLMNPRSTWXYZ") + rnd.choice("ABCEGHJKLMNPRSTWXYZ")
        if prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            return f"{prefix}{rnd.randint(0, 999999):06d}{rnd.choice('ABCD')}"


class DemoPlanner:
    def __init__(self, offices: dict[str, list[str]], seed: int, claims_per_day: int) -> None:
        self.rnd = random.Random(seed)
        self.jobcentres = offices["JOBCENTRE"]
        self.contact_centres = offices["CONTACT_CENTRE"]
        self.bdcs = offices["BDC"]
        self.claims_per_day = claims_per_day
        self.calendar: dict[date, list[Action]] = defaultdict(list)
        self.n = 0

    # ------------------------------------------------------------------ plan

    def day(self, today: date) -> list[Action]:
        """Everything that happens on `today`, ending with its clock tick."""
        for _ in range(self.rnd.randint(self.claims_per_day // 2, self.claims_per_day * 3 // 2)):
            self._new_claim(today)
        actions = self.calendar.pop(today, [])
        actions.append(
            Bus(make_event(ClockTick, source="/demo/clock", time=at(today, 23, 30), data=None))
        )
        return actions

    def _emit(self, day: date, cls: type[Envelope], data: dict[str, Any], hour: int = 11) -> None:
        """Schedule a bus event; `data` is validated by the event's own data model."""
        model = cls.model_fields["data"].annotation
        ev = make_event(
            cls,
            source="/demo",
            time=at(day, hour, self.rnd.randint(0, 59)),
            data=model.model_validate(data, strict=False),  # type: ignore[union-attr]
        )
        self.calendar[day].append(Bus(ev))

    def _http(self, day: date, service: str, method: str, path: str, body: dict[str, Any]) -> None:
        self.calendar[day].append(Http(service, method, path, body))

    def _new_claim(self, today: date) -> None:
        r = self.rnd
        self.n += 1
        claim_id = f"DEMO-{self.n:06d}"
        benefit = r.choices(["IB", "JSA", "IS_LP"], weights=[45, 40, 15])[0]
        start = today - timedelta(days=r.randint(0, 3))
        cc, jc, bdc = r.choice(self.contact_centres), r.choice(self.jobcentres), r.choice(self.bdcs)
        registration = {
            "claim_id": claim_id,
            "nino": _nino(r),
            "benefit": benefit,
            "claim_start_date": start.isoformat(),
            "contact_centre_id": cc,
            "jobcentre_id": jc,
            "occurred_at": at(today, 9, r.randint(0, 59)).isoformat(),
        }
        self._http(today, "contact_centre", "POST", "/v1/claims", registration)
        # A legacy system resets the Jobcentre marker to the Contact Centre default.
        if r.random() < 0.12:
            wrong = today + timedelta(days=1)
            marker = {"claim_id": claim_id, "marker": "JOBCENTRE", "value": cc}
            self._emit(wrong, MarkerSet, marker)
            if r.random() < 0.6:  # the JP process report prompts a fix
                fix = wrong + timedelta(days=r.randint(2, 20))
                body = {"value": jc, "occurred_at": at(fix, 10).isoformat()}
                path = f"/v1/claims/{claim_id}/markers/JOBCENTRE"
                self._http(fix, "contact_centre", "PUT", path, body)
        # The BDC.
        base = f"/v1/claims/{claim_id}"
        received = add_working_days(today, r.randint(1, 3))
        receipt = {
            "bdc_id": bdc,
            "received_date": received.isoformat(),
            "occurred_at": at(received, 9).isoformat(),
        }
        self._http(received, "bdc", "POST", f"{base}/received", receipt)
        clear = add_working_days(received, max(1, int(r.gauss(14, 7))))
        if r.random() < 0.25:
            kind = r.choice(
                ["MEDICAL_EVIDENCE", "SSP1", "EMPLOYMENT_DETAILS", "NI_ACCOUNT_PROBLEM"]
            )
            asked = add_working_days(received, 1)
            back = add_working_days(asked, r.randint(2, 12))
            request = {"kind": kind, "occurred_at": at(asked, 12).isoformat()}
            self._http(asked, "bdc", "POST", f"{base}/evidence-requests", request)
            answer = {"occurred_at": at(back, 12).isoformat()}
            self._http(back, "bdc", "POST", f"{base}/evidence-requests/{kind}/received", answer)
            clear = max(clear, add_working_days(back, 1))
        eligible = r.random() < 0.92
        decision = {
            "outcome": "ELIGIBLE" if eligible else "DISALLOWED",
            "occurred_at": at(clear, 16).isoformat(),
        }
        self._http(clear, "bdc", "POST", f"{base}/clearance", decision)
        closed = start + timedelta(days=r.randint(30, 330)) if r.random() < 0.12 else None
        if closed:
            reason = r.choice(["JOB_OUTCOME", "OTHER"])
            self._emit(closed, ClaimClosed, {"claim_id": claim_id, "reason": reason}, hour=15)
        if not eligible:
            return
        windows = {
            "IB": [("IB_INITIAL_WFI", start + timedelta(56), start + timedelta(90))],
            "JSA": [
                ("JSA_13_WEEK", start + timedelta(91), start + timedelta(133)),
                ("JSA_26_WEEK", start + timedelta(182), start + timedelta(224)),
            ],
            "IS_LP": [("LP_WFI_REVIEW", add_months(start, 6), add_months(start, 9))],
        }[benefit]
        for iv, opens, closes in windows:
            self._plan_interview(claim_id, jc, iv, max(opens, clear), closes, closed)
        if benefit == "JSA" and r.random() < 0.08:
            raised = start + timedelta(days=r.randint(20, 100))
            doubt = f"{claim_id}-D1"
            kind = r.choice(["NOT_AVAILABLE", "REFUSED_WORK"])
            self._emit(
                raised, LmiDoubtRaised, {"claim_id": claim_id, "doubt_id": doubt, "kind": kind}
            )
            done = add_working_days(raised, r.choice([2, 5, 8, 10, 12, 15]))
            follow_up = {"claim_id": claim_id, "doubt_id": doubt, "action": "adviser follow-up"}
            self._emit(done, LmiFollowUpConducted, follow_up)

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

        def book(day: date, slot: date) -> None:
            booking = {**ids, "slot_date": slot.isoformat(), "jobcentre_id": jc}
            self._emit(day, InterviewBooked, booking, hour=10)

        def conduct(day: date) -> None:
            if closed and day >= closed:
                return
            slot = day
            book(max(opens - timedelta(days=20), slot - timedelta(days=r.randint(5, 14))), slot)
            if r.random() < 0.1:  # failed to attend, rebooked a week later
                missed = {**ids, "slot_date": slot.isoformat()}
                self._emit(slot, InterviewFailedToAttend, missed, hour=16)
                slot = slot + timedelta(days=7)
                book(slot - timedelta(days=6), slot)
            mode = r.choices(["FACE_TO_FACE", "TELEPHONE", "HOME_VISIT"], [85, 12, 3])[0]
            minutes = max(10, int(r.gauss(40, 12)))
            interview = {**ids, "jobcentre_id": jc, "mode": mode, "duration_minutes": minutes}
            self._emit(slot, InterviewConducted, interview, hour=14)

        def in_window() -> date:
            return opens + timedelta(days=r.randint(0, max(0, span - 8)))

        if fate == "on_time":
            conduct(in_window())
        elif fate == "early":
            conduct(opens - timedelta(days=r.randint(3, 14)))
            if r.random() < 0.5:
                conduct(in_window())
        elif fate == "late":
            conduct(closes + timedelta(days=r.randint(1, 20)))
        elif fate == "waived":
            day = opens + timedelta(days=r.randint(0, max(0, span - 1)))
            self._emit(day, InterviewWaived, {**ids, "reason": "health"})
        elif fate == "deferred":
            day = opens + timedelta(days=r.randint(0, max(0, span - 1)))
            to = (day + timedelta(days=60)).isoformat()
            self._emit(day, InterviewDeferred, {**ids, "reason": "caring", "deferred_to": to})


def read_offices(path: Path) -> dict[str, list[str]]:
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
