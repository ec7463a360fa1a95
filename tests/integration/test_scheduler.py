"""The scheduler over a real Redis: alerts to each office, outcome revisions, queries."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from idt_contract import decode_entry
from idt_contract.events import ClockTick, make_event
from services.scheduler.app import SchedulerSettings, create_app
from services.scheduler.handlers import short_id
from tests.claims import Claim, at
from tests.conftest import wait_for
from tests.helpers import OFFICES, register_offices, xadd


def tick(r: redis.Redis, day: str) -> None:
    xadd(r, make_event(ClockTick, source="/clock", time=at(day, 1), data=None, id=f"tick-{day}"))


def alerts(r: redis.Redis, office: str) -> list:
    stream = f"idt:window-alerts:{office}"
    return [decode_entry(stream, f) for _, f in r.xrange(stream)]


def kinds(r: redis.Redis, office: str) -> Counter:
    return Counter(a.data.kind.value for a in alerts(r, office))


def outcomes(r: redis.Redis) -> list:
    return [decode_entry("idt:window-outcome", f) for _, f in r.xrange("idt:window-outcome")]


def settings_for(redis_url: str, var_dir: Path, database_url: str | None) -> SchedulerSettings:
    return SchedulerSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", block_ms=50,
        database_url=database_url,
    )  # fmt: skip


@pytest.fixture
def sched(redis_url, var_dir, r, database_url):
    register_offices(r)
    with TestClient(create_app(settings_for(redis_url, var_dir, database_url))) as client:
        settle(client, *(f"office-{o[0]}" for o in OFFICES))
        yield client


def publish(r: redis.Redis, claim: Claim, start: int = 0) -> None:
    for ev in claim.events[start:]:
        xadd(r, ev)


def processed(client: TestClient, event_id: str) -> bool:
    from sqlalchemy import select
    from sqlmodel import Session

    from services.scheduler.models import TABLES

    p = TABLES.processed
    with Session(client.app.state.runtime.engine) as s:
        return s.execute(select(p.c.event_id).where(p.c.event_id == event_id)).first() is not None


def settle(client: TestClient, *event_ids: str) -> None:
    wait_for(lambda: all(processed(client, e) for e in event_ids), timeout=15)


def test_each_alert_kind_arrives_once_in_the_right_office(sched, r):
    tick(r, "2007-01-02")
    c = Claim("IB-1", benefit="IB", start="2007-01-01")  # windows 26 Feb .. 1 Apr
    publish(r, c)
    settle(sched, *(e.id for e in c.events), "tick-2007-01-02")
    assert alerts(r, "JC0101") == []  # nothing until eligibility is confirmed

    n = len(c.events)
    c.cleared("2007-01-20")
    publish(r, c, n)
    wait_for(lambda: kinds(r, "JC0101")["WINDOW_OPENED"] == 1)
    (opened,) = alerts(r, "JC0101")
    assert opened.data.opens == {
        "policy": at("2007-02-26").date(),
        "measured": at("2007-02-26").date(),
    }
    assert opened.data.closes["policy"] == at("2007-04-01").date()
    assert opened.data.bases_conflict is False

    # Redelivery of the same clearance: nothing new.
    xadd(r, c.events[-1])
    # A booking before week eight goes back to the booking office at once.
    n = len(c.events)
    c.booked("2007-01-22", slot="2007-02-12", jc="JC0102")
    c.booked("2007-01-23", slot="2007-03-06")  # Tue 6 Mar: pre-call on Mon 5 Mar
    publish(r, c, n)
    wait_for(lambda: kinds(r, "JC0102")["BOOKING_OUTSIDE_WINDOW"] == 1)
    outside = alerts(r, "JC0102")[0]
    assert outside.data.slot_date.isoformat() == "2007-02-12"
    assert "do not book before the window opens" in outside.data.detail

    tick(r, "2007-03-05")
    wait_for(lambda: kinds(r, "JC0101")["PRE_CALL_DUE"] == 1)
    n = len(c.events)
    c.fta("2007-03-06")
    publish(r, c, n)
    tick(r, "2007-03-07")
    wait_for(lambda: kinds(r, "JC0101")["REBOOK_NEEDED"] == 1)
    tick(r, "2007-03-25")  # 7 days before the close on 1 April
    wait_for(lambda: kinds(r, "JC0101")["WINDOW_CLOSING"] == 1)
    tick(r, "2007-04-02")
    wait_for(lambda: kinds(r, "JC0101")["WINDOW_MISSED"] == 1)

    # Time moves on, events are redelivered: still exactly one of each.
    tick(r, "2007-04-10")
    for ev in c.events:
        xadd(r, ev)
    settle(sched, "tick-2007-04-10")
    wait_for(lambda: r.xpending("idt:claim-cleared", "scheduler")["pending"] == 0)
    assert kinds(r, "JC0101") == Counter(
        {"WINDOW_OPENED": 1, "PRE_CALL_DUE": 1, "REBOOK_NEEDED": 1, "WINDOW_CLOSING": 1,
         "WINDOW_MISSED": 1}
    )  # fmt: skip
    assert kinds(r, "JC0102") == Counter({"BOOKING_OUTSIDE_WINDOW": 1})
    assert all(a.data.claim_id == "IB-1" for a in alerts(r, "JC0101"))


def test_marker_unallocated_goes_to_the_contact_centre(sched, r):
    tick(r, "2007-01-02")
    c = Claim("UNALLOC-1", benefit="IB", start="2007-01-01", jobcentre="CC01")
    c.cleared("2007-01-20")
    publish(r, c)
    wait_for(lambda: kinds(r, "CC01")["MARKER_UNALLOCATED"] == 1)
    (a,) = alerts(r, "CC01")
    assert "names no registered Jobcentre" in a.data.detail and a.data.office_id == "CC01"
    assert alerts(r, "JC0101") == []
    # The FCO fixes the marker: the owning Jobcentre now hears of the window.
    n = len(c.events)
    c.marker("JOBCENTRE", "JC0102", "2007-01-25")
    publish(r, c, n)
    wait_for(lambda: kinds(r, "JC0102")["WINDOW_OPENED"] == 1)
    (opened,) = alerts(r, "JC0102")
    # The reset moved the measured clock: the alert says the bases now differ.
    assert opened.data.bases_conflict is True
    assert opened.data.opens["measured"].isoformat() == "2007-03-22"  # 25 Jan + 56 days
    assert "differs from the measured" in opened.data.detail


def latest(r: redis.Redis) -> dict:
    out: dict = {}
    for o in outcomes(r):
        key = (o.data.window_id, o.data.basis)
        if key not in out or o.data.revision > out[key].data.revision:
            out[key] = o
    return out


def test_window_outcomes_are_published_and_revised_by_a_late_event(sched, r):
    c = Claim("LATE-1", benefit="IB", start="2007-01-01").cleared("2007-01-20")
    publish(r, c)
    tick(r, "2007-04-05")
    settle(sched, *(e.id for e in c.events), "tick-2007-04-05")
    # Streams are consumed independently, so an outcome decided before the marker
    # arrived is revised; wait for the settled revision to be published.
    key = ("LATE-1:IB_INITIAL_WFI:1", "policy")
    wait_for(
        lambda: (
            len(lt := latest(r)) == 2
            and key in lt
            and lt[key].data.stage is not None
            and lt[key].data.stage.value == "JOBCENTRE"
        )
    )
    before = latest(r)
    assert {o.data.outcome.value for o in before.values()} == {"MISSED"}
    policy = before[("LATE-1:IB_INITIAL_WFI:1", "policy")]
    assert policy.data.stage.value == "JOBCENTRE" and policy.data.jobcentre_id == "JC0101"
    wid = short_id("wo", "LATE-1:IB_INITIAL_WFI:1|policy", 32)
    assert policy.id == f"{wid}:{policy.data.revision}"

    # The interview record, dated inside the window, arrives late.
    n = len(c.events)
    c.conducted("2007-03-20")
    publish(r, c, n)
    wait_for(lambda: {o.data.outcome.value for o in latest(r).values()} == {"MET"})
    after = latest(r)
    for key, o in after.items():
        assert o.data.revision == before[key].data.revision + 1
        assert o.data.outcome_date.isoformat() == "2007-03-20"
        assert o.data.stage is None
    # A redelivered late event revises nothing further.
    count = len(outcomes(r))
    xadd(r, c.events[-1])
    tick(r, "2007-04-06")
    settle(sched, "tick-2007-04-06")
    wait_for(
        lambda: (
            'result="duplicate",service="scheduler",stream="idt:interview-conducted"'
            in sched.get("/metrics").text
        )
    )
    assert len(outcomes(r)) == count


def policy_outcome(r: redis.Redis, claim_id: str) -> str | None:
    """The current (highest revision) policy-basis outcome of the claim's window."""
    mine = [o for o in outcomes(r) if o.data.claim_id == claim_id and o.data.basis == "policy"]
    return max(mine, key=lambda o: o.data.revision).data.outcome.value if mine else None


