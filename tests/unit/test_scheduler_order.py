"""Order independence (issue 3): the scheduler's final outcomes are a pure function
of the set of events and the business time, whatever order and batching the events
arrive in, with duplicates — checked through the real handlers and migrated store."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import date, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine, select

from idt_contract import encode
from idt_contract.events import (
    ClockTick,
    OfficeKind,
    OfficeRegistered,
    OfficeRegisteredData,
    make_event,
)
from idt_domain.calendar import london_date
from idt_runtime.db import migrate
from services.scheduler.app import SPEC
from services.scheduler.domain import ClaimHistory, evaluate
from services.scheduler.handlers import CLAIM_EVENT_TYPES, Scheduler
from services.scheduler.models import TABLES, SchWindow
from tests import oracle
from tests.claims import Claim, at

JOBCENTRES = ("JC0101", "JC0102")
IV = {"IB": ["IB_INITIAL_WFI"], "IS_LP": ["LP_WFI_REVIEW"], "JSA": ["JSA_13_WEEK", "JSA_26_WEEK"]}


_TEMPLATE: list[sqlite3.Connection] = []


def fresh_engine():
    """A migrated in-memory store: migrated once, then copied with SQLite's backup API."""
    if not _TEMPLATE:
        holder: list[sqlite3.Connection] = []

        def first() -> sqlite3.Connection:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            holder.append(conn)
            return conn

        template = create_engine("sqlite://", creator=first, poolclass=StaticPool)
        migrate(template, SPEC.migrations, "sch_alembic_version")
        _TEMPLATE.append(holder[0])

    def clone() -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        _TEMPLATE[0].backup(conn)
        return conn

    return create_engine("sqlite://", creator=clone, poolclass=StaticPool)


def offices():
    return [
        make_event(
            OfficeRegistered, source="/registry", time=at("2006-01-01"), id=f"office-{oid}",
            data=OfficeRegisteredData(office_id=oid, kind=kind, name=oid, district="D", region="R"),
        )
        for oid, kind in [("CC01", OfficeKind.CONTACT_CENTRE), ("JC0101", OfficeKind.JOBCENTRE),
                          ("JC0102", OfficeKind.JOBCENTRE)]
    ]  # fmt: skip


@st.composite
def claim_histories(draw):
    benefit = draw(st.sampled_from(["IB", "IS_LP", "JSA"]))
    start = date(2007, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    claim = Claim(
        "P-1", benefit=benefit, start=start.isoformat(),
        jobcentre=draw(st.sampled_from(["JC0101", "CC01", None])),
    )  # fmt: skip

    def day() -> str:
        return (start + timedelta(days=draw(st.integers(0, 420)))).isoformat()

    ivs = IV[benefit]
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(
            st.sampled_from(
                ["marker", "cleared", "conducted", "waived", "deferred", "booked", "fta",
                 "lmi", "lmi_done", "closed", "conducted"]
            )
        )  # fmt: skip
        if kind == "marker":
            which = draw(st.sampled_from(["JOBCENTRE", "JOBCENTRE", "PRIMARY_BENEFIT"]))
            value = draw(
                st.sampled_from(["JC0101", "JC0102", "CC01"])
                if which == "JOBCENTRE"
                else st.sampled_from(["OTHER", "INCAPACITATED_DISABLED", "LONE_PARENT"])
            )
            claim.marker(which, value, day(), hour=draw(st.integers(8, 17)))
        elif kind == "cleared":
            claim.cleared(day(), draw(st.sampled_from(["ELIGIBLE", "ELIGIBLE", "DISALLOWED"])))
        elif kind in ("conducted", "waived", "deferred"):
            getattr(claim, kind)(day(), iv=draw(st.sampled_from(ivs)))
        elif kind == "booked":
            claim.booked(day(), slot=day(), iv=draw(st.sampled_from(ivs)))
        elif kind == "fta":
            claim.fta(day(), iv=draw(st.sampled_from(ivs)))
        elif kind == "lmi":
            claim.lmi(day(), doubt=draw(st.sampled_from(["D1", "D2"])))
        elif kind == "lmi_done":
            claim.lmi_done(day(), doubt=draw(st.sampled_from(["D1", "D2"])))
        else:
            claim.closed(day())
    ticks = [
        make_event(ClockTick, source="/clock", time=at(d, 1), data=None, id=f"tick-{d}")
        for d in sorted({day() for _ in range(draw(st.integers(1, 5)))})
    ]
    return claim, ticks


def replay(arrivals, seed: int) -> tuple[dict, dict]:
    """Feed arrivals through the appliers in random batches; return the stored
    windows and the latest published outcome per (window, basis)."""
    rnd = random.Random(seed)
    engine = fresh_engine()
    scheduler = Scheduler()
    appliers = scheduler.appliers()
    i = 0
    while i < len(arrivals):
        n = rnd.randint(1, 4)
        batch = arrivals[i : i + n]
        i += n
        by_stream: dict[str, list] = {}
        for ev in batch:
            by_stream.setdefault(f"idt:{ev.type}", []).append(ev)
        for stream, evs in by_stream.items():
            with Session(engine) as s, s.begin():
                appliers[stream](s, evs)
    with Session(engine) as s:
        stored = {
            (w.window_id, w.basis): (w.status, w.outcome_date, w.jobcentre_id, w.opens, w.closes)
            for w in s.exec(select(SchWindow).where(SchWindow.exists_now == True)).all()  # noqa: E712
        }
        latest: dict = {}
        for (payload,) in s.execute(select(TABLES.outbox.c.payload)).all():
            doc = json.loads(payload)
            if doc["type"] != "window-outcome":
                continue
            d = doc["data"]
            key = (d["window_id"], d["basis"])
            if key not in latest or d["revision"] > latest[key][0]:
                latest[key] = (d["revision"], d["outcome"], d.get("outcome_date"))
    engine.dispose()
    # PENDING and WITHDRAWN count nowhere: a window published then withdrawn in
    # one arrival order is the same, for every count, as one never created.
    effective = {k: v[1:] for k, v in latest.items() if v[1] not in ("PENDING", "WITHDRAWN")}
    return stored, effective


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claim_histories(), st.randoms(use_true_random=False), st.integers(0, 2**16))
def test_outcomes_do_not_depend_on_arrival_order_or_duplicates(history, rnd, seed):
    claim, ticks = history
    assert {e.type for e in claim.events} <= set(CLAIM_EVENT_TYPES)
    ordered = offices() + claim.events + ticks
    shuffled = list(ordered) + [rnd.choice(ordered) for _ in range(rnd.randint(0, 5))]
    rnd.shuffle(shuffled)

    a_windows, a_outcomes = replay(ordered, seed)
    b_windows, b_outcomes = replay(shuffled, seed + 1)
    assert a_windows == b_windows
    assert a_outcomes == b_outcomes
    assert set(a_outcomes) <= set(a_windows)

    # And both equal the rules applied once to the whole set at the final business time.
    as_of = max(london_date(t.time) for t in ticks)
    expected = {
        (w.window_id, w.basis): (w.status.value, w.outcome_date, w.jobcentre_id, w.opens, w.closes)
        for w in evaluate(ClaimHistory.from_events(claim.claim_id, claim.events), as_of)
    }
    assert a_windows == expected
    # The latest published revision of every window is its final outcome.
    for key, (status, outcome_date, *_rest) in expected.items():
        if status in ("MET", "WAIVED", "DEFERRED", "MISSED", "CANCELLED"):
            assert a_outcomes[key] == (status, outcome_date.isoformat())
        else:
            assert key not in a_outcomes


