"""The pure parts of `python -m bench`: the scaled synthetic log (valid under the
contract, unique ids, event-time order), percentile and rate math, the profile
summaries and results.md. No timing is asserted anywhere: speed goals live in
the benchmark's report, never in tests."""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bench import profiling, synth
from bench.cli import build_parser, config_from, parse_count, trim_acked
from bench.phases import (
    LIMIT_KEY,
    clearance_line,
    make_probes,
    measure_limit,
    peak_rate,
    rate_between,
    registration_lines,
    tick_line,
)
from bench.procs import parse_metric_sum
from bench.report import (
    POSTGRES_LABEL,
    Goal,
    Latency,
    Limit,
    Machine,
    ProcessStats,
    ProfileSection,
    Results,
    Run,
    ServiceRate,
    Store,
    Throughput,
    goals,
    percentile,
    render,
    size_label,
)
from bench.synth import LineFields
from idt_cli.offices import DEFAULT_OFFICES, read_registry
from idt_cli.simulate import offices_by_kind
from idt_contract import DecodeError, decode, stream_for
from idt_contract.events import NINO_IN_TEXT, ClaimCleared, ClaimRegistered

SEED = 11
START = date(2007, 4, 1)


@pytest.fixture(scope="module")
def base() -> list[bytes]:
    """A small simulated year (the registry, 150 claims, a tick a day)."""
    return list(synth.simulated_lines(150, SEED, START, synth.year_days(START)))


# --------------------------------------------------------------------------- the log


def test_scaled_log_is_valid_unique_and_in_time_order(base: list[bytes]) -> None:
    factor = 3.4
    lines = list(synth.scale(base, factor, SEED))
    events = [decode(line) for line in lines]  # every line passes the contract
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))
    times = [e.time.astimezone(UTC) for e in events]
    assert times == sorted(times)
    # The registry and the ticks once; every claim event 3 or 4 times.
    shared = [e for e in events if e.type in ("office-registered", "clock-tick")]
    assert len(shared) == sum(1 for line in base if synth.line_fields(line).claim_id is None)
    claim_events = len(events) - len(shared)
    base_claim_events = len(base) - len(shared)
    assert 3 * base_claim_events <= claim_events <= 4 * base_claim_events
    assert claim_events == pytest.approx(factor * base_claim_events, rel=0.1)


def test_clones_are_distinct_claims_with_their_own_customer(base: list[bytes]) -> None:
    lines = list(synth.scale(base, 2.0, SEED))
    registered = [e for e in map(decode, lines) if isinstance(e, ClaimRegistered)]
    assert len(registered) == 2 * sum(1 for line in base if b'"claim-registered"' in line)
    claim_ids = [e.data.claim_id for e in registered]
    refs = [e.data.customer_ref for e in registered]
    assert len(set(claim_ids)) == len(claim_ids)
    assert len(set(refs)) == len(refs)
    assert all(re.fullmatch(r"cr_[0-9a-f]{40}", r) for r in refs)
    # Every event of a clone names the clone (subject and data), and the clone's
    # history is its original's.
    histories: dict[str, Counter[str]] = defaultdict(Counter)
    for e in map(decode, lines):
        claim_id = getattr(e.data, "claim_id", None)
        if claim_id is not None:
            assert e.subject == claim_id
            histories[claim_id][e.type] += 1
    originals = [c for c in histories if not c.endswith("-x1")]
    assert originals and all(histories[c] == histories[c + "-x1"] for c in originals)


def test_the_clone_suffix_never_makes_an_ni_number() -> None:
    """`SIM-000003` + `.c7` reads as `IM 00 00 03 C`: the contract rejects it; the
    bench's `-x<j>` cannot complete the pattern."""
    line = (
        b'{"specversion":"1.0","id":"e1","source":"/t","type":"claim-closed",'
        b'"time":"2007-05-01T10:00:00+01:00","subject":"SIM-000003",'
        b'"data":{"claim_id":"SIM-000003","reason":"OTHER"}}'
    )
    fields = synth.line_fields(line)
    bad = line.replace(b"SIM-000003", b"SIM-000003.c7")
    with pytest.raises(DecodeError):
        decode(bad)
    for j in (1, 7, 123, 9999):
        clone = decode(synth.clone_line(line, fields, f"x{j}"))
        assert clone.subject == f"SIM-000003-x{j}" and clone.id == f"e1-x{j}"
        assert not NINO_IN_TEXT.search(clone.subject)


def test_copies_are_deterministic_and_average_to_the_factor() -> None:
    claims = [f"SIM-{i:06d}" for i in range(4000)]
    copies = [synth.copies_of(c, 2.25, SEED) for c in claims]
    assert set(copies) == {2, 3}
    assert sum(copies) / len(copies) == pytest.approx(2.25, abs=0.03)
    assert copies == [synth.copies_of(c, 2.25, SEED) for c in claims]
    assert synth.copies_of("SIM-000001", 1.0, SEED) == 1


