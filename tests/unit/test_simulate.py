"""`idt simulate`: a deterministic, realistic synthetic log in the contract's wire format."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import idt_cli.demo as demo
from idt_cli.demo import LEGACY_SOURCE
from idt_cli.main import app
from idt_cli.offices import DEFAULT_OFFICES, read_registry
from idt_cli.simulate import (
    DEMO_CUSTOMER_REF_KEY,
    SimulationSpec,
    a_year_from,
    registrations_per_day,
    simulate,
    write_log,
)
from idt_contract import EVENT_TYPES, decode, encode
from idt_contract.events import ClaimCleared, ClaimRegistered, MarkerSet
from idt_domain.calendar import LONDON, is_bank_holiday, is_working_day, london_date
from services.contact_centre.domain import customer_ref

START = date(2007, 4, 1)
CLAIMS = 300
SEED = 42

#: An NI number anywhere in a text: two letters, six digits (in pairs or not), A-D.
NINO = re.compile(rb"(?i)(?<![A-Z])[A-Z]{2}[ -]?\d{2}[ -]?\d{2}[ -]?\d{2}[ -]?[A-D](?![A-Z0-9])")
#: The event types a log of the inputs holds (the scheduler's outputs excluded).
INPUT_TYPES = set(EVENT_TYPES) - {"window-alert", "window-outcome"}


def registry(start: date = START):  # type: ignore[no-untyped-def]
    parsed = read_registry(DEFAULT_OFFICES, time=demo.at(start, 0))
    assert parsed.ok
    return parsed.events


def write(tmp_path: Path, name: str, *, claims: int = CLAIMS, seed: int = SEED) -> Path:
    spec = SimulationSpec(claims, seed, START, a_year_from(START))
    path = tmp_path / name
    write_log(simulate(spec, registry()), path)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A year's log, and every NI number the planner generated for it."""
    ninos: list[str] = []
    original = demo._nino

    def recording(rnd):  # type: ignore[no-untyped-def]
        nino = original(rnd)
        ninos.append(nino)
        return nino

    demo._nino = recording  # type: ignore[assignment]
    try:
        path = write(tmp_path_factory.mktemp("sim"), "year.jsonl")
    finally:
        demo._nino = original  # type: ignore[assignment]
    return path, ninos


@pytest.fixture(scope="module")
def lines(generated: tuple[Path, list[str]]) -> list[bytes]:
    return generated[0].read_bytes().splitlines()


@pytest.fixture(scope="module")
def events(lines: list[bytes]) -> list:
    return [decode(line) for line in lines]


def test_the_same_seed_gives_the_same_bytes(tmp_path, generated):
    again = write(tmp_path, "again.jsonl")
    assert again.read_bytes() == generated[0].read_bytes()
    other = write(tmp_path, "other.jsonl", seed=SEED + 1)
    assert other.read_bytes() != again.read_bytes()


def test_every_line_is_a_contract_event_in_its_exact_wire_form(lines, events):
    assert len(lines) > 2000
    for line, event in zip(lines, events, strict=True):
        assert encode(event) == line
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"sim-{SEED}-") for i in ids if not i.startswith("office-"))


def test_no_ni_number_anywhere_in_the_log(generated, lines, events):
    path, ninos = generated
    assert len(ninos) == CLAIMS
    raw = path.read_bytes()
    for nino in ninos:
        spaced = f"{nino[:2]} {nino[2:4]} {nino[4:6]} {nino[6:8]} {nino[8]}"
        assert nino.encode() not in raw and spaced.encode() not in raw
    refs = {e.data.customer_ref for e in events if isinstance(e, ClaimRegistered)}
    # Each registration's reference is the keyed HMAC of a generated NI number.
    assert refs == {customer_ref(n, DEMO_CUSTOMER_REF_KEY) for n in ninos}
    assert all(re.fullmatch(r"cr_[0-9a-f]{40}", ref) for ref in refs)
    # No text anywhere (references aside: 40 hex digits can hold such a run) reads
    # like an NI number.
    for line in lines:
        doc = json.loads(line)
        ref = doc.get("data", {}).get("customer_ref") if doc.get("data") else None
        text = line.replace(ref.encode(), b"") if ref else line
        assert not NINO.search(text), line


def test_a_tick_at_23_30_closes_every_day_of_the_span(events):
    ticks = [e for e in events if e.type == "clock-tick"]
    days = [london_date(t.time) for t in ticks]
    span = a_year_from(START)
    assert span == 366  # 2008 is a leap year
    assert days == [START + timedelta(days=i) for i in range(span)]
    assert all(t.time.astimezone(LONDON).time().isoformat() == "23:30:00" for t in ticks)
    # Nothing of a day comes after its tick.
    last_of_day: dict[date, str] = {}
    for e in events:
        last_of_day[london_date(e.time)] = e.type
    assert set(last_of_day.values()) == {"clock-tick"}