def test_claims_whose_facts_are_cleared_are_reevaluated_from_their_events(sched, r):
    """docs/deployment.md's repair after an older scheduler ran beside this one: an
    event recorded without its fact (as an older replica records it) is missed, until
    facts are cleared and claims marked unevaluated; the sweeper then rebuilds the
    facts from the recorded events and corrects the outcome."""
    from sqlalchemy import text
    from sqlmodel import Session

    from idt_domain.calendar import utc_key
    from services.scheduler.models import SchEvent

    tick(r, "2007-01-02")
    c = Claim("OLD-1", benefit="IB", start="2007-01-01").cleared("2007-01-20")
    publish(r, c)
    settle(sched, *(e.id for e in c.events), "tick-2007-01-02")
    held = c.conducted("2007-03-05").events[-1]
    engine = sched.app.state.runtime.engine
    with Session(engine) as s, s.begin():  # an older replica: the event, no fact
        s.add(SchEvent(
            event_id=held.id, claim_id="OLD-1", type=held.type, time_key=utc_key(held.time),
            payload=held.model_dump_json(exclude_none=True).encode(),
        ))  # fmt: skip
    tick(r, "2007-04-10")  # after the window closed, from the facts: no interview
    wait_for(lambda: policy_outcome(r, "OLD-1") == "MISSED", timeout=15)
    with Session(engine) as s, s.begin():
        s.execute(text("UPDATE sch_claims SET facts = NULL, evaluated_as_of = NULL"))
    wait_for(lambda: policy_outcome(r, "OLD-1") == "MET", timeout=15)