def test_stream_and_date_read_without_parsing(base: list[bytes]) -> None:
    for line in base[:200]:
        doc = json.loads(line)
        assert synth.stream_of(line) == "idt:" + doc["type"]
        assert synth.date_of(line) == date.fromisoformat(doc["time"][:10])
    with pytest.raises(ValueError, match="window alerts"):
        synth.stream_of(b'{"id":"a","type":"window-alert"}')


def test_ensure_log_writes_once_then_reuses_the_cache(tmp_path: Path) -> None:
    first = synth.ensure_log(tmp_path, 400, SEED)
    assert first.path.exists() and first.events == sum(1 for _ in synth.read_lines(first.path))
    assert first.claims == sum(first.types.get(t, 0) for t in ("claim-registered",))
    mtime = first.path.stat().st_mtime_ns
    again = synth.ensure_log(tmp_path, 400, SEED)
    assert again == first and first.path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*.tmp"))


def test_filler_collides_with_nothing_and_has_no_registry(tmp_path: Path) -> None:
    path = synth.ensure_filler(tmp_path, 300, SEED, date(2008, 4, 1), days=30)
    events = [decode(line) for line in synth.read_lines(path)]
    assert len(events) >= 300
    assert not [e for e in events if e.type in ("office-registered", "clock-tick")]
    assert all(e.id.endswith("-lat") for e in events)
    assert {e.type for e in events} >= {"claim-registered", "marker-set", "claim-cleared"}
    tick = decode(tick_line(date(2008, 4, 1)))
    assert tick.type == "clock-tick" and tick.time.isoformat() == "2008-04-01T23:30:00+01:00"


def test_the_filler_mixes_each_day_and_keeps_each_claims_order() -> None:
    """The simulator stamps a day's clearances in one hour: in time order they came
    in a run. Interleaved, a day's clearances are spread through its events, each
    claim's events keep their order, and no event leaves its day."""

    def line(day: str, hour: int, claim: str, kind: str, n: int) -> tuple[bytes, LineFields]:
        text = f'{{"id":"{claim}-{n}","time":"2008-04-{day}T{hour:02}:00:00Z","type":"{kind}"}}'
        return text.encode(), LineFields(f"{claim}-{n}", claim, None, kind)

    day1 = [line("01", 9, f"R{i}", "claim-registered", 0) for i in range(50)]
    day1 += [line("01", 9, "X", "claim-registered", 0), line("01", 11, "X", "marker-set", 1)]
    day1 += [line("01", 16, f"C{i}", "claim-cleared", 0) for i in range(50)]
    day1 += [line("01", 16, "X", "claim-cleared", 2)]
    day2 = [line("02", 9, f"D{i}", "claim-registered", 0) for i in range(20)]
    out = [json.loads(b) for b in synth.interleave_days(day1 + day2, random.Random(7))]

    assert sorted(o["id"] for o in out) == sorted(json.loads(b)["id"] for b, _ in day1 + day2)
    assert [o["time"][:10] for o in out] == ["2008-04-01"] * 103 + ["2008-04-02"] * 20
    assert [o["id"] for o in out if o["id"].startswith("X-")] == ["X-0", "X-1", "X-2"]
    first_half = [o["type"] for o in out[:51]]
    assert 10 <= first_half.count("claim-cleared") <= 41, first_half


def test_probe_events_are_valid_ib_and_jsa_claims() -> None:
    registry = read_registry(DEFAULT_OFFICES, time=datetime(2008, 4, 1, tzinfo=UTC))
    probes = make_probes(6, offices_by_kind(registry.events), SEED)
    assert {p.benefit.value for p in probes} == {"IB", "JSA"}
    for p in probes:
        reg = [decode(line) for line in registration_lines(p, date(2008, 4, 1))]
        assert [e.type for e in reg] == ["claim-registered", "marker-set", "marker-set"]
        cleared = decode(clearance_line(p, date(2008, 4, 1), date(2008, 4, 9)))
        assert isinstance(cleared, ClaimCleared) and cleared.data.outcome.value == "ELIGIBLE"


# --------------------------------------------------------------------------- math


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(i) for i in range(1, 101)], 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_peak_rate_takes_the_best_window() -> None:
    points = [(0.0, 0.0), (1.0, 10.0), (2.0, 100.0), (3.0, 110.0), (4.0, 120.0)]
    assert peak_rate(points, 1.0) == 90.0
    assert peak_rate(points, 2.0) == 50.0
    assert peak_rate(points[:1], 1.0) is None


def test_parse_count_and_size_labels() -> None:
    assert parse_count("1m") == 1_000_000
    assert parse_count("250k") == 250_000
    assert parse_count("1_000_000") == 1_000_000
    assert parse_count("2.5M") == 2_500_000
    for bad in ("0", "-3", "abc", "1.5"):
        with pytest.raises(Exception, match="count"):
            parse_count(bad)
    assert [size_label(n) for n in (100_000, 1_000_000, 10_000_000, 20_007)] == [
        "100k", "1M", "10M", "20,007",
    ]  # fmt: skip


