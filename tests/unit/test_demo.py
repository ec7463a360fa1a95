from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, timedelta

import pytest

from idt_cli.demo import (
    DEFAULT_REGISTRY,
    Bus,
    Clear,
    DemoPlanner,
    Emit,
    FixMarker,
    Http,
    Receive,
    ReceiveEvidence,
    Register,
    RequestEvidence,
    Step,
    _nino,
    as_action,
    as_events,
    read_offices,
)
from idt_contract import encode
from idt_contract.events import ClaimCleared, ClaimRegistered, MarkerSet
from services.contact_centre.domain import customer_ref, normalise_nino


def plan(seed: int, days: int = 120) -> list:
    planner = DemoPlanner(read_offices(DEFAULT_REGISTRY), seed, claims_per_day=6)
    start = date(2025, 1, 6)
    return [a for i in range(days) for a in planner.day(start + timedelta(days=i))]


def test_the_demo_is_deterministic_for_a_seed():
    a, b = plan(7), plan(7)
    assert [type(x).__name__ for x in a] == [type(x).__name__ for x in b]
    assert [x.body for x in a if isinstance(x, Http)] == [x.body for x in b if isinstance(x, Http)]


def test_every_generated_ni_number_is_valid():
    rnd = random.Random(1)
    for _ in range(5000):
        normalise_nino(_nino(rnd))


def test_a_day_ends_with_its_clock_tick_and_covers_every_stage():
    actions = plan(3)
    ticks = [a for a in actions if isinstance(a, Bus) and a.event.type == "clock-tick"]
    assert len(ticks) == 120
    types = {a.event.type for a in actions if isinstance(a, Bus)}
    assert {"interview-booked", "interview-conducted", "marker-set", "clock-tick"} <= types
    paths = {a.path.split("/")[-1] for a in actions if isinstance(a, Http)}
    assert {"claims", "received", "clearance", "JOBCENTRE"} <= paths


def steps(seed: int, days: int = 120) -> list[Step]:
    planner = DemoPlanner(read_offices(DEFAULT_REGISTRY), seed, claims_per_day=6)
    start = date(2025, 1, 6)
    return [s for i in range(days) for s in planner.plan(start + timedelta(days=i))]


def ids() -> Callable[[], str]:
    counter = iter(range(1, 1_000_000))
    return lambda: f"t-{next(counter)}"


def test_the_live_demo_and_the_log_deliver_the_same_steps():
    """One plan, two deliveries: what the live demo asks the intakes to do is what
    the log says the intakes published."""
    key = b"test key"
    for step in steps(5):
        action, events = as_action(step), as_events(step, ids(), key)
        if isinstance(step, Emit):
            assert isinstance(action, Bus) and len(events) == 1
            assert encode(action.event).replace(action.event.id.encode(), b"") == encode(
                events[0]
            ).replace(events[0].id.encode(), b"")
        elif isinstance(step, Register):
            assert isinstance(action, Http) and action.path == "/v1/claims"
            assert action.body["nino"] == step.nino
            reg, primary, jobcentre = events
            assert isinstance(reg, ClaimRegistered)
            assert reg.data.customer_ref == customer_ref(step.nino, key)
            assert step.nino not in b"".join(encode(e) for e in events).decode()
            assert (primary.data.marker.value, jobcentre.data.value) == (
                "PRIMARY_BENEFIT",
                action.body["jobcentre_id"],
            )
            assert {e.time for e in events} == {step.at}
        elif isinstance(step, FixMarker):
            (marker,) = events
            assert isinstance(marker, MarkerSet) and action.method == "PUT"
            assert marker.data.value == action.body["value"] == step.jobcentre_id
        elif isinstance(step, Clear):
            (cleared,) = events
            assert isinstance(cleared, ClaimCleared) and action.path.endswith("/clearance")
            assert cleared.data.received_date == step.received_date
            assert cleared.data.outcome.value == action.body["outcome"]
        else:  # receipt and evidence: the BDC's own state, nothing on the bus
            assert isinstance(step, Receive | RequestEvidence | ReceiveEvidence)
            assert isinstance(action, Http) and action.service == "bdc"
            assert events == []


def test_claims_are_registered_on_working_days_and_days_go_in_order():
    planner = DemoPlanner(read_offices(DEFAULT_REGISTRY), 1, claims_per_day=10)
    saturday = planner.plan(date(2025, 1, 4))
    assert [type(s) for s in saturday] == [Emit]  # only the day's tick
    christmas = planner.plan(date(2025, 12, 25))
    assert not any(isinstance(s, Register) for s in christmas)
    assert any(isinstance(s, Register) for s in planner.plan(date(2025, 12, 29)))
    with pytest.raises(ValueError, match="in order"):
        planner.plan(date(2025, 12, 29))
    # Every step of a day happens on that day, the tick last.
    for day_steps in (planner.plan(date(2025, 12, 30)), planner.plan(date(2025, 12, 31))):
        assert len({s.at.date() for s in day_steps}) == 1
        assert max(day_steps, key=lambda s: s.at) is day_steps[-1]
