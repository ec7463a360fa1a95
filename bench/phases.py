"""The measurements: the machine's limit, the throughput replay and its drain, and
the publish-to-alert latency at a steady rate."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any

import httpx
import redis

from idt_cli.demo import at
from idt_cli.replay import DrainState, derived_tails, drain_state
from idt_contract import Envelope, encode, make_event
from idt_contract.events import (
    Benefit,
    ClaimCleared,
    ClaimClearedData,
    ClaimRegistered,
    ClaimRegisteredData,
    ClearanceOutcome,
    ClockTick,
    MarkerName,
    MarkerSet,
    MarkerSetData,
    PrimaryBenefit,
)
from idt_contract.streams import alerts_stream, stream_for

from .procs import OUTBOX_PENDING, ActivitySampler, BenchError, ServerTree, scrape
from .report import LATENCY_SLICES, Latency, Limit
from .synth import clone_customer_ref, date_of, read_lines, stream_of

PIPELINE_BATCH = 500
LIMIT_KEY = "bench:limit"
LIMIT_GROUP = "bench"

# --------------------------------------------------------------------------- the limit


def xadd(pipe: Any, stream: str, line: bytes) -> None:
    """Queue `XADD <stream> * __data__ <line>` (the plain command: no per-call checks)."""
    pipe.execute_command("XADD", stream, "*", "__data__", line)


def redis_cpu_seconds(client: redis.Redis) -> float:
    """Redis's own CPU time so far, user + system (`INFO cpu`): its main thread's,
    which executes every command (Redis 6.2 and later say it), else the whole
    process's (background saves and fsyncs too)."""
    info: Any = client.info("cpu")
    if "used_cpu_user_main_thread" in info:
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_limit(
    client: redis.Redis,
    lines: list[bytes],
    entries: int,
    batch: int = PIPELINE_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> Limit:
    """Pipelined XADD of `entries` real log lines (cycled) to a fresh stream, then
    one client reading them with `XREADGROUP COUNT <batch>` and acking each batch
    with XACK; the stream is deleted afterwards. Rates in entries per second, and
    Redis's own CPU per entry in each part (nothing else uses the server then)."""
    if not lines:
        raise ValueError("the limit needs sample lines")
    client.delete(LIMIT_KEY)
    pipe = client.pipeline(transaction=False)
    cpu = redis_cpu_seconds(client)
    began = perf_counter()
    for i in range(entries):
        xadd(pipe, LIMIT_KEY, lines[i % len(lines)])
        if (i + 1) % batch == 0:
            pipe.execute()
            if on_progress is not None:
                on_progress(batch)
    pipe.execute()
    xadd_s = perf_counter() - began
    xadd_cpu = redis_cpu_seconds(client) - cpu
    client.xgroup_create(LIMIT_KEY, LIMIT_GROUP, id="0")
    read = 0
    cpu = redis_cpu_seconds(client)
    began = perf_counter()
    while True:
        resp: Any = client.xreadgroup(LIMIT_GROUP, "c1", {LIMIT_KEY: ">"}, count=batch)
        if not resp:
            break
        ids = [entry_id for entry_id, _ in resp[0][1]]
        if not ids:
            break
        client.xack(LIMIT_KEY, LIMIT_GROUP, *ids)
        read += len(ids)
        if on_progress is not None:
            on_progress(len(ids))
    read_s = perf_counter() - began
    read_cpu = redis_cpu_seconds(client) - cpu
    client.delete(LIMIT_KEY)
    mean = sum(len(line) for line in lines) / len(lines)
    return Limit(
        entries,
        mean,
        entries / xadd_s,
        read / read_s if read_s > 0 else 0.0,
        xadd_cpu_us=xadd_cpu * 1e6 / entries,
        read_ack_cpu_us=read_cpu * 1e6 / read if read else None,
    )


# --------------------------------------------------------------------------- replay


@dataclass
class Published:
    events: int
    #: perf_counter() just before the first batch went out, after the last came back.
    first: float
    last: float
    last_added: dict[str, bytes]


def publish_log(
    client: redis.Redis,
    path: Path,
    batch: int = PIPELINE_BATCH,
    on_events: Callable[[int], None] | None = None,
) -> Published:
    """XADD every line of the log to its type's stream, `batch` per round trip, in
    file order, reading the file line by line."""
    pipe = client.pipeline(transaction=False)
    pending: list[str] = []
    last: dict[str, bytes] = {}
    first: float | None = None
    events = 0

    def flush() -> None:
        nonlocal first
        if first is None:
            first = perf_counter()
        ids = pipe.execute()
        for stream, entry_id in zip(pending, ids, strict=True):
            last[stream] = entry_id
        if on_events is not None:
            on_events(len(pending))
        pending.clear()

    for line in read_lines(path):
        stream = stream_of(line)
        xadd(pipe, stream, line)
        pending.append(stream)
        events += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    if first is None:
        raise BenchError(f"the log {path} is empty")
    return Published(events, first, perf_counter(), last)


@dataclass
class Drained:
    #: perf_counter() when everything was first seen drained (and stayed so).
    end: float
    #: Consumer group (= service) -> perf_counter() when it was first seen drained.
    groups: dict[str, float] = field(default_factory=dict)
    state: DrainState | None = None


def wait_drained(
    client: redis.Redis,
    last_added: dict[str, bytes],
    urls: dict[str, list[str]],
    *,
    timeout: float,
    settle: float = 2.0,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
    on_poll: Callable[[DrainState, float], None] | None = None,
) -> Drained:
    """Poll until every group on every stream published to, and on every stream the
    services derive (window outcomes, alerts), has read and acked everything, and
    then until the derived streams have not grown for `settle` seconds and no
    outbox holds an unpublished event. The end is the first poll of that final,
    unchanged state; each group's time is its first drained poll for good."""
    deadline = time.monotonic() + timeout
    groups: dict[str, float] = {}
    candidate: float | None = None
    candidate_tails: dict[str, bytes] | None = None
    with httpx.Client(timeout=30.0) as http:
        while True:
            now = perf_counter()
            tails = derived_tails(client)
            state = drain_state(client, {**last_added, **tails})
            by_group: dict[str, bool] = {}
            for g in state.groups:
                by_group[g.group] = by_group.get(g.group, True) and g.drained
            for group, ok in by_group.items():
                if ok:
                    groups.setdefault(group, now)
                else:
                    groups.pop(group, None)
            if not state.drained:
                candidate = None
            elif candidate is None or tails != candidate_tails:
                candidate, candidate_tails = now, tails
            elif now - candidate >= settle:
                pending = scrape(http, urls, OUTBOX_PENDING)
                if not any(pending.values()):
                    return Drained(candidate, groups, state)
                candidate = None
            if on_poll is not None:
                on_poll(state, now)
            if check is not None:
                check()
            if time.monotonic() > deadline:
                lagging = "; ".join(str(g) for g in state.lagging[:10]) or "outboxes not empty"
                raise BenchError(f"the services did not drain within {timeout:.0f} s: {lagging}")
            time.sleep(interval)


def peak_rate(points: list[tuple[float, float]], window: float) -> float | None:
    """The best (Δ consumed / Δ t) between samples at least `window` seconds apart
    (each from the earliest later sample that far on)."""
    best: float | None = None
    j = 0
    for i, (t0, c0) in enumerate(points):
        j = max(j, i + 1)
        while j < len(points) and points[j][0] - t0 < window:
            j += 1
        if j >= len(points):
            break
        t1, c1 = points[j]
        r = (c1 - c0) / (t1 - t0)
        best = r if best is None else max(best, r)
    return best


def rate_between(points: list[tuple[float, float]], a: float, b: float) -> float | None:
    """The mean rate between times `a` and `b` of a cumulative count sampled at
    `points` (time, count), the count interpolated linearly between samples."""
    if b <= a or len(points) < 2 or a < points[0][0] or b > points[-1][0]:
        return None

    def at(t: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(points):
            if t0 <= t <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    return (at(b) - at(a)) / (b - a)


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Probe:
    claim_id: str
    jobcentre_id: str
    contact_centre_id: str
    bdc_id: str
    benefit: Benefit


def make_probes(
    count: int, offices: dict[str, list[str]], seed: int, tag: str = "p"
) -> list[Probe]:
    """IB and JSA claims on random Jobcentres (WINDOW_OPENED fires at clearance)."""
    rnd = random.Random(f"bench-probes:{seed}")
    return [
        Probe(
            claim_id=f"BENCH-{tag}{i:06d}",
            jobcentre_id=rnd.choice(offices["JOBCENTRE"]),
            contact_centre_id=rnd.choice(offices["CONTACT_CENTRE"]),
            bdc_id=rnd.choice(offices["BDC"]),
            benefit=Benefit.IB if i % 2 == 0 else Benefit.JSA,
        )
        for i in range(count)
    ]


def registration_lines(probe: Probe, day: date) -> list[bytes]:
    """claim-registered and both JP markers, as the Contact Centre publishes them;
    the claim started the day before `day`."""
    when = at(day, 9, 0)
    source = f"/offices/{probe.contact_centre_id}"
    primary = (
        PrimaryBenefit.INCAPACITATED_DISABLED
        if probe.benefit is Benefit.IB
        else PrimaryBenefit.JOBSEEKER
    )
    datas: list[tuple[type[Envelope], object]] = [
        (
            ClaimRegistered,
            ClaimRegisteredData(
                claim_id=probe.claim_id,
                customer_ref=clone_customer_ref("cr_" + "0" * 40, probe.claim_id),
                benefit=probe.benefit,
                claim_start_date=day - timedelta(days=1),
                contact_centre_id=probe.contact_centre_id,
            ),
        ),
        (
            MarkerSet,
            MarkerSetData(
                claim_id=probe.claim_id, marker=MarkerName.PRIMARY_BENEFIT, value=primary.value
            ),
        ),
        (
            MarkerSet,
            MarkerSetData(
                claim_id=probe.claim_id, marker=MarkerName.JOBCENTRE, value=probe.jobcentre_id
            ),
        ),
    ]
    return [
        encode(make_event(cls, source=source, time=when, data=data, id=f"{probe.claim_id}-{i}"))
        for i, (cls, data) in enumerate(datas)
    ]


def tick_line(day: date) -> bytes:
    """The clock tick closing `day` (23:30 London, as the simulator's)."""
    event = make_event(ClockTick, source="/clock", time=at(day, 23, 30), data=None,
                       id=f"bench-tick-{day.isoformat()}")  # fmt: skip
    return encode(event)


def clearance_line(probe: Probe, received: date, day: date) -> bytes:
    data = ClaimClearedData(
        claim_id=probe.claim_id,
        bdc_id=probe.bdc_id,
        outcome=ClearanceOutcome.ELIGIBLE,
        received_date=received,
    )
    event = make_event(
        ClaimCleared,
        source=f"/offices/{probe.bdc_id}",
        time=at(max(day, received), 16, 0),
        data=data,
        id=f"{probe.claim_id}-cleared",
    )
    return encode(event)


class AlertReader:
    """A thread blocked in XREAD on every office's alert stream, noting when each
    watched claim's first WINDOW_OPENED arrives (perf_counter, this process)."""

    def __init__(self, redis_url: str, offices: list[str], watched: set[str]) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=30)
        self.watched = watched
        self.arrived: dict[str, float] = {}
        self.ids: dict[str, Any] = {}
        for office in offices:
            stream = alerts_stream(office)
            last: Any = self.client.xrevrange(stream, count=1)
            self.ids[stream] = last[0][0] if last else "0-0"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-reader", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> AlertReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                streams: Any = self.ids
                resp: Any = self.client.xread(streams, count=1000, block=100)
                landed = perf_counter()
                for stream, entries in resp or []:
                    name = stream.decode() if isinstance(stream, bytes) else str(stream)
                    for entry_id, fields in entries:
                        self.ids[name] = entry_id
                        data = json.loads(fields[b"__data__"]).get("data") or {}
                        claim = data.get("claim_id")
                        if data.get("kind") == "WINDOW_OPENED" and claim in self.watched:
                            self.arrived.setdefault(claim, landed)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def _cycle(path: Path) -> Iterator[bytes]:
    while True:
        yield from read_lines(path)


def run_latency(
    client: redis.Redis,
    redis_url: str,
    *,
    filler: Path,
    offices: dict[str, list[str]],
    day0: date,
    seed: int,
    rate: float,
    seconds: float,
    probe_rate: float,
    drain: Callable[[dict[str, bytes]], None],
    on_second: Callable[[float], None] | None = None,
    watch: Mapping[str, int | ServerTree] | None = None,
) -> Latency:
    """Register the probe claims (and drain), then publish at a steady `rate` for
    `seconds`: the filler's events with one probe claim's clearance every
    `rate / probe_rate` events and, half-way, the clock tick closing `day0` (business
    time moves one day, as it does once a day), 10 ms worth per pipelined round
    trip. Then wait
    for the last alerts: until every probe's has landed or, failing that, until the
    stack has drained what the phase published (an alert missing then never came)."""
    count = max(1, math.ceil(seconds * probe_rate))
    probes = make_probes(count, offices, seed)
    pipe = client.pipeline(transaction=False)
    last: dict[str, bytes] = {}
    streams: list[str] = []
    for probe in probes:
        for line in registration_lines(probe, day0):
            stream = stream_of(line)
            xadd(pipe, stream, line)
            streams.append(stream)
    for stream, entry_id in zip(streams, pipe.execute(), strict=True):
        last[stream] = entry_id
    drain(last)

    everyone = sorted({o for kind in offices.values() for o in kind})
    reader = AlertReader(redis_url, everyone, {p.claim_id for p in probes}).start()
    cleared_stream = stream_for("claim-cleared")
    sent: dict[str, float] = {}
    tick_sent: float | None = None
    filler_lines = _cycle(filler)
    every = max(1, round(rate / probe_rate))
    total = math.ceil(seconds * rate)
    tick_at = total // 2
    slot = 0.01
    published = 0
    next_probe = 0
    day = day0
    behind = 0.0
    paced_last: dict[str, bytes] = {}
    cleared_s: list[float] = []
    # What each process does while the phase runs (`watch`: label -> pid).
    activity = ActivitySampler(watch, interval=0.25).start() if watch else None
    began = perf_counter()
    next_report = 1.0
    try:
        k = 0
        while True:
            target = began + k * slot
            k += 1
            wait = target - perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = perf_counter()
            elapsed = now - began
            if elapsed >= seconds:
                break
            behind = max(behind, now - target)
            due = min(int(elapsed * rate) + 1, total)
            batch_probes: list[str] = []
            batch_streams: list[str] = []
            cleared = 0  # background clearances in this round trip
            while published < due:
                if published == tick_at:
                    tick_sent = perf_counter()
                    line = tick_line(day0)
                    stream = stream_of(line)
                    xadd(pipe, stream, line)
                    batch_streams.append(stream)
                elif published % every == every // 2 and next_probe < len(probes):
                    probe = probes[next_probe]
                    next_probe += 1
                    line = clearance_line(probe, day0, day)
                    xadd(pipe, cleared_stream, line)
                    batch_probes.append(probe.claim_id)
                    batch_streams.append(cleared_stream)
                else:
                    line = next(filler_lines)
                    day = max(day, date_of(line))
                    stream = stream_of(line)
                    xadd(pipe, stream, line)
                    batch_streams.append(stream)
                    cleared += stream == cleared_stream
                published += 1
            if not batch_streams:
                continue
            t_pub = perf_counter()
            for stream, entry_id in zip(batch_streams, pipe.execute(), strict=True):
                paced_last[stream] = entry_id
            for claim in batch_probes:
                sent[claim] = t_pub
            cleared_s += [t_pub - began] * cleared
            if on_second is not None and elapsed >= next_report:
                on_second(elapsed)
                next_report += 1.0
        duration = perf_counter() - began

        def all_landed(within: float) -> bool:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline and reader.error is None:
                if set(sent) <= set(reader.arrived):
                    return True
                time.sleep(0.05)
            return False

        if not all_landed(5.0):
            drain(paced_last)
            all_landed(2.0)
    finally:
        reader.stop()
        if activity is not None:
            activity.stop()
    if reader.error is not None:
        raise BenchError(f"the alert reader failed: {reader.error!r}")
    per_slice: list[tuple[tuple[str, float, int | None], ...]] = []
    if activity is not None:
        width = duration / LATENCY_SLICES
        for i in range(LATENCY_SLICES):
            done = activity.between(began + i * width, began + (i + 1) * width)
            per_slice.append(tuple((label, cpu, read) for label, (cpu, read) in done.items()))
    landed = [(c, t) for c, t in sent.items() if c in reader.arrived]
    samples = tuple((reader.arrived[c] - t) * 1000 for c, t in landed)
    return Latency(
        target_rate=rate,
        achieved_rate=published / duration,
        seconds=duration,
        probes=len(sent),
        samples_ms=samples,
        missing=len(sent) - len(samples),
        max_behind_ms=behind * 1000,
        sent_s=tuple(t - began for _, t in landed),
        tick_s=None if tick_sent is None else tick_sent - began,
        activity=tuple(per_slice),
        cleared_s=tuple(cleared_s),
    )