def test_config_presets() -> None:
    parser = build_parser()
    assert config_from(parser.parse_args([]), []).sizes == (1_000_000,)
    assert config_from(parser.parse_args(["--size", "10m"]), []).sizes == (10_000_000,)
    quick = config_from(parser.parse_args(["--quick"]), ["--quick"])
    assert quick.sizes == (10_000,) and quick.latency_seconds == 5
    assert "make bench ARGS=--quick" in quick.reproduce
    scaling = config_from(parser.parse_args(["--scaling"]), ["--scaling"])
    assert scaling.sizes == (100_000, 1_000_000, 10_000_000)


def test_trim_before_latency_deletes_only_what_every_group_acked(r) -> None:
    """`--trim-before-latency`: the consumed streams lose what every group acked,
    nothing a group has not (pending or unread), and the report says how much."""
    parser = build_parser()
    assert not config_from(parser.parse_args([]), []).trim_before_latency
    flag = ["--trim-before-latency"]
    assert config_from(parser.parse_args(flag), flag).trim_before_latency
    stream = "idt:claim-registered"
    r.xgroup_create(stream, "bdc", id="0", mkstream=True)
    r.xgroup_create(stream, "scheduler", id="0")
    ids = [r.xadd(stream, {"__data__": b"{}"}) for _ in range(5)]
    for group in ("bdc", "scheduler"):
        r.xreadgroup(group, "c1", {stream: ">"}, count=4)  # the fifth unread by both
    r.xack(stream, "bdc", *ids[:4])
    r.xack(stream, "scheduler", *ids[:2])  # the third and fourth still pending
    # The trim's cut-off is Redis's own now, in whole milliseconds, and keeps the
    # entries of that millisecond: let its clock pass the last entry's first (all
    # of the above can take less than one on a fast machine).
    last_ms = int(ids[-1].split(b"-")[0])
    while (now := r.time())[0] * 1000 + now[1] // 1000 <= last_ms:
        time.sleep(0.001)
    deleted, note = trim_acked(r)
    assert deleted == 2
    assert [i for i, _ in r.xrange(stream)] == ids[2:]
    assert "2 entries every group had acked were deleted" in note
    assert "MEMORY PURGE" in note


def test_the_limit_phase_measures_redis_own_cpu_per_entry(r) -> None:
    """Redis's CPU per XADD and per read+ack comes from its own account (INFO cpu),
    and the limit's stream is gone afterwards."""
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 200) for i in range(50)]
    lim = measure_limit(r, lines, 3_000)
    assert lim.entries == 3_000 and lim.xadd_rate > 0 and lim.read_ack_rate > 0
    assert lim.xadd_cpu_us is not None and lim.read_ack_cpu_us is not None
    # Some CPU, and not absurdly much: the server's whole time is well under a
    # millisecond an entry (a wrong unit would be off by 10^6).
    assert 0 < lim.xadd_cpu_us < 1_000 and 0 < lim.read_ack_cpu_us < 1_000
    assert not r.exists(LIMIT_KEY)


def test_redis_cpu_is_its_main_threads_where_redis_reports_it() -> None:
    from bench.phases import redis_cpu_seconds

    class Info:
        def __init__(self, fields: dict[str, float]) -> None:
            self.fields = fields

        def info(self, section: str) -> dict[str, float]:
            assert section == "cpu"
            return self.fields

    totals = {"used_cpu_user": 3.0, "used_cpu_sys": 1.5}
    main = {"used_cpu_user_main_thread": 2.0, "used_cpu_sys_main_thread": 1.0}
    assert redis_cpu_seconds(Info({**totals, **main})) == 3.0  # type: ignore[arg-type]
    assert redis_cpu_seconds(Info(totals)) == 4.5  # type: ignore[arg-type]  # an older Redis


def test_metric_sums_over_label_sets() -> None:
    text = (
        "# HELP idt_events_consumed_total x\n"
        'idt_events_consumed_total{result="applied",service="a",stream="s"} 10.0\n'
        'idt_events_consumed_total{result="duplicate",service="a",stream="t"} 2.0\n'
        'idt_events_consumed_total_created{service="a"} 1.7e9\n'
        "idt_outbox_pending 3.0\n"
    )
    assert parse_metric_sum(text, "idt_events_consumed_total") == 12.0
    assert parse_metric_sum(text, "idt_outbox_pending") == 3.0


# --------------------------------------------------------------------------- profiles

RAW = """\
<module> (uvicorn/__main__.py);run (asyncio/runners.py);select (selectors.py) 500
_bootstrap (threading.py);_worker (concurrent/futures/thread.py) 300
_bootstrap (threading.py);run (concurrent/futures/thread.py);_commit (idt_runtime/consumer.py);apply (services/scheduler/handlers.py);DefaultDialect.do_execute (sqlalchemy/engine/default.py) 60
_bootstrap (threading.py);run (concurrent/futures/thread.py);_commit (idt_runtime/consumer.py);apply (services/scheduler/handlers.py);_recompute (services/scheduler/handlers.py) 30
<module> (uvicorn/__main__.py);handle (idt_runtime/consumer.py);decode (idt_contract/codec.py);model_validate_json (pydantic/main.py) 10
"""  # noqa: E501


