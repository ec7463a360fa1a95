"""`python -m bench` (`make bench`): generate, replay, measure, write results.md.

One run, per replay size (one size, or 100k, 1M and 10M with `--scaling`), on a
fresh stack each time (a new embedded Redis, new SQLite files or a new
PostgreSQL database, new service processes):

1. the log: simulated and scaled, or from the cache (bench/out/);
2. Redis starts; the *limit* phase measures raw redis-py pipelined XADD and
   XREADGROUP COUNT 500 + XACK on it, before any service runs;
3. the services start (uvicorn, `--replicas` each); the *throughput* phase
   publishes the whole log as fast as it can and waits until every group on every
   stream has drained, sampling RSS (0.5 s), /metrics and, with `--profile`,
   py-spy (or pyinstrument) on every service;
4. after the last size, the *latency* phase, on the same stack and state;
5. everything is stopped and removed (also on Ctrl-C), results.md is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import Any

import httpx
import psutil
import redis
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from idt_cli.replay import DrainState

from . import profiling, synth
from .machine import cpu_probe, machine
from .phases import (
    measure_limit,
    peak_rate,
    publish_log,
    rate_between,
    redis_cpu_seconds,
    run_latency,
    wait_drained,
)
from .procs import (
    CONSUMED,
    BenchError,
    BenchStack,
    MetricsSampler,
    ProcSamples,
    RssSampler,
    ServerNotSeen,
    local_postgres,
)
from .procs import scrape as scrape_metric
from .report import (
    LATENCY_RATE,
    POSTGRES_LABEL,
    Latency,
    Limit,
    ProcessStats,
    ProfileSection,
    Results,
    Run,
    ServiceRate,
    Throughput,
    goals,
    mib,
    ms,
    rate,
    render,
    size_label,
)
from .stores import PostgresDatabase, postgres_stores, postgres_version, redact, sqlite_stores

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results.md"
DEFAULT_CACHE = REPO_ROOT / "bench" / "out"
DEFAULT_EVENTS = 1_000_000
QUICK_EVENTS = 10_000
SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000, "30m": 30_000_000}
SCALING = (100_000, 1_000_000, 10_000_000)
QUICK_SCALING = (5_000, 10_000, 20_000)
DEFAULT_SEED = 2007
BENCH_LABEL = "bench (publisher)"
#: Redis memory per published event, measured (used_memory / events, AOF on).
REDIS_BYTES_PER_EVENT = 900


def parse_count(text: str) -> int:
    """`1000000`, `1_000_000`, `100k`, `1m`, `2.5M`."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1_000
    elif t.endswith("m"):
        t, scale = t[:-1], 1_000_000
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 1m, 250k)") from None
    if value < 1 or value != math.floor(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole count")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "End-to-end benchmark of the IDT pipeline (make bench).\n\n"
            "Generates a synthetic national log (cached in bench/out/), replays it through\n"
            "the full stack (embedded Redis with AOF everysec, the four services, SQLite or\n"
            "PostgreSQL), and reports end-to-end events/s (first publish to last consumer\n"
            "drained), per-service consume rates, the raw redis-py limit on the same Redis\n"
            "(pipelined XADD; XREADGROUP COUNT 500 + XACK) and the ratio to it, p50/p99\n"
            "publish-to-WINDOW_OPENED latency at a steady 1,000 events/s, peak memory per\n"
            "process and the stores' rows per claim. Writes bench/results.md."
        ),
        epilog=(
            "examples:\n"
            "  python -m bench                      # 1M events (the default)\n"
            "  python -m bench --quick              # 10k events, 5 s latency: a smoke test\n"
            "  python -m bench --size 10m --profile\n"
            "  python -m bench --scaling            # 100k, 1M, 10M: is memory flat?\n"
            "  python -m bench --postgres postgresql://user:pw@127.0.0.1/postgres\n"
            "  make bench ARGS='--size 10m'"
        ),
    )
    size = p.add_argument_group("size")
    size.add_argument(
        "--events",
        type=parse_count,
        metavar="N",
        help=f"events in the replayed log, e.g. 250k, 1m (default: {DEFAULT_EVENTS:,})",
    )
    size.add_argument(
        "--size", choices=sorted(SIZES, key=SIZES.__getitem__), help="a preset for --events"
    )
    size.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test: {QUICK_EVENTS:,} events, 5 s of latency, {QUICK_EVENTS:,} limit "
        f"entries (with --scaling: {', '.join(size_label(n) for n in QUICK_SCALING)})",
    )
    size.add_argument(
        "--scaling",
        action="store_true",
        help="replay 100k, 1M and 10M events in one run (each on a fresh stack) and "
        "tabulate rate and memory per size; the latency phase runs after the largest",
    )
    stack = p.add_argument_group("stack")
    stack.add_argument(
        "--postgres",
        metavar="URL",
        help="services on PostgreSQL (DATABASE_URL): the bench creates its own database "
        "on that server (the URL's database is used only to create and drop it)",
    )
    stack.add_argument(
        "--replicas", type=parse_count, default=1, metavar="N", help="replicas of every service"
    )
    stack.add_argument(
        "--service-setting",
        action="append",
        type=parse_setting,
        default=[],
        metavar="[SERVICE:]NAME=VALUE",
        help="a setting every service process gets (IDT_NAME=VALUE; the bench pins every "
        "other IDT_* setting to its default), e.g. outbox_retention_s=60, or one service's "
        "processes, e.g. scheduler:read_linger_ms=40; repeatable. A value a service "
        "refuses stops it at start",
    )
    phases = p.add_argument_group("phases")
    phases.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record of every service during the (largest) throughput phase "
        "(pip install py-spy), else pyinstrument inside them; a where-time-goes table "
        "in results.md. Profiling slows the run",
    )
    phases.add_argument(
        "--profiler",
        choices=("auto", "py-spy", "pyinstrument"),
        default="auto",
        help="which profiler --profile uses (default: py-spy when installed)",
    )
    phases.add_argument(
        "--latency-seconds",
        type=float,
        metavar="S",
        help="length of the latency phase (default 60, --quick 5; 0 skips it)",
    )
    phases.add_argument(
        "--trim-before-latency",
        action="store_true",
        help="before the latency phase, delete from the consumed streams what every group "
        "has acked (the stream trimmer with no retention) and ask Redis to give the memory "
        "back (MEMORY PURGE): in operation the trimmer keeps days, not a replay's backlog",
    )
    phases.add_argument(
        "--latency-rate",
        type=float,
        default=float(LATENCY_RATE),
        metavar="EV/S",
        help="steady publish rate of the latency phase (default %(default).0f)",
    )
    phases.add_argument(
        "--probe-rate",
        type=float,
        default=10.0,
        metavar="PER_S",
        help="claim-cleared probes per second within it (default %(default).0f)",
    )
    phases.add_argument(
        "--limit-entries",
        type=parse_count,
        metavar="N",
        help="entries of the limit phase (default: the log's size, at most 200k)",
    )
    phases.add_argument(
        "--metrics-interval",
        type=float,
        metavar="S",
        help="seconds between /metrics samples (default: the replay's events / 100k, "
        "between 2 and 15, Prometheus's own interval here; a scrape costs the service CPU)",
    )
    phases.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up when the services have not drained after this long "
        "(default: 600 s or 200 events/s, whichever is longer)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="FILE",
        help="results file (default bench/results.md; overwritten)",
    )
    out.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        metavar="DIR",
        help="generated logs and run directories (default bench/out/, git-ignored)",
    )
    out.add_argument("--seed", type=int, default=DEFAULT_SEED, help="simulation seed")
    out.add_argument(
        "--keep-run-dir",
        action="store_true",
        help="keep the run directory (service logs, databases, AOF) for inspection",
    )
    return p


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    scaling: bool
    postgres: str | None
    replicas: int
    profile: bool
    profiler: str
    latency_seconds: float
    latency_rate: float
    probe_rate: float
    limit_entries: int | None
    metrics_interval: float | None
    timeout: float | None
    out: Path
    cache_dir: Path
    seed: int
    keep_run_dir: bool
    command: str
    reproduce: str
    #: Settings every service gets (name without IDT_, lowercase -> value).
    service_settings: tuple[tuple[str, str], ...] = ()
    #: Trim the acked backlog from Redis before the latency phase.
    trim_before_latency: bool = False