def test_maximum_length_ids_never_break_the_scheduler():
    """Claim and doubt ids at the contract's limits, bookings with UUID ids: every
    id the scheduler derives stays within the CloudEvent id limit."""
    long_claim = "L" + "x" * 63
    claim = Claim(long_claim, benefit="JSA", start="2007-01-01").cleared("2007-01-10")
    claim.booked("2007-01-12", slot="2007-03-01", iv="JSA_13_WEEK")  # outside: alert
    claim.booked("2007-03-20", slot="2007-04-10", iv="JSA_13_WEEK").fta("2007-04-10", "JSA_13_WEEK")
    claim.lmi("2007-02-01", doubt="D" * 64)
    for ev in claim.events:
        object.__setattr__(ev, "id", f"{ev.id}-{'u' * 36}")  # long event ids, as UUIDs
    ticks = [
        make_event(ClockTick, source="/clock", time=at(day, 1), data=None, id=f"tick-{day}")
        for day in ("2007-02-28", "2007-04-09", "2007-04-11", "2007-06-01")
    ]
    engine = fresh_engine()
    appliers = Scheduler().appliers()
    for ev in offices() + claim.events + ticks:
        with Session(engine) as s, s.begin():
            appliers[f"idt:{ev.type}"](s, [ev])
    with Session(engine) as s:
        payloads = [json.loads(p) for (p,) in s.execute(select(TABLES.outbox.c.payload)).all()]
    kinds = {p["data"].get("kind") for p in payloads if p["type"] == "window-alert"}
    assert {"BOOKING_OUTSIDE_WINDOW", "PRE_CALL_DUE", "REBOOK_NEEDED"} <= kinds
    assert any(p["type"] == "window-outcome" for p in payloads)
    assert max(len(p["id"]) for p in payloads) <= 128


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claim_histories())
def test_the_rules_agree_with_an_independent_oracle(history):
    """services/scheduler/domain.py against tests/oracle.py, written separately from
    the spec: every final outcome, its date and its Jobcentre."""
    claim, ticks = history
    docs = [json.loads(encode(e)) for e in claim.events + ticks]
    expected, as_of = oracle.window_outcomes(docs)
    ours = {
        (w.window_id, w.basis): (w.element, w.status.value, w.outcome_date, w.jobcentre_id)
        for w in evaluate(ClaimHistory.from_events(claim.claim_id, claim.events), as_of)
    }

    def final(outcomes):
        return {k: v for k, v in outcomes.items() if v[1] in oracle.FINAL}

    assert final(ours) == final(expected)