def test_profile_summary_leaves_waits_out_and_groups_by_category() -> None:
    summary = profiling.summarise("scheduler", profiling.parse_raw(RAW), 10.0, 100)
    assert summary.samples == 100 and summary.waits == 800
    assert summary.busy == pytest.approx(0.1)
    cats = dict(summary.categories)
    assert cats["database driver (sqlite3/psycopg C code, via SQLAlchemy)"] == 60
    assert cats["services.scheduler (service code)"] == 30
    assert cats["pydantic (validation, JSON)"] == 10
    assert summary.top_self[0] == ("DefaultDialect.do_execute (sqlalchemy/default.py)", 60)
    project = dict(summary.top_project)
    assert project["_commit (idt_runtime/consumer.py)"] == 90
    assert project["apply (services.scheduler/handlers.py)"] == 90
    merged = profiling.merge("all", [summary, summary])
    assert merged.samples == 200 and dict(merged.categories)["pydantic (validation, JSON)"] == 20


def test_package_of_site_packages_and_project_paths() -> None:
    assert profiling.package_of("/x/.venv/lib/python3.11/site-packages/redis/client.py") == "redis"
    assert profiling.package_of("/usr/lib/python3.11/asyncio/events.py") == "asyncio"
    assert profiling.package_of("/work/main/services/bdc/handlers.py") == "services.bdc"
    assert profiling.package_of("idt_runtime/consumer.py") == "idt_runtime"
    assert profiling.package_of("threading.py") == "threading"


# --------------------------------------------------------------------------- results.md

MACHINE = Machine(
    cpu_count=2,
    nproc="2",
    cpu_model="Test CPU",
    ram_bytes=8 * 2**30,
    python="CPython 3.11.7",
    platform="Linux",
    redis_version="6.2.14",
    sqlite_version="3.40.1",
    postgres_version=None,
    load_average=(0.1, 0.2, 0.3),
    git="commit abc1234",
)
MiB = 2**20


