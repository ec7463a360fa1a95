"""An independent oracle for the IDT rules, written from the spec (§2-§4) by a
different hand from services/scheduler/domain.py and importing nothing from the
services: plain JSON events in, each window's outcome on each basis out. The
replay test computes expected scores with this, so a bug in the scheduler's rules
cannot hide by appearing on both sides."""

from __future__ import annotations

import calendar
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")
FINAL = ("MET", "MISSED", "WAIVED", "DEFERRED", "CANCELLED")

#: (window id, basis) -> (element, status, outcome date, Jobcentre marker at that date)
Outcomes = dict[tuple[str, str], tuple[str, str, date | None, str | None]]


def _ldate(t: str) -> date:
    return datetime.fromisoformat(t).astimezone(LONDON).date()


def _utc(t: str) -> float:
    return datetime.fromisoformat(t).timestamp()


def _add_months(d: date, n: int) -> date:
    y, m = divmod(d.month - 1 + n, 12)
    y += d.year
    m += 1
    return date(y, m, min(d.day, calendar.monthrange(y, m)[1]))


def _month_end(d: date) -> date:
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def window_outcomes(log: list[dict[str, Any]]) -> tuple[Outcomes, date]:
    """Every window's outcome at the business date of the log's last tick."""
    years = {_ldate(e["time"]).year for e in log}
    hol = holidays.country_holidays("GB", subdiv="ENG", years=range(min(years), max(years) + 2))

    def add_working_days(d: date, n: int) -> date:
        while n:
            d += timedelta(1)
            if d.weekday() < 5 and d not in hol:
                n -= 1
        return d

    ticks = [e for e in log if e["type"] == "clock-tick"]
    as_of = _ldate(max(ticks, key=lambda e: _utc(e["time"]))["time"])

    def decide(
        o: date, c: date, conducted: list[date], waived: list[date], deferred: list[date],
        closed: list[date], after: date | None = None,
    ) -> tuple[str, date | None]:  # fmt: skip
        def ok(d: date) -> bool:
            return after is None or d > after

        cands = []
        m = [d for d in conducted if o <= d <= c and ok(d)]
        if m:
            cands.append((min(m), 0, "MET"))
        w = [d for d in waived if d <= c and ok(d)]
        if w:
            cands.append((min(w), 1, "WAIVED"))
        df = [d for d in deferred if d <= c and ok(d)]
        if df:
            cands.append((min(df), 2, "DEFERRED"))
        cl = [d for d in closed if d <= c]
        if cl:
            cands.append((min(cl), 3, "CANCELLED"))
        if cands:
            d, _, s = min(cands)
            return s, d
        if as_of > c:
            return "MISSED", c
        return "OPEN", None

    claims: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in log:
        cid = (e.get("data") or {}).get("claim_id")
        if cid:
            claims[cid].append(e)
    out: Outcomes = {}
    for cid, evs in claims.items():
        evs = sorted({e["id"]: e for e in evs}.values(), key=lambda e: (_utc(e["time"]), e["id"]))
        reg = [e for e in evs if e["type"] == "claim-registered"]
        markers = [
            (_ldate(e["time"]), e["data"]["marker"], e["data"]["value"])
            for e in evs
            if e["type"] == "marker-set"
        ]

        def jc_on(d: date, markers: list[tuple[date, str, str]] = markers) -> str | None:
            v = None
            for md, mk, val in markers:
                if mk == "JOBCENTRE" and md <= d:
                    v = val
            return v

        def days(t: str, iv: str | None = None, evs: list[dict[str, Any]] = evs) -> list[date]:
            return [
                _ldate(e["time"])
                for e in evs
                if e["type"] == t and (iv is None or e["data"].get("intervention") == iv)
            ]

        closed = days("claim-closed")

        def facts(iv: str, closed: list[date] = closed) -> dict[str, list[date]]:
            return {
                "conducted": days("interview-conducted", iv),
                "waived": days("interview-waived", iv),
                "deferred": days("interview-deferred", iv),
                "closed": closed,
            }

        res: list[tuple[str, str, str, tuple[str, date | None]]] = []
        clear = [e for e in evs if e["type"] == "claim-cleared"]
        if reg and clear and clear[-1]["data"]["outcome"] == "ELIGIBLE":
            r0 = reg[-1]
            start = date.fromisoformat(r0["data"]["claim_start_date"])
            benefit = r0["data"]["benefit"]
            registered = _ldate(r0["time"])
            if benefit == "IB":
                f = facts("IB_INITIAL_WFI")
                res.append(("IB_INITIAL_WFI:1", "policy", "IB",
                            decide(start + timedelta(56), start + timedelta(90), **f)))  # fmt: skip
                current: dict[str, str] = {}
                resets = []
                for md, mk, val in markers:
                    if val != current.get(mk) and md > registered:
                        resets.append(md)
                    current[mk] = val
                clock = start
                for r in sorted(resets):
                    o, c = clock + timedelta(56), clock + timedelta(90)
                    # final as of r: decided by an event dated on or before r, or closed
                    f_r = {k: [d for d in v if d <= r] for k, v in f.items()}
                    s, _ = decide(o, c, **f_r)
                    if s in ("MET", "WAIVED", "DEFERRED", "CANCELLED") or c < r:
                        break
                    clock = r
                res.append(("IB_INITIAL_WFI:1", "measured", "IB",
                            decide(clock + timedelta(56), clock + timedelta(90), **f)))  # fmt: skip
            elif benefit == "JSA":
                for iv, offset in (("JSA_13_WEEK", 91), ("JSA_26_WEEK", 182)):
                    o = start + timedelta(offset)
                    for basis in ("policy", "measured"):
                        res.append(
                            (iv + ":1", basis, "JSA", decide(o, o + timedelta(42), **facts(iv)))
                        )
            elif benefit == "IS_LP":
                f = facts("LP_WFI_REVIEW")
                for basis in ("policy", "measured"):
                    due, after = _add_months(start, 6), None
                    for seq in range(1, 50):
                        if basis == "policy":
                            c = _add_months(due, 3)
                        else:
                            c = _month_end(_add_months(due.replace(day=1), 2))
                        s, d = decide(due, c, after=after, **f)
                        res.append((f"LP_WFI_REVIEW:{seq}", basis, "LP", (s, d)))
                        if s in ("OPEN", "CANCELLED"):
                            break
                        assert d is not None
                        due, after = _add_months(d if s == "MET" else due, 6), d
        raised: dict[str, date] = {}
        for e in evs:
            if e["type"] == "lmi-doubt-raised":
                raised.setdefault(e["data"]["doubt_id"], _ldate(e["time"]))
        for doubt, o in raised.items():
            done = [
                _ldate(e["time"])
                for e in evs
                if e["type"] == "lmi-follow-up-conducted" and e["data"]["doubt_id"] == doubt
            ]
            for basis in ("policy", "measured"):
                res.append((f"LMI_FOLLOW_UP:{doubt}", basis, "LMI",
                            decide(o, add_working_days(o, 10), done, [], [], closed)))  # fmt: skip
        for wid, basis, element, (s, d) in res:
            out[(f"{cid}:{wid}", basis)] = (element, s, d, jc_on(d) if d else None)
    return out, as_of
