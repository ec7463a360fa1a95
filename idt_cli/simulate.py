"""`idt simulate`: a synthetic national log of CloudEvents, one JSON per line.

The log is what the bus would carry over a span of business days: the office
registry's `office-registered` events first, then every event of the demo
planner's claims (through `idt_cli.demo.as_events`, i.e. what the intakes
publish), and a `clock-tick` at 23:30 London closing every day of the span, all
sorted by event time. Events planned after the span's last day have not happened
yet and are not in the log.

Deterministic: the same registry, claim count, seed and span give a byte-identical
log. Event ids are `sim-<seed>-<counter>`; customer references are the keyed HMAC
of generated NI numbers under a fixed, public demo key, so no NI number is ever
written.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from pathlib import Path

from idt_contract import Envelope, encode
from idt_contract.events import OfficeKind, OfficeRegistered
from idt_domain.calendar import add_months, is_working_day

from .demo import DemoPlanner, as_events, at

#: The key the simulator pseudonymises its (generated) NI numbers with. Public and
#: fixed on purpose: a simulated log is reproducible, and holds no personal data.
DEMO_CUSTOMER_REF_KEY = b"idt simulate: fixed demo key for synthetic NI numbers"

#: Default first day: the start of the financial year 2007-08 (the report's era).
DEFAULT_START = date(2007, 4, 1)


@dataclass(frozen=True)
class SimulationSpec:
    claims: int
    seed: int
    start: date
    days: int

    @property
    def end(self) -> date:
        """The last day of the span."""
        return self.start + timedelta(days=self.days - 1)


def a_year_from(start: date) -> int:
    """The days from `start` up to the day before the same date a year later."""
    return (add_months(start, 12) - start).days


def offices_by_kind(registry: Sequence[OfficeRegistered]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {kind.value: [] for kind in OfficeKind}
    for ev in registry:
        out[ev.data.kind.value].append(ev.data.office_id)
    return out


def registrations_per_day(spec: SimulationSpec) -> Counter[date]:
    """Exactly `spec.claims` registrations spread at random over the working days
    of the span (Contact Centres register no claims at weekends or on bank holidays)."""
    days = [spec.start + timedelta(days=i) for i in range(spec.days)]
    working = [d for d in days if is_working_day(d)] or days
    rnd = random.Random(f"idt-simulate-registrations:{spec.seed}")
    return Counter(rnd.choice(working) for _ in range(spec.claims))


def simulate(
    spec: SimulationSpec,
    registry: Sequence[OfficeRegistered],
    on_day: Callable[[date], None] | None = None,
) -> Iterator[Envelope]:
    """The log's events in time order: the registry (dated the span's first moment,
    London), then each day's events sorted by event time, its tick last."""
    if spec.days < 1:
        raise ValueError("the span needs at least one day")
    if spec.claims < 0:
        raise ValueError("the number of claims cannot be negative")
    counter = 0

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return f"sim-{spec.seed}-{counter:08d}"

    opening = at(spec.start, 0, 0)
    for office in registry:
        yield office.model_copy(update={"time": opening})
    planner = DemoPlanner(offices_by_kind(registry), spec.seed, claim_prefix="SIM")
    per_day = registrations_per_day(spec)
    for i in range(spec.days):
        today = spec.start + timedelta(days=i)
        events = [
            ev
            for step in planner.plan(today, per_day.get(today, 0))
            for ev in as_events(step, new_id, DEMO_CUSTOMER_REF_KEY)
        ]
        # Stable: events at the same instant keep the order they were planned in.
        events.sort(key=lambda ev: ev.time.astimezone(UTC))
        yield from events
        if on_day is not None:
            on_day(today)


def write_log(events: Iterator[Envelope], path: Path) -> dict[str, int]:
    """Write one wire-format JSON line per event, atomically (a temporary file
    renamed over `path`); the number of events of each type."""
    counts: Counter[str] = Counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            for ev in events:
                f.write(encode(ev) + b"\n")
                counts[ev.type] += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dict(counts)