def test_claim_and_jobcentre_queries(sched, r):
    tick(r, "2007-03-01")
    a = Claim("Q-1", benefit="IB", start="2007-01-01").cleared("2007-01-20")
    a.booked("2007-01-25", slot="2007-03-10")
    b = Claim("Q-2", benefit="JSA", start="2007-01-01").cleared("2007-01-10")
    publish(r, a)
    publish(r, b)
    settle(sched, *(e.id for e in a.events + b.events), "tick-2007-03-01")

    view = sched.get("/v1/claims/Q-1").json()
    assert view["benefit"] == "IB" and view["as_of"] == "2007-03-01"
    assert [e["type"] for e in view["timeline"]][:2] == ["claim-registered", "marker-set"]
    assert {(w["basis"], w["status"]) for w in view["windows"]} == {
        ("policy", "OPEN"),
        ("measured", "OPEN"),
    }
    assert view["windows"][0]["booking"] == {"slot_date": "2007-03-10", "state": "BOOKED"}
    assert sched.get("/v1/claims/NOPE").status_code == 404

    queue = sched.get("/v1/jobcentres/JC0101/windows", params={"status": "open"}).json()
    ids = [w["window_id"] for w in queue["windows"]]
    # Sorted by close date: IB (1 Apr) before JSA 13-week (14 May) and 26-week.
    assert ids == ["Q-1:IB_INITIAL_WFI:1", "Q-2:JSA_13_WEEK:1", "Q-2:JSA_26_WEEK:1"]
    assert queue["windows"][0]["days_left"] == 31
    closing = sched.get("/v1/jobcentres/JC0101/windows", params={"status": "closing"}).json()
    assert closing["count"] == 0
    tick(r, "2007-04-02")
    settle(sched, "tick-2007-04-02")
    missed = sched.get("/v1/jobcentres/JC0101/windows", params={"status": "missed"}).json()
    assert [w["window_id"] for w in missed["windows"]] == ["Q-1:IB_INITIAL_WFI:1"]
    assert missed["windows"][0]["stage"] == "JOBCENTRE"
    bad = sched.get("/v1/jobcentres/JC0101/windows", params={"status": "late"})
    assert bad.status_code == 422
    assert sched.get("/health").json()["status"] == "ok"


