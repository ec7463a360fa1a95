"""`idt replay` against real Redis, and the key end-to-end property:

Replaying a simulated year through the running stack gives, for every month,
level and basis, the counts an independent straightforward computation in the
tests gives from the same log.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from idt_cli.main import app
from idt_cli.replay import parse_id
from idt_contract import decode, decode_entry
from idt_contract.events import OfficeKind, OfficeRegistered, OfficeRegisteredData
from idt_domain.calendar import add_months
from idt_runtime.embedded_redis import free_port
from tests import oracle
from tests.conftest import wait_for
from tests.integration.test_cli import healthy, idt_up

pytestmark = pytest.mark.integration

CLAIMS = 600
SEED = 20070401
START = date(2007, 4, 1)
LEVELS = ("jobcentre", "district", "region", "national")
BASES = ("policy", "measured")
COUNTED = ("MET", "MISSED", "WAIVED", "DEFERRED")
UNALLOCATED = "UNALLOCATED"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def simulate(path: Path, claims: int = CLAIMS, seed: int = SEED) -> Path:
    result = invoke(
        "simulate", "--claims", str(claims), "--seed", str(seed), "--start", START.isoformat(),
        "--out", str(path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


# ---------------------------------------------------------------- the independent computation

#: (basis, period, level, scope, element) -> [met, missed, waived, deferred]
Expected = dict[tuple[str, str, str, str, str], list[int]]


def expected_counts(log: Path) -> tuple[Expected, date]:
    """Straight from the log, no Redis, no database: each claim's events through an
    independent oracle of the IDT rules (tests/oracle.py) at the last tick's date,
    each final window attributed to the Jobcentre its outcome names (UNALLOCATED
    unless the log registers it as a JOBCENTRE) and summed up the registry's levels
    (UNALLOCATED nationally only)."""
    events = [decode(line) for line in log.read_bytes().splitlines()]
    offices: dict[str, OfficeRegisteredData] = {
        e.data.office_id: e.data for e in events if isinstance(e, OfficeRegistered)
    }
    # The oracle, not the scheduler's own rules: written separately from the spec.
    outcomes, as_of = oracle.window_outcomes(
        [json.loads(line) for line in log.read_bytes().splitlines()]
    )
    out: Expected = defaultdict(lambda: [0, 0, 0, 0])
    for (_window_id, basis), (element, status, outcome_date, jobcentre_id) in outcomes.items():
        if status not in COUNTED:
            continue  # open, upcoming, cancelled: counted nowhere
        assert outcome_date is not None
        office = offices.get(jobcentre_id or "")
        jc = office if office is not None and office.kind is OfficeKind.JOBCENTRE else None
        scopes = {"jobcentre": jc.office_id if jc else UNALLOCATED, "national": "national"}
        if jc is not None:
            scopes["district"] = jc.district
            scopes["region"] = jc.region
        month = f"{outcome_date:%Y-%m}"
        fy_start = outcome_date.year if outcome_date.month >= 4 else outcome_date.year - 1
        fy = f"FY{fy_start}-{(fy_start + 1) % 100:02d}"
        for period in (month, fy):
            for level, scope in scopes.items():
                key = (basis, period, level, scope, element)
                out[key][COUNTED.index(status)] += 1
    return dict(out), as_of


def expected_for(expected: Expected, basis: str, period: str, level: str) -> dict:
    return {
        (scope, element): counts
        for (b, p, lv, scope, element), counts in expected.items()
        if (b, p, lv) == (basis, period, level)
    }


def api_counts(scoring: str, basis: str, period: str, level: str) -> dict:
    resp = httpx.get(
        scoring + "/v1/scores", params={"period": period, "level": level, "basis": basis},
        timeout=10,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    return {
        (row["scope"], element): [c["met"], c["missed"], c["waived"], c["deferred"]]
        for row in resp.json()["rows"]
        for element, c in row["elements"].items()
    }


def differences(scoring: str, expected: Expected, periods: list[str]) -> list[str]:
    diffs = []
    for basis in BASES:
        for period in periods:
            for level in LEVELS:
                want = expected_for(expected, basis, period, level)
                got = api_counts(scoring, basis, period, level)
                for key in sorted(set(want) | set(got)):
                    if want.get(key) != got.get(key):
                        diffs.append(
                            f"{basis} {period} {level} {key}: API {got.get(key)} "
                            f"!= log {want.get(key)} (met, missed, waived, deferred)"
                        )
    return diffs


# ---------------------------------------------------------------- waiting for the stack


class OutcomesSettled:
    """True once idt:window-outcome has not grown for `quiet` seconds and the
    scoring group has read and acknowledged all of it."""

    def __init__(self, r: redis.Redis, quiet: float = 3.0) -> None:
        self.r = r
        self.quiet = quiet
        self.length = -1
        self.since = time.monotonic()

    def __call__(self) -> bool:
        stream = "idt:window-outcome"
        if not self.r.exists(stream):
            return False
        length = self.r.xlen(stream)
        if length != self.length:
            self.length, self.since = length, time.monotonic()
            return False
        last = self.r.xinfo_stream(stream)["last-generated-id"]
        groups = {g["name"]: g for g in self.r.xinfo_groups(stream)}
        scoring = groups.get(b"scoring")
        return (
            scoring is not None
            and scoring["pending"] == 0
            and parse_id(scoring["last-delivered-id"]) >= parse_id(last)
            and time.monotonic() - self.since >= self.quiet
        )


def months_of_span(start: date, end: date) -> list[str]:
    out, day = [], start.replace(day=1)
    while day <= end:
        out.append(f"{day:%Y-%m}")
        day = add_months(day, 1)
    return out


@pytest.mark.timeout(300)
def test_replaying_a_simulated_year_gives_the_counts_computed_straight_from_the_log(
    tmp_path, redis_url, r
):
    began = time.monotonic()
    log = simulate(tmp_path / "year.jsonl")
    expected, as_of = expected_counts(log)
    periods = [*months_of_span(START, as_of), "FY2007-08"]
    assert periods[0] == "2007-04" and periods[-2] == "2008-03"

    # The log exercises what the comparison is about (fixed seed: deterministic).
    national = {k: v for k, v in expected.items() if k[2] == "national" and k[1] != "FY2007-08"}
    assert {k[4] for k in national} == {"IB", "LP", "JSA", "LMI"}
    assert all(sum(v[i] for v in national.values()) > 0 for i in range(4)), national
    assert any(k[2] == "jobcentre" and k[3] == UNALLOCATED for k in expected)
    policy = {k[1:]: v for k, v in expected.items() if k[0] == "policy"}
    measured = {k[1:]: v for k, v in expected.items() if k[0] == "measured"}
    assert policy != measured  # marker resets move measured IB windows; waivers differ

    var = tmp_path / "var"
    args = ("--clock", "events", "--no-offices", "--redis-url", redis_url, "--var-dir", str(var))
    with idt_up(tmp_path, *args) as up:
        for name in up.ports:
            wait_for(lambda name=name: healthy(up, up.url(name)), timeout=90, interval=0.2)
        wait_for(lambda: "IDT is running" in up.output(), timeout=30, interval=0.2)
        started = time.monotonic() - began

        replayed = invoke("replay", str(log), "--redis-url", redis_url, "--timeout", "150")
        assert replayed.exit_code == 0, replayed.output
        assert "Drained in" in replayed.output
        lines = log.read_bytes().splitlines()
        assert f"Published {len(lines)} events" in replayed.output
        for group in ("contact_centre", "bdc", "scheduler", "scoring"):
            assert f"{group} (" in replayed.output
        drained = time.monotonic() - began

        # `idt replay` waits for what the services derive too: the moment it
        # returns, every window outcome is published and scored (what a user who
        # runs `idt scores` next relies on). Then check it stays settled.
        stream = "idt:window-outcome"
        last = r.xinfo_stream(stream)["last-generated-id"]
        scoring = {g["name"]: g for g in r.xinfo_groups(stream)}[b"scoring"]
        assert (scoring["pending"], scoring["last-delivered-id"]) == (0, last)
        wait_for(OutcomesSettled(r), timeout=120, interval=0.25)
        assert r.xinfo_stream(stream)["last-generated-id"] == last
        settled = time.monotonic() - began
        assert not r.exists("idt:dead-letters"), [
            fields.get(b"reason") for _, fields in r.xrange("idt:dead-letters", count=5)
        ]
        # The stack reached the log's business date; no live clock moved it further.
        ticks = {decode_entry("idt:clock-tick", f).id for _, f in r.xrange("idt:clock-tick")}
        assert len(ticks) == sum(1 for line in lines if b'"type":"clock-tick"' in line)

        scoring = up.url("scoring")
        assert (
            httpx.get(scoring + "/v1/scores", params={"period": "2007-04"}, timeout=10).json()[
                "as_of"
            ]
            == as_of.isoformat()
        )
        diffs: list[str] = []

        def agree() -> bool:
            diffs[:] = differences(scoring, expected, periods)
            return not diffs

        try:
            wait_for(agree, timeout=20, interval=1.0)
        except AssertionError:
            pytest.fail(f"{len(diffs)} differences, e.g.:\n" + "\n".join(diffs[:40]))
        compared = time.monotonic() - began

        # `idt scores` shows the same service's answer as a table.
        shown = invoke(
            "scores", "--period", "FY2007-08", "--level", "region", "--basis", "policy",
            "--url", scoring,
        )  # fmt: skip
        assert shown.exit_code == 0, shown.output
        assert "IDT scores FY2007-08, region level, policy basis (business date 2008-03-31)" in (
            shown.output
        )
        met, due = _national_ib(expected)
        national_ib = invoke("scores", "--period", "FY2007-08", "--url", scoring)
        assert f"{met}/{due}" in national_ib.output, national_ib.output
        bad = invoke("scores", "--period", "2007-13", "--url", scoring)
        assert bad.exit_code == 2
        assert "HTTP 422" in bad.output and "month 13 does not exist" in bad.output

        assert up.stop() == 0, up.output()
    print(
        f"\nreplay test: stack up {started:.1f} s, replayed and drained {drained:.1f} s, "
        f"outcomes settled {settled:.1f} s, compared {compared:.1f} s "
        f"({len(lines)} events, {CLAIMS} claims)"
    )


def _national_ib(expected: Expected) -> tuple[int, int]:
    met, missed, waived, deferred = expected[
        ("measured", "FY2007-08", "national", "national", "IB")
    ]
    return met, met + missed + waived + deferred


# ---------------------------------------------------------------- idt replay on its own


def make_group(r: redis.Redis, stream: str, group: str) -> None:
    r.xgroup_create(stream, group, id="0", mkstream=True)


def read_all(r: redis.Redis, stream: str, group: str) -> None:
    """Consume and acknowledge everything, as a service would."""
    while True:
        got = r.xreadgroup(group, "c1", {stream: ">"}, count=1000)
        if not got:
            return
        for _, entries in got:
            r.xack(stream, group, *[entry_id for entry_id, _ in entries])


def test_replay_publishes_each_line_unchanged_and_waits_for_the_groups(tmp_path, redis_url, r):
    log = simulate(tmp_path / "small.jsonl", claims=20)
    lines = log.read_bytes().splitlines()
    types = Counter(json.loads(line)["type"] for line in lines)
    # A group that never reads: the replay names it and fails after its timeout.
    make_group(r, "idt:clock-tick", "ticker")
    result = invoke("replay", str(log), "--redis-url", redis_url, "--timeout", "0.5")
    assert result.exit_code == 1
    assert "1 consumer group(s) had not drained after 0.5 s" in result.output
    assert "ticker on idt:clock-tick: 0 pending, last delivered 0-0 < last added" in result.output
    assert "warning: no consumer group reads idt:claim-registered yet" in result.output
    assert f"Published {len(lines)} events to {len(types)} stream(s)" in result.output

    # Every line is on its type's stream, byte for byte, in file order.
    for etype, n in types.items():
        entries = r.xrange(f"idt:{etype}")
        assert len(entries) == n
        assert all(list(fields) == [b"__data__"] for _, fields in entries)
        assert [f[b"__data__"] for _, f in entries] == [
            line for line in lines if json.loads(line)["type"] == etype
        ]

    # With readers that keep up (one read but not acknowledged yet counts as
    # pending), a second replay waits for them and drains.
    make_group(r, "idt:claim-registered", "late")  # created at 0: it reads the head too
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            read_all(r_reader, "idt:clock-tick", "ticker")
            read_all(r_reader, "idt:claim-registered", "late")
            stop.wait(0.3)

    r_reader = redis.Redis.from_url(redis_url)
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        again = invoke("replay", str(log), "--redis-url", redis_url, "--batch", "7")
    finally:
        stop.set()
        reader.join(10)
        r_reader.close()
    assert again.exit_code == 0, again.output
    assert "Drained in" in again.output
    drained = f"2 consumer group(s) on {len(types)} stream(s) read everything: late (1 stream), "
    assert drained + "ticker (1 stream)" in again.output
    assert r.xlen("idt:clock-tick") == 2 * types["clock-tick"]
    pending = [
        g["pending"] for s in ("idt:clock-tick", "idt:claim-registered") for g in r.xinfo_groups(s)
    ]
    assert pending == [0, 0]


def test_a_bad_line_publishes_nothing_and_names_its_line(tmp_path, redis_url, r):
    log = simulate(tmp_path / "small.jsonl", claims=5)
    lines = log.read_bytes().splitlines()
    bad = list(lines)
    bad[3] = (
        b'{"specversion":"1.0","id":"x","source":"/s","type":"claim-frobbed","time":"2007-04-02T10:00:00Z"}'
    )
    bad[7] = bad[7].replace(b'"time":"', b'"time":"not-a-time', 1)
    bad[9] = b""
    bad[12] = b"{not json"
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join(bad) + b"\n")
    result = invoke("replay", str(broken), "--redis-url", redis_url)
    assert result.exit_code == 2
    out = result.output
    assert "4 bad lines; nothing was published" in out
    assert "line 4: unknown event type 'claim-frobbed'" in out
    assert "line 8: invalid office-registered: time:" in out
    assert "line 10: empty line" in out
    assert "line 13: __data__ is not JSON" in out
    assert r.keys("idt:*") == []

    missing = invoke("replay", str(tmp_path / "nope.jsonl"), "--redis-url", redis_url)
    assert missing.exit_code == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    nothing = invoke("replay", str(empty), "--redis-url", redis_url)
    assert nothing.exit_code == 2
    assert "has no events" in nothing.output

    nobody = f"redis://127.0.0.1:{free_port()}/0"
    down = invoke("replay", str(log), "--redis-url", nobody)
    assert down.exit_code == 1
    assert f"cannot reach Redis at {nobody}" in down.output
    assert "nothing was published" in down.output


def test_scores_explains_an_unreachable_service():
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("scores", "--period", "2007-08", "--url", url)
    assert result.exit_code == 1
    assert f"cannot reach the scoring service at {url}" in result.output
    bad_level = invoke("scores", "--period", "2007-08", "--level", "city", "--url", url)
    assert bad_level.exit_code == 2
    assert "city" in bad_level.output