_SETTING = re.compile(r"(?:([a-z_]+):)?(?:IDT_)?([A-Za-z][A-Za-z0-9_]*)=(.*)", re.DOTALL)


def parse_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` (NAME with or without IDT_, any case) -> (name, value); with a
    service first, `SERVICE:NAME=VALUE` -> ("service:name", value), for that
    service's processes only."""
    from .procs import SERVICE_NAMES

    m = _SETTING.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE or SERVICE:NAME=VALUE, e.g. outbox_retention_s=60 or "
            f"scheduler:read_linger_ms=40, got {text!r}"
        )
    service, name, value = m.group(1), m.group(2).lower(), m.group(3)
    if service is None:
        return name, value
    if service not in SERVICE_NAMES:
        raise argparse.ArgumentTypeError(
            f"no service {service!r} (one of {', '.join(SERVICE_NAMES)}) in {text!r}"
        )
    return f"{service}:{name}", value


def config_from(args: argparse.Namespace, argv: list[str]) -> Config:
    if args.scaling and (args.events or args.size):
        raise BenchError("--scaling replays its own sizes (100k, 1M, 10M): drop --events/--size")
    if args.scaling:
        sizes: tuple[int, ...] = QUICK_SCALING if args.quick else SCALING
    elif args.events:
        sizes = (args.events,)
    elif args.size:
        sizes = (SIZES[args.size],)
    else:
        sizes = (QUICK_EVENTS,) if args.quick else (DEFAULT_EVENTS,)
    latency = args.latency_seconds
    if latency is None:
        latency = 5.0 if args.quick else 60.0
    interval = args.metrics_interval
    limit = args.limit_entries or (QUICK_EVENTS if args.quick else None)
    args_text = shlex.join(redacted(argv))
    command = "python -m bench" + (f" {args_text}" if args_text else "")
    reproduce = command + (f"\nmake bench ARGS={shlex.quote(args_text)}" if args_text else "")
    reproduce += "  # or: make bench" if not args_text else ""
    return Config(
        sizes=sizes,
        scaling=args.scaling,
        postgres=args.postgres,
        replicas=args.replicas,
        profile=args.profile,
        profiler=args.profiler,
        latency_seconds=max(0.0, latency),
        latency_rate=args.latency_rate,
        probe_rate=args.probe_rate,
        limit_entries=limit,
        metrics_interval=interval,
        timeout=args.timeout,
        out=args.out,
        cache_dir=args.cache_dir,
        seed=args.seed,
        keep_run_dir=args.keep_run_dir,
        command=command,
        reproduce=reproduce,
        service_settings=tuple(args.service_setting),
        trim_before_latency=args.trim_before_latency,
    )


def trim_acked(client: redis.Redis) -> tuple[int, str]:
    """Delete what every group has acked from the consumed streams (the stream
    trimmer's `trim_once` with the cut-off at Redis's own now) and have Redis give
    the freed memory back (MEMORY PURGE): the entries deleted, and a sentence for
    the report (`--trim-before-latency`)."""
    from idt_cli.trim import trim_once, trimmed_streams

    before = client.info("memory")
    seconds, micros = client.time()
    done = trim_once(client, trimmed_streams(), seconds * 1000 + micros // 1000)
    client.memory_purge()
    after = client.info("memory")
    deleted = sum(t.deleted for t in done)

    def mib(info: dict[str, Any], key: str) -> str:
        return f"{info[key] / 2**20:,.0f}"

    return deleted, (
        "Before it the consumed streams were trimmed as the stream trimmer would with no "
        f"retention (`--trim-before-latency`): {deleted:,} entries every group had acked "
        f"were deleted; Redis `used_memory` {mib(before, 'used_memory')} → "
        f"{mib(after, 'used_memory')} MiB, RSS {mib(before, 'used_memory_rss')} → "
        f"{mib(after, 'used_memory_rss')} MiB (after MEMORY PURGE)."
    )


def redacted(argv: list[str]) -> list[str]:
    """The arguments with the password of a --postgres URL hidden."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--postgres":
            out.append(redact(arg))
        elif arg.startswith("--postgres="):
            out.append("--postgres=" + redact(arg.partition("=")[2]))
        else:
            out.append(arg)
    return out


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C (or a SIGTERM) waits until it has."""
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM stops the bench as Ctrl-C does: through the teardown."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _progress(console: Console, *, total: bool = True) -> Progress:
    columns: list[ProgressColumn] = [TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn(), TaskProgressColumn()]
    columns += [TimeElapsedColumn()]
    if total:
        columns += [TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False)


def _fifth_peaks(samples: ProcSamples, first: float, end: float) -> tuple[int, int]:
    """Peak RSS in the second fifth and in the last fifth of [first, end]."""
    span = max(end - first, 1e-9)

    def peak(lo: float, hi: float) -> int:
        inside = [r for t, r in samples.rss if first + lo * span <= t <= first + hi * span]
        if inside:
            return max(inside)
        # A very short replay: the sample nearest the middle of the part.
        mid = first + (lo + hi) / 2 * span
        return min(samples.rss, key=lambda s: abs(s[0] - mid))[1] if samples.rss else 0

    return peak(0.2, 0.4), peak(0.8, 1.0)


class Bench:
    def __init__(self, cfg: Config, console: Console) -> None:
        self.cfg = cfg
        self.console = console
        self.redis_version = "unknown"
        #: A replay used a PostgreSQL server whose processes could not be sampled.
        self.postgres_unseen = False
        self.started = datetime.now(UTC)
        self.profile: ProfileSection | None = None
        self.tool: str | None = None
        if cfg.profile:
            spy = profiling.pyspy_binary() is not None
            pyi = profiling.pyinstrument_available()
            if cfg.profiler in ("auto", "py-spy") and spy:
                self.tool = "py-spy"
            elif cfg.profiler in ("auto", "pyinstrument") and pyi:
                self.tool = "pyinstrument"
            else:
                wanted = {
                    "auto": "py-spy (`pip install py-spy`) or pyinstrument "
                    "(`pip install pyinstrument`); neither is installed",
                    "py-spy": "py-spy, which is not installed (`pip install py-spy`)",
                    "pyinstrument": "pyinstrument, which is not installed "
                    "(`pip install pyinstrument`)",
                }[cfg.profiler]
                raise BenchError(f"--profile needs {wanted}")

    # ------------------------------------------------------------------ the run

    def run(self) -> Results:
        cfg = self.cfg
        started = self.started = datetime.now(UTC)
        pg_version = None
        if cfg.postgres:
            try:
                pg_version = postgres_version(cfg.postgres)
            except Exception as exc:
                raise BenchError(
                    f"cannot use PostgreSQL at {redact(cfg.postgres)}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
        # The machine as the run starts (its load average); Redis's version once known.
        host = machine("unknown", pg_version)
        load = host.load_average[0]
        runs: list[Run] = []
        latency: Latency | None = None
        notes: list[str] = []
        available = int(psutil.virtual_memory().available)
        for events in cfg.sizes:
            need = events * REDIS_BYTES_PER_EVENT
            if need > 0.8 * available:
                warning = (
                    f"Redis keeps every published entry (the streams are not trimmed): about "
                    f"{mib(need)} for {size_label(events)} events, and "
                    f"{mib(available)} of memory is available now; the run may fail."
                )
                self.console.print(f"[yellow]warning:[/] {warning}")
                notes.append(warning)
        for i, events in enumerate(cfg.sizes):
            last = i == len(cfg.sizes) - 1
            log = self.prepare_log(events)
            label = size_label(events)
            self.console.rule(
                f"[bold]{label} replay[/] ({log.events:,} events, {log.claims:,} claims)"
            )
            run, lat = self.one_run(
                log, label, with_latency=last and cfg.latency_seconds > 0, with_profile=last
            )
            runs.append(run)
            latency = lat if lat is not None else latency
        cores = os.cpu_count() or 1
        if load > 0.5 * cores:
            notes.append(
                f"The 1-minute load average was {load:.2f} on {cores} cores when the run "
                "started: other work was running, so these numbers are noisy."
            )
        if self.profile is not None:
            notes.append(
                f"Profiled run ({self.profile.tool} attached): throughput and latency are "
                "lower than without profiling."
            )
        if self.postgres_unseen:
            notes.append(
                "PostgreSQL's processes were not on this machine or not readable (a server in "
                "a container or on another host): its CPU is in no table, and CPU per event "
                "(all processes) leaves it out."
            )
        if cfg.replicas > 1 and not cfg.postgres:
            notes.append(
                f"{cfg.replicas} replicas per service share each service's SQLite file, one "
                "writer at a time."
            )
        database = (
            f"PostgreSQL {pg_version} ({redact(cfg.postgres)}, a database of the bench's own)"
            if cfg.postgres
            else "SQLite (a file per service)"
        )
        return Results(
            started=started,
            command=cfg.command,
            reproduce=cfg.reproduce,
            machine=dataclasses.replace(
                host,
                redis_version=self.redis_version,
                load_average_end=os.getloadavg(),
                cpu_probe_end_ms=cpu_probe(),
            ),
            database=database,
            replicas=cfg.replicas,
            runs=runs,
            latency=latency,
            profile=self.profile,
            scaling=cfg.scaling,
            notes=notes,
        )

    def prepare_log(self, events: int) -> synth.LogInfo:
        cfg = self.cfg
        path = cfg.cache_dir / f"log-v{synth.VERSION}-e{events}-s{cfg.seed}.jsonl"
        if path.exists():
            info = synth.ensure_log(cfg.cache_dir, events, cfg.seed)
            self.console.print(f"Log: {info.path} (cached)")
            return info
        base_claims = synth.base_claims_for(events)
        start = synth.default_start()
        days = synth.year_days(start)
        with _progress(self.console) as progress:
            sim = progress.add_task(f"Simulating a base year of {base_claims:,} claims", total=days)
            scale = progress.add_task(f"Scaling to {events:,} events", total=events)
            info = synth.ensure_log(
                cfg.cache_dir,
                events,
                cfg.seed,
                on_day=lambda _day: progress.advance(sim),
                on_line=lambda k: progress.advance(scale, k),
            )
            progress.update(sim, completed=days)
            progress.update(scale, completed=events)
        self.console.print(
            f"Log: {info.path} ({info.events:,} events, {info.bytes / 1e6:,.0f} MB; base "
            f"{info.base_claims:,} claims, scaled by {info.factor:.2f})"
        )
        return info

    def one_run(
        self, log: synth.LogInfo, label: str, *, with_latency: bool, with_profile: bool
    ) -> tuple[Run, Latency | None]:
        cfg = self.cfg
        run_dir = cfg.cache_dir / f"run-{os.getpid()}-{label}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        pg = PostgresDatabase(cfg.postgres) if cfg.postgres else None
        profile = with_profile and self.tool is not None
        stack = BenchStack(
            run_dir,
            replicas=cfg.replicas,
            pyinstrument=profile and self.tool == "pyinstrument",
            settings=dict(cfg.service_settings),
        )
        try:
            if pg is not None:
                try:
                    stack.database_url = pg.create()
                except Exception as exc:
                    raise BenchError(
                        f"cannot create the bench's database {pg.name}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}"
                    ) from None
                try:
                    stack.database_server = local_postgres(stack.database_url)
                except ServerNotSeen as why:
                    self.postgres_unseen = True
                    self.console.print(
                        f"PostgreSQL's processes are not sampled ({why}): its CPU is not counted"
                    )
            url = stack.start_redis()
            client = redis.Redis.from_url(url, socket_timeout=600)
            self.redis_version = str(client.info("server")["redis_version"])
            limit = self.limit_phase(client, log)
            self.console.print(
                f"Starting {len(stack_services())} services, {cfg.replicas} replica(s) each "
                f"({'PostgreSQL' if pg else 'SQLite'})"
            )
            stack.start_services()
            throughput = self.throughput_phase(stack, client, log, label, profile)
            latency = None
            if with_latency:
                trimmed = self.trim_phase(client) if cfg.trim_before_latency else ""
                latency = replace(self.latency_phase(stack, client), prepared=trimmed)
            stack.check_alive()
            client.close()
            return Run(label, throughput, limit), latency
        finally:
            with sigint_ignored():
                stack.close()
                if pg is not None:
                    with contextlib.suppress(Exception):
                        pg.drop()
                if cfg.keep_run_dir:
                    self.console.print(f"Run directory kept: {run_dir}")
                else:
                    shutil.rmtree(run_dir, ignore_errors=True)

    # ------------------------------------------------------------------ phases

    def limit_phase(self, client: redis.Redis, log: synth.LogInfo) -> Limit:
        entries = self.cfg.limit_entries or min(max(log.events, 20_000), 200_000)
        lines = synth.sample_claim_lines(log.path, 5_000)
        with _progress(self.console) as progress:
            task = progress.add_task("Limit: raw XADD, then XREADGROUP+XACK", total=2 * entries)
            limit = measure_limit(
                client, lines, entries, on_progress=lambda k: progress.advance(task, k)
            )
        self.console.print(
            f"Limit: pipelined XADD {rate(limit.xadd_rate)}, XREADGROUP COUNT 500 + XACK "
            f"{rate(limit.read_ack_rate)} ({entries:,} entries of {limit.entry_bytes:,.0f} B; "
            f"Redis's CPU {limit.xadd_cpu_us or 0:.2f} µs an XADD, "
            f"{limit.read_ack_cpu_us or 0:.2f} µs a read+ack)"
        )
        return limit

    def throughput_phase(
        self,
        stack: BenchStack,
        client: redis.Redis,
        log: synth.LogInfo,
        label: str,
        profile: bool,
    ) -> Throughput:
        cfg = self.cfg
        urls = stack.urls()
        pids = {**stack.sampled(), BENCH_LABEL: os.getpid()}
        spy: profiling.PySpy | None = None
        if profile and self.tool == "py-spy":
            binary = profiling.pyspy_binary()
            assert binary is not None
            service_pids = {r.label: r.proc.pid for r in stack.running}
            spy = profiling.PySpy(binary, service_pids, stack.run_dir / "profile")
        timeout = cfg.timeout or max(600.0, log.events / 200)
        interval = cfg.metrics_interval or min(15.0, max(2.0, log.events / 100_000))
        rss = RssSampler(pids).start()
        metrics = MetricsSampler(urls, interval)
        drained = None
        try:
            if spy is not None:
                spy.start()
            if profile and self.tool == "pyinstrument":
                stack.signal_services(signal.SIGUSR1)
            with _progress(self.console) as progress:
                task = progress.add_task("Publishing", total=log.events)
                metrics.start(perf_counter())
                redis_cpu = redis_cpu_seconds(client)
                published = publish_log(
                    client, log.path, on_events=lambda k: progress.advance(task, k)
                )
                publish_s = published.last - published.first
                progress.update(
                    task, description=f"Published ({rate(published.events / publish_s)})"
                )
                behind = progress.add_task("Consuming: groups behind", total=None)

                def on_poll(state: DrainState, now: float) -> None:
                    progress.update(
                        behind,
                        description=f"Consuming: {len(state.lagging)} groups behind, "
                        f"{now - published.first:,.0f} s since the first publish",
                    )

                drained = wait_drained(
                    client,
                    published.last_added,
                    urls,
                    timeout=timeout,
                    check=stack.check_alive,
                    on_poll=on_poll,
                )
                progress.update(behind, description="Consumed: every group drained")
                redis_cpu = redis_cpu_seconds(client) - redis_cpu
        finally:
            metrics.stop()
            samples = rss.stop()
            if spy is not None:
                raw = spy.stop()
                if drained is not None:
                    self.profile = self._pyspy_section(raw, drained.end - published.first, label)
        if profile and self.tool == "pyinstrument":
            self.profile = self._pyinstrument_section(stack, label)
        e2e_s = drained.end - published.first
        with httpx.Client(timeout=60.0) as http:
            consumed = scrape_metric(http, urls, CONSUMED)
        services = []
        for service in urls:
            shift = metrics.t0 - published.first  # sample times from the first publish
            points = sorted((t + shift, c) for t, s, c in metrics.points if s == service)
            finished = drained.groups.get(service)
            finished_s = (finished - published.first) if finished is not None else None
            scrapes = metrics.scrape_seconds.get(service) or []
            total = float(consumed.get(service, 0))
            # The count is 0 at the first publish and final once the group drained.
            curve = [(0.0, 0.0), *points]
            if finished_s is not None:
                curve = [p for p in curve if p[0] < finished_s] + [(finished_s, total)]
            span = finished_s or e2e_s
            services.append(
                ServiceRate(
                    service=service,
                    consumed=int(total),
                    finished_s=finished_s,
                    peak_rate=peak_rate(points, interval),
                    scrape_ms=statistics.median(scrapes) * 1000 if scrapes else None,
                    early_rate=rate_between(curve, 0.2 * span, 0.4 * span),
                    late_rate=rate_between(curve, 0.8 * span, span),
                )
            )
        processes = []
        for label_, s in samples.items():
            early, late = _fifth_peaks(s, published.first, drained.end)
            processes.append(
                ProcessStats(
                    label=label_,
                    peak_rss=s.peak_rss,
                    early_rss=early,
                    late_rss=late,
                    cpu_seconds=s.cpu_seconds,
                    is_service=label_ not in ("redis-server", BENCH_LABEL, POSTGRES_LABEL),
                    system_seconds=s.system_seconds,
                )
            )
        memory = client.info("memory")
        alerts = [k.decode() for k in client.scan_iter("idt:window-alerts:*", _type="stream")]
        derived = (
            ("idt:window-outcome", int(client.xlen("idt:window-outcome"))),
            (f"idt:window-alerts:* ({len(alerts)} offices)", sum(client.xlen(k) for k in alerts)),
        )
        stores = (
            postgres_stores(stack.database_url) if stack.database_url else sqlite_stores(stack.var)
        )
        result = Throughput(
            events=published.events,
            claims=log.claims,
            log_bytes=log.bytes,
            publish_s=publish_s,
            e2e_s=e2e_s,
            services=tuple(services),
            processes=tuple(processes),
            dead_letters=int(client.xlen("idt:dead-letters")),
            redis_used_memory=int(memory["used_memory"]),
            redis_peak_memory=int(memory["used_memory_peak"]),
            derived=derived,
            stores=tuple(stores),
            redis_cpu_s=redis_cpu,
        )
        self.console.print(
            f"End to end: [bold]{rate(result.e2e_rate)}[/] ({published.events:,} events in "
            f"{e2e_s:,.1f} s; publishing alone {rate(result.publish_rate)})"
        )
        if result.dead_letters:
            self.console.print(
                f"[yellow]warning:[/] {result.dead_letters:,} dead letters (see the services' logs)"
            )
        return result

    def profile_dir(self, label: str) -> Path:
        """Where a run's raw profiles are kept (they outlive the run directory)."""
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = self.cfg.cache_dir / f"profile-{stamp}-{label}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _pyspy_section(
        self, raw: dict[str, tuple[str | None, str]], seconds: float, label: str
    ) -> ProfileSection:
        section = ProfileSection(tool="py-spy record --nonblocking", run_label=label)
        keep = self.profile_dir(label)
        section.saved_to = str(keep)
        for proc_label, (text, log) in raw.items():
            if not text:
                tail = "\n".join(log.strip().splitlines()[-5:])
                section.problems.append(f"py-spy recorded nothing for {proc_label}: {tail}")
                continue
            (keep / f"py-spy-{proc_label.replace('/', '-')}.txt").write_text(text)
            stacks = profiling.parse_raw(text)
            section.summaries.append(
                profiling.summarise(proc_label, stacks, seconds, profiling.PYSPY_RATE)
            )
        section.overall = profiling.merge("all services", section.summaries)
        return section

    def _pyinstrument_section(self, stack: BenchStack, label: str) -> ProfileSection:
        stack.signal_services(signal.SIGUSR2)
        section = ProfileSection(tool="pyinstrument (event-loop thread)", run_label=label)
        deadline = time.monotonic() + 60
        for r in stack.running:
            assert r.profile_out is not None
            while not r.profile_out.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            if r.profile_out.exists():
                section.texts[r.label] = r.profile_out.read_text(errors="replace")
                keep = self.profile_dir(label)
                section.saved_to = str(keep)
                shutil.copy(r.profile_out, keep / r.profile_out.name)
            else:
                section.problems.append(f"pyinstrument wrote no report for {r.label}")
        return section

    def trim_phase(self, client: redis.Redis) -> str:
        deleted, note = trim_acked(client)
        self.console.print(f"Trimmed {deleted:,} acked entries before the latency phase")
        return note

    def latency_phase(self, stack: BenchStack, client: redis.Redis) -> Latency:
        from idt_cli.demo import at
        from idt_cli.offices import DEFAULT_OFFICES, read_registry
        from idt_cli.simulate import offices_by_kind

        cfg = self.cfg
        start = synth.default_start()
        day0 = start + timedelta(days=synth.year_days(start))
        registry = read_registry(DEFAULT_OFFICES, time=at(day0, 0, 0))
        offices = offices_by_kind(registry.events)
        needed = math.ceil(cfg.latency_seconds * cfg.latency_rate) + 1_000
        self.console.print(f"Latency: preparing {needed:,} background events")
        filler = synth.ensure_filler(cfg.cache_dir, needed, cfg.seed, day0)
        urls = stack.urls()

        def drain(last: dict[str, bytes]) -> None:
            wait_drained(client, last, urls, timeout=600, settle=1.0, check=stack.check_alive)

        with _progress(self.console) as progress:
            task = progress.add_task(
                f"Latency at {cfg.latency_rate:,.0f} events/s", total=round(cfg.latency_seconds)
            )
            latency = run_latency(
                client,
                stack.redis_url,
                filler=filler,
                offices=offices,
                day0=day0,
                seed=cfg.seed,
                rate=cfg.latency_rate,
                seconds=cfg.latency_seconds,
                probe_rate=cfg.probe_rate,
                drain=drain,
                on_second=lambda s: progress.update(task, completed=min(s, cfg.latency_seconds)),
                watch=stack.sampled(),
            )
            progress.update(task, completed=round(cfg.latency_seconds))
        self.console.print(
            f"Latency: p50 {ms(latency.p(50))}, p99 {ms(latency.p(99))} over "
            f"{len(latency.samples_ms)} alerts at {rate(latency.achieved_rate)}"
            + (f"; {latency.missing} never arrived" if latency.missing else "")
        )
        return latency


def stack_services() -> tuple[str, ...]:
    from .procs import SERVICE_NAMES

    return SERVICE_NAMES


# --------------------------------------------------------------------------- output


def summary_table(results: Results) -> Table:
    run = results.headline
    t = run.throughput
    table = Table(title=f"IDT bench: {run.label} replay", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("end to end", f"{rate(t.e2e_rate)} ({t.events:,} events in {t.e2e_s:,.1f} s)")
    table.add_row("publish (pipelined XADD)", rate(t.publish_rate))
    table.add_row("raw XADD / XREADGROUP+XACK", f"{rate(run.limit.xadd_rate)} / "
                  f"{rate(run.limit.read_ack_rate)}")  # fmt: skip
    table.add_row("ratio pipeline / limit", f"{run.ratio:.1%}")
    for s in t.services:
        table.add_row(f"  {s.service}", f"{s.consumed:,} consumed, mean {rate(s.mean_rate)}")
    lat = results.latency
    if lat is not None:
        table.add_row(
            "latency p50 / p99 / max",
            f"{ms(lat.p(50))} / {ms(lat.p(99))} / "
            f"{ms(max(lat.samples_ms) if lat.samples_ms else None)}",
        )
    for p in t.processes:
        table.add_row(f"  peak RSS {p.label}", mib(p.peak_rss))
    return table


def goals_table(results: Results) -> Table:
    table = Table(title="Goals")
    for col in ("goal", "target", "measured", "result"):
        table.add_column(col)
    colours = {"PASS": "green", "FAIL": "red"}
    for g in goals(results):
        colour = colours.get(g.verdict, "yellow")
        table.add_row(g.name, g.target, g.measured, f"[{colour}]{g.verdict}[/]")
    return table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cfg = config_from(args, argv)
        bench = Bench(cfg, console)
        results = bench.run()
    except BenchError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        for title, text in exc.details:
            err.print(f"[bold]{escape(title)}[/]")
            err.print(escape(text.rstrip() or "(empty)"), soft_wrap=True)
        if exc.details and "--keep-run-dir" not in argv:
            err.print("(the run directory was removed; --keep-run-dir keeps the logs)")
        return 1
    except KeyboardInterrupt as exc:
        why = str(exc) or "SIGINT"
        err.print(f"interrupted ({why}): every process the bench started was stopped")
        return 130
    text = render(results)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(text)
    console.print(summary_table(results))
    console.print(goals_table(results))
    console.print(f"Wrote {cfg.out}")
    return 0
