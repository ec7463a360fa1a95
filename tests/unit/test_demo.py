from __future__ import annotations

import random
from datetime import date, timedelta

from idt_cli.demo import DEFAULT_REGISTRY, Bus, DemoPlanner, Http, _nino, read_offices
from services.contact_centre.domain import normalise_nino


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