SWEEP_CLAIMS = [f"SWEEP-{i}" for i in range(7)]


@pytest.fixture
def sweeping(r, redis_url, var_dir, database_url, monkeypatch):
    """A scheduler whose ticks re-evaluate one due claim themselves and whose
    sweeper does two a transaction, with seven IB claims whose windows close on
    1 April, their WINDOW_OPENED alerts sent."""
    from services.scheduler import handlers

    monkeypatch.setattr(handlers, "TICK_INLINE", 1)
    monkeypatch.setattr(handlers, "SWEEP_CHUNK", 2)
    register_offices(r)
    with TestClient(create_app(settings_for(redis_url, var_dir, database_url))) as sched:
        tick(r, "2007-01-02")
        for claim_id in SWEEP_CLAIMS:
            c = Claim(claim_id, benefit="IB", start="2007-01-01").cleared("2007-01-20")
            publish(r, c)
        wait_for(lambda: kinds(r, "JC0101")["WINDOW_OPENED"] == len(SWEEP_CLAIMS))
        yield sched


def closing_alerts(r: redis.Redis) -> set[str]:
    return {a.data.claim_id for a in alerts(r, "JC0101") if a.data.kind == "WINDOW_CLOSING"}


def counter(client: TestClient, name: str) -> float:
    lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(name + "{")]
    return float(lines[0].split()[-1]) if lines else 0.0


def cannot_evaluate(monkeypatch: pytest.MonkeyPatch, claim_id: str) -> None:
    """The rules raise for this claim (and only this one) from now on."""
    from services.scheduler import handlers

    real = handlers.evaluate

    def broken(history, as_of, config=None):  # type: ignore[no-untyped-def]
        if history.claim_id == claim_id:
            raise RuntimeError("a claim the rules cannot evaluate")
        return real(history, as_of, config)

    monkeypatch.setattr(handlers, "evaluate", broken)


def test_claims_a_tick_makes_due_beyond_its_own_share_are_swept(sweeping, r):
    """A tick re-evaluates only `TICK_INLINE` claims itself; the sweeper does the rest
    a chunk per transaction, so every claim still gets its alert."""
    tick(r, "2007-03-25")  # 7 days before every window's close on 1 April
    wait_for(lambda: len(closing_alerts(r)) == len(SWEEP_CLAIMS), timeout=15)
    assert closing_alerts(r) == set(SWEEP_CLAIMS)
    assert counter(sweeping, "idt_claims_swept_total") >= 6  # all but the tick's own one


def test_a_claim_that_cannot_be_reevaluated_does_not_hold_back_the_sweep(sweeping, r, monkeypatch):
    cannot_evaluate(monkeypatch, "SWEEP-3")
    tick(r, "2007-03-25")
    wait_for(lambda: len(closing_alerts(r)) == len(SWEEP_CLAIMS) - 1, timeout=15)
    assert closing_alerts(r) == set(SWEEP_CLAIMS) - {"SWEEP-3"}
    assert counter(sweeping, "idt_sweep_failures_total") >= 1


def test_a_claim_that_cannot_be_reevaluated_does_not_stop_business_time(sweeping, r, monkeypatch):
    """The claim a tick re-evaluates itself (SWEEP-0: due first) fails: the tick
    still moves business time, and the sweeper does the rest, that claim set aside."""
    cannot_evaluate(monkeypatch, "SWEEP-0")
    tick(r, "2007-03-25")
    wait_for(lambda: len(closing_alerts(r)) == len(SWEEP_CLAIMS) - 1, timeout=15)
    assert closing_alerts(r) == set(SWEEP_CLAIMS) - {"SWEEP-0"}
    assert sweeping.get("/v1/claims/SWEEP-1").json()["as_of"] == "2007-03-25"
    wait_for(lambda: r.xpending("idt:clock-tick", "scheduler")["pending"] == 0)
    assert r.xlen("idt:dead-letters") == 0