def test_events_are_in_time_order_with_the_registry_first(events):
    times = [e.time.astimezone(UTC) for e in events]
    assert times == sorted(times)
    offices = [e for e in events if e.type == "office-registered"]
    assert events[: len(offices)] == offices
    assert [e.id for e in offices] == [e.id for e in registry()]
    assert times[0] == datetime(2007, 3, 31, 23, 0, tzinfo=UTC)  # 1 April, 00:00 BST


def test_the_mix_contains_every_event_type(events):
    counts = Counter(e.type for e in events)
    assert set(counts) == INPUT_TYPES, counts
    assert counts["claim-registered"] == CLAIMS
    assert counts["marker-set"] >= 2 * CLAIMS


def test_claims_follow_the_working_calendar(events):
    registered = [e for e in events if isinstance(e, ClaimRegistered)]
    assert all(is_working_day(london_date(e.time)) for e in registered)
    cleared = [e for e in events if isinstance(e, ClaimCleared)]
    outcomes = Counter(e.data.outcome.value for e in cleared)
    assert outcomes["ELIGIBLE"] > 5 * outcomes["DISALLOWED"] > 0
    for e in cleared:
        day = london_date(e.time)
        assert is_working_day(day) and is_working_day(e.data.received_date)
        assert e.data.received_date < day  # at least one working day at the BDC
    # The span's bank holidays fall on weekdays and nothing of the BDC happens on them.
    holidays = [START + timedelta(days=i) for i in range(366)]
    holidays = [d for d in holidays if is_bank_holiday(d) and d.weekday() < 5]
    assert len(holidays) == 10  # Easter 2007 and 2008, May, August, Christmas, New Year
    busy = {london_date(e.time) for e in cleared} | {e.data.received_date for e in cleared}
    assert not busy & set(holidays)
    interviews = [e for e in events if e.type == "interview-conducted"]
    assert all(is_working_day(london_date(e.time)) for e in interviews)


def test_markers_are_left_at_or_reset_to_the_contact_centre_and_fixed(events):
    registered = {e.data.claim_id: e for e in events if isinstance(e, ClaimRegistered)}
    jobcentre_markers: dict[str, list[MarkerSet]] = defaultdict(list)
    for e in events:
        if isinstance(e, MarkerSet) and e.data.marker.value == "JOBCENTRE":
            jobcentre_markers[e.data.claim_id].append(e)
    left_at = reset = fixed = 0
    for claim_id, markers in jobcentre_markers.items():
        reg = registered[claim_id]
        cc = reg.data.contact_centre_id
        wrong = [m for m in markers if m.data.value == cc]
        if not wrong:
            assert len(markers) == 1  # set once, at registration, to a Jobcentre
            continue
        assert all(m.source == LEGACY_SOURCE for m in wrong)
        day = london_date(wrong[0].time)
        left_at += day == london_date(reg.time)
        reset += day > london_date(reg.time)
        later = [m for m in markers if m.time > wrong[0].time and m.data.value != cc]
        fixed += bool(later)
        assert all(m.source == f"/offices/{cc}" for m in later)
    assert left_at > 0 and reset > 0 and 0 < fixed < left_at + reset


def test_registrations_are_spread_over_working_days_exactly():
    spec = SimulationSpec(1000, 3, START, 30)
    per_day = registrations_per_day(spec)
    assert sum(per_day.values()) == 1000
    assert all(is_working_day(d) for d in per_day)
    assert len(per_day) == 19  # April 2007's first 30 days: 21 weekdays less Easter


def test_the_command_writes_the_same_log(tmp_path, generated):
    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(
        app, ["simulate", "--claims", str(CLAIMS), "--seed", str(SEED), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == generated[0].read_bytes()
    assert f"{CLAIMS} claims from 2007-04-01 to 2008-03-31 (366 days, seed {SEED})" in (
        result.output
    )
    assert "Simulating business days" in result.output
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_command_refuses_bad_input(tmp_path):
    runner = CliRunner()
    bad_date = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--start", "1/4/07"])
    assert bad_date.exit_code == 2
    assert "'1/4/07' is not a date; use YYYY-MM-DD" in bad_date.output
    no_dir = runner.invoke(app, ["simulate", "--out", str(tmp_path / "missing" / "x.jsonl")])
    assert no_dir.exit_code == 2
    assert "does not exist" in no_dir.output
    negative = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--claims", "-1"])
    assert negative.exit_code == 2
    bad_registry = tmp_path / "offices.csv"
    bad_registry.write_text("office_id,kind,name,district,region\nJC 1,JOBCENTRE,X,D,R\n")
    refused = runner.invoke(
        app, ["simulate", "--out", str(tmp_path / "x"), "--offices", str(bad_registry)]
    )
    assert refused.exit_code == 2
    assert "1 problem; nothing was written" in refused.output
    assert not (tmp_path / "x").exists()


def test_a_short_span_ends_its_claims_where_the_span_ends(tmp_path):
    spec = SimulationSpec(40, 1, date(2007, 12, 20), 14)
    events = list(simulate(spec, registry(spec.start)))
    last = max(london_date(e.time) for e in events)
    assert last == date(2008, 1, 2)
    assert sum(e.type == "clock-tick" for e in events) == 14
    assert sum(e.type == "claim-registered" for e in events) == 40