def a_run(events: int, e2e_s: float, read_ack: float, rss: tuple[int, int]) -> Run:
    early, late = rss
    t = Throughput(
        events=events,
        claims=events // 6,
        log_bytes=events * 290,
        publish_s=events / 50_000,
        e2e_s=e2e_s,
        services=(
            ServiceRate("scheduler", events, e2e_s * 0.9, 5_000.0, 12.5),
            ServiceRate("scoring", events + events // 2, e2e_s, None, None),
        ),
        processes=(
            ProcessStats("scheduler", late, early, late, 100.0, system_seconds=25.0),
            ProcessStats("redis-server", 900 * MiB, 10 * MiB, 900 * MiB, 5.0, is_service=False),
        ),
        dead_letters=0,
        redis_used_memory=events * 800,
        redis_peak_memory=events * 810,
        derived=(("idt:window-outcome", events // 2), ("idt:window-alerts:* (3 offices)", 99)),
        stores=(Store("scheduler", events * 500, (("sch_claims", events // 6),)),),
    )
    return Run(size_label(events), t, Limit(200_000, 295.0, 60_000.0, read_ack))


def results(
    runs: list[Run], latency: Latency | None, machine: Machine = MACHINE, **kw: object
) -> Results:
    return Results(
        started=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        command="python -m bench --scaling",
        reproduce="python -m bench --scaling",
        machine=machine,
        database="SQLite (a file per service)",
        replicas=1,
        runs=runs,
        latency=latency,
        profile=None,
        **kw,  # type: ignore[arg-type]
    )


LATENCY = Latency(1000.0, 998.0, 60.0, 600, tuple(float(x % 40) for x in range(600)), 0, 3.0)


def verdicts(r: Results) -> dict[str, str]:
    return {g.name.split(" ")[0]: g.verdict for g in goals(r)}


def test_goals_pass_and_fail_on_the_largest_replay() -> None:
    fast = a_run(10_000_000, 500.0, 60_000.0, (200 * MiB, 205 * MiB))  # 20k/s: 33%, 25 min
    slow = a_run(1_000_000, 1_000.0, 60_000.0, (200 * MiB, 200 * MiB))
    r = results([slow, fast], LATENCY, scaling=True)
    assert r.headline is fast
    assert verdicts(r) == {"pipeline": "PASS", "national": "PASS", "publish": "PASS",
                           "memory": "PASS"}  # fmt: skip
    growing = a_run(10_000_000, 5_000.0, 60_000.0, (200 * MiB, 400 * MiB))
    r = results([slow, growing], Latency(1000.0, 990.0, 60.0, 600, (10.0, 80.0), 598, 1.0))
    assert verdicts(r) == {"pipeline": "FAIL", "national": "FAIL", "publish": "FAIL",
                           "memory": "FAIL"}  # fmt: skip
    only_small = results([slow], None)
    assert verdicts(only_small)["memory"] == "not measured"
    assert verdicts(only_small)["publish"] == "not measured"


def test_the_10m_presets_log_is_a_10m_replay_for_the_memory_goal() -> None:
    # `--size 10m` makes a log of about 10M events: 9,999,768 at the default seed.
    small = a_run(1_000_000, 1_000.0, 60_000.0, (200 * MiB, 200 * MiB))
    preset = a_run(9_999_768, 3_000.0, 60_000.0, (200 * MiB, 205 * MiB))
    assert verdicts(results([small, preset], None))["memory"] == "PASS"
    growing = a_run(9_999_768, 3_000.0, 60_000.0, (470 * MiB, 560 * MiB))
    assert verdicts(results([small, growing], None))["memory"] == "FAIL"
    short = a_run(9_800_000, 3_000.0, 60_000.0, (200 * MiB, 205 * MiB))
    assert verdicts(results([small, short], None))["memory"] == "not measured"


def test_memory_growth_between_sizes_fails_the_flat_goal() -> None:
    small = a_run(1_000_000, 100.0, 60_000.0, (100 * MiB, 100 * MiB))
    big = a_run(10_000_000, 1_000.0, 60_000.0, (300 * MiB, 300 * MiB))  # flat within, not across
    goal = next(g for g in goals(results([small, big], None)) if g.name.startswith("memory"))
    assert goal.passed is False and "1M" in goal.measured and "10M" in goal.measured


def test_results_md_has_every_section_with_numbers() -> None:
    runs = [
        a_run(100_000, 20.0, 60_000.0, (150 * MiB, 150 * MiB)),
        a_run(1_000_000, 200.0, 60_000.0, (150 * MiB, 151 * MiB)),
        a_run(10_000_000, 2_000.0, 60_000.0, (150 * MiB, 152 * MiB)),
    ]
    summary = profiling.summarise("scheduler", profiling.parse_raw(RAW), 10.0, 100)
    profile = ProfileSection(
        tool="py-spy",
        summaries=[summary],
        overall=profiling.merge("all services", [summary]),
        run_label="10M",
    )
    r = results(runs, LATENCY, scaling=True, notes=["The machine was shared."])
    r.profile = profile
    text = render(r)
    assert text.startswith("# IDT benchmark results\n\nReproduce:\n\n```sh\npython -m bench")
    for heading in (
        "## Goals", "## Machine", "## Throughput (end to end)", "## Per-service consumption",
        "## Machine limit", "## Redis's share", "## Latency", "## Peak memory per process",
        "## Stores",
        "## Scaling", "## Profile: where time goes", "### scheduler",
    ):  # fmt: skip
        assert f"\n{heading}" in text, heading
    assert "> The machine was shared." in text
    assert "| 10M | 10,000,000 |" in text  # throughput row
    assert "**5,000/s**" in text  # 10M events in 2,000 s
    assert "8.3%" in text  # ratio 5,000 / 60,000
    assert "6.2.14" in text and "3.40.1" in text and "Test CPU" in text
    assert re.search(r"\| 998/s \| 600 \| 0 \| [\d.]+ ms \|", text)
    assert "database driver" in text
    assert "`DefaultDialect.do_execute (sqlalchemy/default.py)`" in text
    assert text.count("**PASS**") + text.count("**FAIL**") == 4
    assert "| of it in the kernel |" in text
    assert re.search(r"\| scheduler \| [^\n]*\| 100\.0 s \(\d+%\) \| 25% \|", text)
    # Tables are well formed: every row has as many cells as its header.
    for block in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        widths = {row.count("|") for row in block.splitlines()}
        assert len(widths) == 1, block


def test_redis_ceiling_from_its_cpu_per_event_and_the_limits_cost() -> None:
    run = a_run(1_000_000, 200.0, 60_000.0, (150 * MiB, 151 * MiB))
    # 1M events; derived 500,000 + 99 entries; the services read 1M + 1.5M entries.
    t = replace(run.throughput, redis_cpu_s=40.0)  # 40 µs an event
    lim = replace(run.limit, xadd_cpu_us=2.0, read_ack_cpu_us=4.0)
    run = replace(run, throughput=t, limit=lim)
    assert t.xadds_per_event == pytest.approx(1.500099)
    assert t.reads_per_event == pytest.approx(2.5)
    assert t.redis_cpu_us == pytest.approx(40.0)
    assert run.redis_floor_us == pytest.approx(1.500099 * 2.0 + 2.5 * 4.0)
    text = render(results([run], None))
    section = text.split("## Redis's share")[1].split("\n## ")[0]
    # 1e6 / 40 µs = 25,000/s, 42% of 60,000/s; the best case 1e6 / 13.0 µs.
    assert (
        "| 1M | 1.50 | 2.50 | 2.00 / 4.00 µs | 40.0 µs | 25,000/s (42% of the limit) |" in section
    )
    assert "| 13.0 µs | 76,922/s (128% of the limit) |" in section
    # Older numbers without Redis's CPU say so instead of inventing it.
    bare = render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], None))
    assert "(not measured)" in bare.split("## Redis's share")[1].split("\n## ")[0]


def test_the_cpu_probe_times_a_fixed_loop_and_the_report_shows_start_and_end() -> None:
    from bench.machine import cpu_probe

    assert cpu_probe(rounds=1) > 0
    run = a_run(1_000_000, 200.0, 60_000.0, (1, 1))
    probed = results([run], None, machine=replace(MACHINE, cpu_probe_ms=41.25))
    assert "| 41.2 ms |" in render(probed)
    both = replace(MACHINE, cpu_probe_ms=41.25, cpu_probe_end_ms=83.0)
    assert "| 41.2 ms / 83.0 ms |" in render(results([run], None, machine=both))
    assert "CPU probe" not in render(results([run], None))  # older results: no row


def test_results_md_without_optional_phases_says_how_to_run_them() -> None:
    text = render(results([a_run(20_000, 10.0, 30_000.0, (1, 1))], None))
    assert "Not run (`--scaling`" in text
    assert "Not run (`--profile`)" in text
    assert "Not run (`--latency-seconds 0`)" in text


def test_goal_verdict_words() -> None:
    assert Goal("x", "y", "z", True).verdict == "PASS"
    assert Goal("x", "y", "z", False).verdict == "FAIL"
    assert Goal("x", "y", "z", None).verdict == "not measured"


def test_rate_between_interpolates_a_cumulative_count() -> None:
    points = [(0.0, 0.0), (10.0, 100.0), (20.0, 100.0), (30.0, 400.0)]
    assert rate_between(points, 0.0, 10.0) == 10.0
    assert rate_between(points, 5.0, 15.0) == 5.0  # 50 -> 100 over 10 s
    assert rate_between(points, 20.0, 30.0) == 30.0
    assert rate_between(points, 25.0, 35.0) is None  # past the last sample
    assert rate_between(points[:1], 0.0, 1.0) is None


def test_the_scheduler_alone_applies_the_whole_log_to_its_store(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from bench import alone

    info = synth.ensure_log(tmp_path, 3_000, SEED)
    db = tmp_path / "scheduler.db"
    result = alone.replay(info.path, db)
    assert result["events"] == info.events
    assert 0 < result["decode_cpu_s"] < result["cpu_s"]
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as c:
        claims = c.execute(text("SELECT count(*) FROM sch_claims")).scalar_one()
        recorded = c.execute(text("SELECT count(*) FROM sch_processed_events")).scalar_one()
        windows = c.execute(text("SELECT count(*) FROM sch_windows")).scalar_one()
    engine.dispose()
    assert claims == info.claims
    assert recorded == info.events
    assert windows > 0


def test_the_scheduler_alone_stops_after_its_limit(tmp_path: Path) -> None:
    from bench import alone

    info = synth.ensure_log(tmp_path, 3_000, SEED)
    assert alone.replay(info.path, tmp_path / "none.db", limit=0)["events"] == 0
    assert alone.replay(info.path, tmp_path / "some.db", limit=150)["events"] == 150


def test_callgrind_counts_are_read_from_its_summary_and_start_up_is_taken_off() -> None:
    from bench import alone

    report = (
        "==8835== Events    : Ir\n==8835== Collected : 11812450711\n==8835== \n"
        "==8835== I   refs:      11,812,450,711\n"
    )
    assert alone.callgrind_total(report) == 11_812_450_711
    with pytest.raises(ValueError, match="I refs"):
        alone.callgrind_total("==1== some other tool's output\n")
    assert alone.instructions_per_event(3_000_000, 1_000_000, 1_000) == 2_000.0
    with pytest.raises(ValueError, match="no events"):
        alone.instructions_per_event(3_000_000, 1_000_000, 0)


def test_instructions_runs_the_log_and_a_start_up_run_under_callgrind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in valgrind (it runs nothing) records how it was called and reports
    3M instructions for the run, 1M for the one applying nothing."""
    from bench import alone

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "valgrind"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$PYTHONHASHSEED $IDT_SQLITE_CHECKPOINT_S $*" >> "{calls}"\n'
        'case "$*" in *--apply-none*) n=1,000,000;; *) n=3,000,000;; esac\n'
        'echo "==1== I   refs:      $n" >&2\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    info = synth.ensure_log(tmp_path, 3_000, SEED)
    argv = ["--events", "3k", "--seed", str(SEED), "--cache-dir", str(tmp_path), "--group", "60"]
    assert alone.main([*argv, "--instructions"]) == 0
    out = capsys.readouterr().out
    assert f"{info.events:,} events, {2_000_000 / info.events:,.0f} instructions per event" in out
    run, start_up = calls.read_text().splitlines()
    for line in (run, start_up):
        # Repeatable: the same hashes, no checkpoint thread; the same log and group.
        assert line.startswith("0 0 --tool=callgrind "), line
        assert "-m bench.alone" in line and " ".join(argv) in line
        assert "--instructions" not in line
    assert "--apply-none" not in run and start_up.endswith("--apply-none")


def test_the_postgresql_server_is_a_process_row_with_a_note_on_what_it_counts() -> None:
    run = a_run(1_000_000, 200.0, 60_000.0, (100 * MiB, 100 * MiB))
    pg = ProcessStats(POSTGRES_LABEL, 300 * MiB, 290 * MiB, 300 * MiB, 80.0, is_service=False)
    t = replace(run.throughput, processes=(*run.throughput.processes, pg))
    text = render(results([replace(run, throughput=t)], None))
    memory = text[text.index("## Peak memory per process") :]
    row = next(line for line in memory.splitlines() if line.startswith(f"| {POSTGRES_LABEL} |"))
    assert "(not a service)" in row and "80.0 s (40%)" in row and "| 80 µs |" in row
    assert "every process of the PostgreSQL server" in memory
    # All processes' CPU per event counts it: (100 + 5 + 80) s over 1M events.
    assert "| 185 µs |" in text
    # Without it, no such note.
    plain = render(results([run], None))
    assert "every process of the PostgreSQL server" not in plain


def test_two_partitions_of_the_scheduler_alone_share_the_claims(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from bench import alone

    info = synth.ensure_log(tmp_path, 3_000, SEED)
    counts = []
    for i in (0, 1):
        db = tmp_path / f"scheduler-{i}.db"
        result = alone.replay(info.path, db, partition=(i, 2))
        assert result["events"] == info.events  # every entry read and decoded
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as c:
            ids = set(c.execute(text("SELECT claim_id FROM sch_claims")).scalars())
            recorded = c.execute(text("SELECT count(*) FROM sch_processed_events")).scalar_one()
            ticks = c.execute(text("SELECT count(*) FROM sch_clock")).scalar_one()
        engine.dispose()
        assert ids and all(alone.owns(c, (i, 2)) for c in ids)
        assert recorded == result["applied"] < info.events
        assert ticks == 1  # business time kept by each
        counts.append((ids, recorded))
    (ids0, n0), (ids1, n1) = counts
    assert not ids0 & ids1 and len(ids0 | ids1) == info.claims
    # Ticks and office registrations are applied by both; every claim event by one.
    shared = {stream_for("clock-tick"), stream_for("office-registered")}
    n_shared = sum(synth.stream_of(line) in shared for line in synth.read_lines(info.path))
    assert n_shared > 0 and n0 + n1 == info.events + n_shared


def test_a_partition_is_i_of_n() -> None:
    import argparse

    from bench import alone

    assert alone.parse_partition("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            alone.parse_partition(bad)


def test_latency_by_slice_shows_where_the_tail_gathers() -> None:
    # 60 probes a second apart; those sent from 30 s to 40 s (after the tick) waited.
    sent = tuple(float(i) for i in range(60))
    samples = tuple(900.0 if 30 <= s < 40 else 60.0 for s in sent)
    lat = Latency(1000.0, 1000.0, 60.0, 60, samples, 0, 1.0, sent_s=sent, tick_s=30.2)
    slices = lat.slices(6)
    assert [(a, b, len(x)) for a, b, x in slices] == [
        (0.0, 10.0, 10), (10.0, 20.0, 10), (20.0, 30.0, 10),
        (30.0, 40.0, 10), (40.0, 50.0, 10), (50.0, 60.0, 10),
    ]  # fmt: skip
    assert max(slices[3][2]) == 900.0 and max(slices[2][2]) == 60.0
    text = render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], lat))
    row = next(line for line in text.splitlines() if line.startswith("| 30 to 40 s"))
    assert "900.0 ms" in row and row.rstrip(" |").endswith("tick")
    assert "| 20 to 30 s | 10 | 60.0 ms | 60.0 ms | 60.0 ms |" in text
    assert "(not recorded)" in row  # no clearance times in this one
    # Without send times (an older run), no slice table.
    assert Latency(1000.0, 1000.0, 60.0, 2, (1.0, 2.0), 0, 1.0).slices() == []


def test_latency_by_slice_counts_the_other_clearances_and_their_busiest_second() -> None:
    """A run of 800 clearances in one second (what the filler in time order had)
    shows beside the slice's latency."""
    sent = tuple(float(i) for i in range(60))
    cleared = tuple(12.0 + i / 1000 for i in range(800)) + tuple(float(s) for s in range(60))
    lat = Latency(
        1000.0, 1000.0, 60.0, 60, (20.0,) * 60, 0, 1.0, sent_s=sent, tick_s=30.0,
        cleared_s=cleared,
    )  # fmt: skip
    assert lat.clearances(6) == [(10, 1), (810, 801), (10, 1), (10, 1), (10, 1), (10, 1)]
    text = render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], lat))
    row = next(line for line in text.splitlines() if line.startswith("| 10 to 20 s"))
    assert "| 810 (801) |" in row
    # A second is counted within its slice (slices are seldom whole seconds), and
    # a run that published no clearance says 0, not "not recorded".
    odd = replace(lat, seconds=60.6, cleared_s=(10.0, 10.05, 10.2, 10.4))
    assert odd.clearances(6)[:2] == [(2, 2), (2, 2)]  # slices of 10.1 s: 10.0 | 10.2
    assert replace(lat, cleared_s=()).clearances(6) == [(0, 0)] * 6


def test_the_sampler_splits_kernel_time_from_the_rest(tmp_path: Path) -> None:
    import os

    from bench.procs import RssSampler

    sampler = RssSampler({"me": os.getpid()}, interval=0.05).start()
    path = tmp_path / "f"
    for _ in range(3_000):  # system calls: kernel time
        path.write_bytes(b"x" * 4096)
    sum(i * i for i in range(300_000))  # user time
    me = sampler.stop()["me"]
    assert me.cpu_seconds > 0 and 0 < me.system_seconds <= me.cpu_seconds


def test_service_settings_reach_every_service_process(tmp_path) -> None:
    """`--service-setting` is the one way to change a service setting in a run (the
    bench pins every other IDT_* to its default); the results' command shows it."""
    from bench.procs import BenchStack

    parser = build_parser()
    argv = [
        "--service-setting",
        "outbox_retention_s=60",
        "--service-setting",
        "IDT_MEMORY_TRIM_S=0",
    ]
    cfg = config_from(parser.parse_args(argv), argv)
    assert cfg.service_settings == (("outbox_retention_s", "60"), ("memory_trim_s", "0"))
    assert "--service-setting outbox_retention_s=60" in cfg.command
    assert config_from(parser.parse_args([]), []).service_settings == ()

    stack = BenchStack(tmp_path, settings=dict(cfg.service_settings))
    stack.redis = type("R", (), {"url": "redis://127.0.0.1:1/0"})()  # type: ignore[assignment]
    env = stack.env(0, "scheduler")
    assert env["IDT_OUTBOX_RETENTION_S"] == "60" and env["IDT_MEMORY_TRIM_S"] == "0"

    for bad in ("outbox_retention_s", "=60", "1x=2", "nosuch:read_linger_ms=40"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--service-setting", bad])


def test_a_service_setting_can_name_one_service(tmp_path) -> None:
    """`SERVICE:NAME=VALUE` reaches that service's processes only, over a setting
    for all (how to try the scheduler's read linger alone)."""
    from bench.procs import BenchStack

    parser = build_parser()
    argv = ["--service-setting", "read_linger_ms=100",
            "--service-setting", "scheduler:IDT_READ_LINGER_MS=40"]  # fmt: skip
    cfg = config_from(parser.parse_args(argv), argv)
    assert cfg.service_settings == (("read_linger_ms", "100"), ("scheduler:read_linger_ms", "40"))
    stack = BenchStack(tmp_path, settings=dict(cfg.service_settings))
    stack.redis = type("R", (), {"url": "redis://127.0.0.1:1/0"})()  # type: ignore[assignment]
    lingers = {s: stack.env(0, s)["IDT_READ_LINGER_MS"] for s in ("scheduler", "bdc", "scoring")}
    assert lingers == {"scheduler": "40", "bdc": "100", "scoring": "100"}
    assert "SCHEDULER:READ_LINGER_MS" not in " ".join(stack.env(0, "bdc"))


def test_the_activity_sampler_says_what_each_process_did_between_two_moments() -> None:
    import os
    import time

    from bench.procs import ActivitySampler

    sampler = ActivitySampler({"me": os.getpid()}, interval=0.02).start()
    a = time.perf_counter()
    sum(i * i for i in range(1_000_000))
    b = time.perf_counter()
    sampler.stop()
    cpu, read = sampler.between(a, b)["me"]
    assert cpu > 0 and (read is None or read >= 0)

    # Each counter interpolated at both ends: neighbouring slices add up.
    sampler.samples = {"p": [(0.0, 1.0, 100), (1.0, 1.5, 100), (2.0, 3.5, 900), (3.0, 4.0, 1000)]}
    assert sampler.between(1.0, 2.0) == {"p": (2.0, 800)}
    assert sampler.between(0.5, 2.5) == {"p": (2.5, 850)}
    parts = [sampler.between(x, x + 0.5)["p"] for x in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)]
    assert sum(c for c, _ in parts) == pytest.approx(3.0)
    assert sum(r for _, r in parts if r is not None) == 900
    # Outside the samples: the first's or the last's.
    assert sampler.between(-5.0, 0.0) == {"p": (0.0, 0)}
    assert sampler.between(3.0, 9.0) == {"p": (0.0, 0)}
    sampler.samples = {"p": [(0.0, 1.0, None), (1.0, 2.0, None)]}
    assert sampler.between(0.0, 1.0) == {"p": (1.0, None)}


def test_the_latency_report_shows_what_each_process_did_in_each_slice() -> None:
    sent = tuple(float(i) for i in range(60))
    samples = tuple(5_000.0 if s < 10 else 40.0 for s in sent)
    quiet = (("scheduler", 2.0, 0), ("scoring", 1.0, None))
    busy = (("scheduler", 3.5, 750 * 2**20), ("scoring", 1.0, None))
    lat = Latency(
        1000.0, 1000.0, 60.0, 60, samples, 0, 1.0, sent_s=sent, tick_s=30.2,
        activity=(busy, *[quiet] * 5),
    )  # fmt: skip
    text = render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], lat))
    assert "| published | scheduler | scoring |" in text
    assert "| 0 to 10 s | 3.5 s, 750.0 MiB | 1.0 s, ? |" in text
    assert "| 50 to 60 s | 2.0 s, 0.0 MiB | 1.0 s, ? |" in text
    trimmed = replace(lat, prepared="Before it the consumed streams were trimmed (test).")
    assert "(one clock, same process). Before it the consumed streams were trimmed (test)." in (
        render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], trimmed))
    )
    # No activity sampled (an older run): no such table.
    plain = render(results([a_run(1_000_000, 200.0, 60_000.0, (1, 1))], LATENCY))
    assert "What each process did" not in plain