def test_sweep_chunks_wait_for_claim_events_but_are_never_starved(sweeping, r, monkeypatch):
    """Before each chunk the sweeper asks the consumer to be quiet (no claim batch
    in hand), so that the claims a tick makes due never hold claim events back.
    Against a consumer that is never quiet (a backlog), it waits only the bounded
    time it asked for, and every due claim is still swept."""
    from services.scheduler.app import QUIET_WAIT_MIN_S

    consumer = sweeping.app.state.runtime.consumer
    asked: list[float] = []

    async def never_quiet(within_s: float) -> bool:  # a batch always in hand
        asked.append(within_s)
        await asyncio.sleep(within_s)
        return False

    monkeypatch.setattr(consumer, "quiet", never_quiet)
    tick(r, "2007-03-25")
    wait_for(lambda: len(closing_alerts(r)) == len(SWEEP_CLAIMS), timeout=15)
    assert counter(sweeping, "idt_claims_swept_total") >= 6
    # One chunk of 2 claims after each ask: at least three asks for six claims.
    assert len(asked) >= 3
    assert all(QUIET_WAIT_MIN_S <= w < 5 for w in asked)


def test_the_sweep_pauses_after_each_chunk_for_twice_its_time(sweeping, r, monkeypatch, caplog):
    """After a chunk the sweeper waits SWEEP_PAUSE_FACTOR times as long as the chunk
    held the write lock, so that the claims a tick makes due take at most a third
    of the scheduler's time, the claim events beside them the rest. Each sweep
    logs what it did."""
    from services.scheduler import app, handlers

    real = handlers.Scheduler.sweep_due
    started: list[float] = []

    def slow_chunk(self, session, limit=None, skip=frozenset()):  # type: ignore[no-untyped-def]
        began = time.monotonic()
        swept = real(self, session, limit, skip)
        if swept:
            started.append(began)
            time.sleep(0.2)  # the chunk holds the write lock 0.2 s at least
        return swept

    monkeypatch.setattr(handlers.Scheduler, "sweep_due", slow_chunk)
    caplog.set_level(logging.INFO, logger="idt.scheduler")
    tick(r, "2007-03-25")
    wait_for(lambda: len(closing_alerts(r)) == len(SWEEP_CLAIMS), timeout=20)
    assert len(started) == 3  # six claims, two a chunk (the tick did the seventh)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # The chunk's 0.2 s, then a pause of at least twice that.
    assert all(g >= 0.2 * (1 + app.SWEEP_PAUSE_FACTOR) - 0.02 for g in gaps), gaps
    wait_for(lambda: "swept 6 due claims" in caplog.text)
    # Three full chunks, then one that found nothing due (a transaction all the same).
    logged = re.search(r"\(4 chunks, holding the write lock ([\d.]+) s in all "
                       r"and ([\d.]+) s at most\)", caplog.text)  # fmt: skip
    assert logged is not None, caplog.text
    assert float(logged[1]) >= 0.6 and float(logged[2]) >= 0.2


def test_a_scrape_under_way_holds_no_commit_back(sched, r, monkeypatch):
    """/metrics reads the windows in a snapshot that takes no lock: with a scrape
    half-way through its reading, a clearance is still committed and alerted. (On
    SQLite every transaction used to begin IMMEDIATE, taking the write lock, and
    a scrape held the scheduler's commits for as long as it read: 0.1-4 s at 1M
    events.)"""
    from prometheus_client import generate_latest

    from services.scheduler import handlers

    real = handlers.open_windows_by_district
    inside, release = threading.Event(), threading.Event()

    def paused(session, closing_days):  # type: ignore[no-untyped-def]
        found = real(session, closing_days)  # the read has begun
        inside.set()
        assert release.wait(30), "the test never let the scrape finish"
        return found

    tick(r, "2007-01-02")
    settle(sched, "tick-2007-01-02")
    monkeypatch.setattr(handlers, "open_windows_by_district", paused)
    registry = sched.app.state.runtime.metrics.registry
    scrape = threading.Thread(target=generate_latest, args=(registry,))
    scrape.start()
    try:
        assert inside.wait(10)
        publish(r, Claim("SCRAPED-1", benefit="IB", start="2007-01-01").cleared("2007-01-20"))
        wait_for(lambda: kinds(r, "JC0101")["WINDOW_OPENED"] == 1, timeout=10)
        assert scrape.is_alive()  # still reading meanwhile
    finally:
        release.set()
        scrape.join(10)
