"""The scheduler keeps each claim's facts (`domain.fact_of`) instead of re-parsing
its CloudEvents: the facts, through their JSON round trip, must give exactly the
history the events give, and claims stored before facts were kept must be
re-evaluated exactly as if they had them."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from idt_cli.demo import at
from idt_cli.offices import DEFAULT_OFFICES, read_registry
from idt_cli.simulate import SimulationSpec, a_year_from, simulate
from idt_contract import Envelope, stream_for
from idt_contract.events import ClockTick, make_event
from services.scheduler.domain import ClaimHistory, evaluate, fact_of
from services.scheduler.handlers import Scheduler
from services.scheduler.models import SchClaim, SchWindow
from tests.unit.test_scheduler_order import fresh_engine

START = date(2007, 1, 1)


def simulated(claims: int = 150, seed: int = 11) -> list[Envelope]:
    parsed = read_registry(DEFAULT_OFFICES, time=at(START, 0))
    assert parsed.ok
    return list(simulate(SimulationSpec(claims, seed, START, a_year_from(START)), parsed.events))


def by_claim(events: list[Envelope]) -> dict[str, list[Envelope]]:
    out: dict[str, list[Envelope]] = defaultdict(list)
    for ev in events:
        claim_id = getattr(getattr(ev, "data", None), "claim_id", None)
        if claim_id:
            out[claim_id].append(ev)
    return out


def test_stored_facts_give_the_history_the_events_give() -> None:
    claims = by_claim(simulated())
    assert len(claims) > 100
    for claim_id, events in claims.items():
        stored = json.loads(json.dumps([f for ev in events if (f := fact_of(ev))]))
        from_facts = ClaimHistory.from_facts(claim_id, reversed(stored + stored[:2]))
        assert from_facts == ClaimHistory.from_events(claim_id, events), claim_id
        assert evaluate(from_facts, date(2007, 9, 1)) == evaluate(
            ClaimHistory.from_events(claim_id, events), date(2007, 9, 1)
        )


def windows(engine) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        rows = s.exec(select(SchWindow).order_by(SchWindow.window_id, SchWindow.basis)).all()
        return [(r.window_id, r.basis, r.status, r.outcome_date, r.revision) for r in rows]


def apply(engine, events: list[Envelope]) -> None:  # type: ignore[no-untyped-def]
    sch = Scheduler()
    appliers = sch.appliers()
    with Session(engine) as s, s.begin():
        groups: dict[str, list[Envelope]] = defaultdict(list)
        for ev in events:
            groups[stream_for(ev.type)].append(ev)
        for stream, evs in groups.items():
            appliers[stream](s, evs)


def test_claims_stored_before_facts_are_read_from_their_events() -> None:
    events = [ev for ev in simulated(60, 5) if ev.time < at(date(2007, 5, 1), 0)]
    tick = make_event(ClockTick, source="/clock", time=at(date(2007, 8, 1), 1), data=None, id="t")
    with_facts, legacy = fresh_engine(), fresh_engine()  # type: ignore[no-untyped-call]
    for engine in (with_facts, legacy):
        apply(engine, events)
    with Session(legacy) as s, s.begin():  # as a store migrated from before facts
        s.execute(update(SchClaim).values(facts=None))
    for engine in (with_facts, legacy):
        apply(engine, [tick])
    assert windows(legacy) == windows(with_facts)
    assert {w[2] for w in windows(legacy)} >= {"MISSED", "MET"}
    with Session(legacy) as s:  # the claims the tick re-evaluated have their facts now
        rows = s.exec(
            select(SchClaim.facts).where(SchClaim.evaluated_as_of == date(2007, 8, 1))
        ).all()
        assert rows and all(f is not None for f in rows)
