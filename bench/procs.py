"""The processes a bench run starts, and what it samples of them.

The embedded Redis (AOF, `appendfsync everysec`, as `idt up` runs it) and every
service as `python -m uvicorn <factory> --factory`, any number of replicas each,
with the environment `idt up` gives them. Everything lives in one run directory
(data, AOF, SQLite files, logs) that the caller removes; every child runs in its
own session (a terminal's Ctrl-C reaches only the bench, which then stops them)
and, on Linux, gets SIGTERM should the bench die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil

from idt_cli.services import SERVICES
from idt_cli.up import pinned_service_env
from idt_runtime.embedded_redis import EmbeddedRedis, free_port

from .report import POSTGRES_LABEL

SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_CHARS = 3000


class BenchError(Exception):
    """The bench cannot go on; `details` are (title, text) blocks such as a log tail."""

    def __init__(self, message: str, details: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def die_with_parent() -> Callable[[], None] | None:
    """Linux: a pre-exec hook asking the kernel to SIGTERM the child when the bench
    dies (even by SIGKILL), so no service outlives it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


@dataclass
class Replica:
    service: str
    slot: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    #: Where the pyinstrument wrapper writes its report (profile mode only).
    profile_out: Path | None = None

    @property
    def label(self) -> str:
        return self.service if self.slot == 0 else f"{self.service}/{self.slot}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class BenchStack:
    """Redis and the services of one bench run, in `run_dir`."""

    run_dir: Path
    database_url: str | None = None
    replicas: int = 1
    #: Start the services under the pyinstrument wrapper (bench.pyi_service).
    pyinstrument: bool = False
    #: Settings every service gets as IDT_<NAME>, or one service's processes when
    #: named `<service>:<name>` (`--service-setting`).
    settings: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    running: list[Replica] = field(default_factory=list)
    #: The PostgreSQL server's processes, when they run on this machine
    #: (`local_postgres`): sampled beside the services.
    database_server: ServerTree | None = None

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def var(self) -> Path:
        return self.run_dir / "var"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def start_redis(self) -> str:
        """The embedded Redis with its AOF in the run directory (SIGINT blocked while
        it starts, a mask it keeps: a Ctrl-C must not stop it under the services)."""
        server = EmbeddedRedis(self.run_dir / "redis", aof=True, appendfsync="everysec")
        self.redis = server
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        except RuntimeError as exc:
            raise BenchError(f"the embedded Redis did not start: {exc}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return server.url

    def env(self, slot: int, service: str) -> dict[str, str]:
        """A `service` process's environment: every setting for all services, then
        those for it alone (which win)."""
        settings: dict[str, object] = {k: v for k, v in self.settings.items() if ":" not in k}
        for key, value in self.settings.items():
            target, _, name = key.partition(":")
            if name and target == service:
                settings[name] = value
        env = pinned_service_env(
            self.redis_url, self.var, self.database_url, slot=slot, settings=settings
        )
        if self.pyinstrument:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            )
        return env

    def start_services(self, timeout: float = 120.0) -> None:
        """Start `replicas` of every service and wait until each answers /health."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.var.mkdir(parents=True, exist_ok=True)
        by_name = {s.name: s for s in SERVICES}
        for name in SERVICE_NAMES:
            for slot in range(self.replicas):
                port = free_port()
                log = self.logs / f"{name}-{slot}.log"
                factory = by_name[name].factory
                profile_out: Path | None = None
                if self.pyinstrument:
                    profile_out = self.run_dir / f"pyinstrument-{name}-{slot}.txt"
                    cmd = [sys.executable, "-m", "bench.pyi_service", factory, str(port),
                           str(profile_out)]  # fmt: skip
                else:
                    cmd = [
                        sys.executable, "-m", "uvicorn", factory, "--factory",
                        "--host", "127.0.0.1", "--port", str(port),
                        "--timeout-graceful-shutdown", "5",
                    ]  # fmt: skip
                with log.open("ab") as out:
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.env(slot, name),
                        cwd=self.run_dir,
                        start_new_session=True,
                        preexec_fn=die_with_parent(),  # before any sampler thread starts
                    )
                self.running.append(Replica(name, slot, port, proc, log, profile_out))
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            for replica in self.running:
                self._wait_healthy(http, replica, deadline)

    def _wait_healthy(self, http: httpx.Client, replica: Replica, deadline: float) -> None:
        last = "no answer yet"
        while True:
            code = replica.proc.poll()
            if code is not None:
                raise BenchError(
                    f"service {replica.label} exited with code {code} while starting",
                    [(f"last lines of {replica.log}:", tail(replica.log))],
                )
            try:
                resp = http.get(replica.url + "/health")
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise BenchError(
                    f"service {replica.label} did not become healthy ({last})",
                    [(f"last lines of {replica.log}:", tail(replica.log))],
                )
            time.sleep(0.2)

    def check_alive(self) -> None:
        """Raise with the log tail if a service or Redis has exited."""
        for replica in self.running:
            code = replica.proc.poll()
            if code is not None:
                raise BenchError(
                    f"service {replica.label} exited with code {code} during the run",
                    [(f"last lines of {replica.log}:", tail(replica.log))],
                )
        if self.redis is not None and self.redis.proc is not None:
            code = self.redis.proc.poll()
            if code is not None:
                log = self.redis.data_dir / "redis.log"
                raise BenchError(
                    f"the embedded Redis exited with code {code}",
                    [(f"last lines of {log}:", tail(log))],
                )

    def pids(self) -> dict[str, int]:
        """Label -> pid of every process of the system (the services and Redis)."""
        out = {r.label: r.proc.pid for r in self.running}
        if self.redis is not None and self.redis.proc is not None:
            out["redis-server"] = self.redis.proc.pid
        return out

    def sampled(self) -> dict[str, int | ServerTree]:
        """What the samplers watch: every process of the system (`pids`) and the
        PostgreSQL server's, when known."""
        out: dict[str, int | ServerTree] = dict(self.pids())
        if self.database_server is not None:
            out[POSTGRES_LABEL] = self.database_server
        return out

    def urls(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.running:
            out.setdefault(r.service, []).append(r.url)
        return out

    def signal_services(self, sig: int) -> None:
        for r in self.running:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(r.proc.pid, sig)

    def close(self) -> None:
        """Stop the services (SIGTERM to each session, SIGKILL after 15 s), then Redis."""
        for r in self.running:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for r in self.running:
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait(5)
        if self.redis is not None:
            self.redis.stop()


# --------------------------------------------------------------------------- samplers


@dataclass
class ProcSamples:
    label: str
    pid: int
    #: (perf_counter() of the sample, RSS bytes)
    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu_start: float | None = None
    cpu_end: float | None = None
    #: Of that, time in the kernel (system calls: reads that miss SQLite's cache,
    #: socket I/O, page faults).
    system_start: float | None = None
    system_end: float | None = None

    @property
    def peak_rss(self) -> int:
        return max((r for _, r in self.rss), default=0)

    @property
    def cpu_seconds(self) -> float:
        if self.cpu_start is None or self.cpu_end is None:
            return 0.0
        return self.cpu_end - self.cpu_start

    @property
    def system_seconds(self) -> float:
        if self.system_start is None or self.system_end is None:
            return 0.0
        return self.system_end - self.system_start


class _Times(NamedTuple):
    user: float
    system: float


class _Memory(NamedTuple):
    rss: int


class _IO(NamedTuple):
    read_bytes: int


class ServerTree:
    """A server's processes counted as one, for the samplers (they call
    `cpu_times`, `memory_info` and `io_counters`, as of a `psutil.Process`):
    PostgreSQL's postmaster and its children, which come and go with connections.

    CPU: the root's own, its children's still running, and those of its children
    that exited (the kernel adds a child's times to its parent's `children_*` once
    the parent has waited for it, as the postmaster does); a child that exits
    between the read of the root's times and the listing of the children is missed
    for that read. RSS: the processes' memory not shared (RSS less shared pages)
    plus the largest shared part once (the shared buffers every backend maps).
    Bytes read from storage: the live processes' only (an exited backend's go with
    it), so a lower bound."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.pid = root.pid

    def _children(self) -> list[psutil.Process]:
        try:
            return list(self.root.children(recursive=True))
        except psutil.Error:
            return []

    def cpu_times(self) -> _Times:
        t = self.root.cpu_times()  # raises psutil.Error once the server is gone
        user = t.user + t.children_user
        system = t.system + t.children_system
        for child in self._children():
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                user += c.user
                system += c.system
        return _Times(user, system)

    def memory_info(self) -> _Memory:
        private = shared_max = 0
        for proc in [self.root, *self._children()]:
            try:
                m = proc.memory_info()
            except psutil.Error:
                continue
            shared = int(getattr(m, "shared", 0))
            private += max(0, int(m.rss) - shared)
            shared_max = max(shared_max, shared)
        return _Memory(private + shared_max)

    def io_counters(self) -> _IO:
        """Raises `psutil.AccessDenied` when no process's could be read (a server
        run by another user, read without root): not measured, rather than 0."""
        total, read = 0, False
        for proc in [self.root, *self._children()]:
            with contextlib.suppress(psutil.Error, AttributeError, NotImplementedError):
                total += int(proc.io_counters().read_bytes)  # type: ignore[attr-defined]
                read = True
        if not read:
            raise psutil.AccessDenied(self.pid)
        return _IO(total)


class ServerNotSeen(Exception):
    """The PostgreSQL server's processes cannot be sampled from here; says why."""


#: How far the postmaster's start may be from the server's own account of it.
POSTMASTER_START_SLACK_S = 2.0


def local_postgres(database_url: str) -> ServerTree:
    """The processes of the PostgreSQL server behind `database_url`, when it runs on
    this machine and they can be read (the same process namespace, the rights to
    read them); raises `ServerNotSeen` saying why not. Found from a connection's own
    backend: its pid, checked by its process title (which names the database), and
    the backend's parent, checked to be the postmaster (named postgres, started
    when the server says it started). A server in a container or on another host
    reports pids that are not this machine's: not found."""
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    from .stores import psycopg_url

    engine = sqlalchemy.create_engine(psycopg_url(database_url))
    try:
        with engine.connect() as c:
            pid, database, started = c.exec_driver_sql(
                "SELECT pg_backend_pid(), current_database(), pg_postmaster_start_time()"
            ).one()
            try:
                backend = psutil.Process(int(pid))
                title = " ".join(backend.cmdline())
                root = backend.parent()
                root_name = root.name() if root is not None else ""
                root_started = root.create_time() if root is not None else 0.0
            except psutil.Error as exc:
                raise ServerNotSeen(f"its backend {pid} cannot be read here ({exc!r})") from None
    except SQLAlchemyError as exc:
        raise ServerNotSeen(f"cannot ask it ({type(exc).__name__})") from None
    finally:
        engine.dispose()
    # The title is "postgres: <user> <database> <client> <state>" (update_process_title).
    if f" {database} " not in f" {title} " or "postgres" not in title:
        raise ServerNotSeen(f"process {pid} here is not its backend ({title[:80]!r})")
    if root is None or root_name not in ("postgres", "postmaster"):
        raise ServerNotSeen(f"the parent of its backend {pid} is not a postmaster")
    if abs(root_started - started.timestamp()) > POSTMASTER_START_SLACK_S:
        raise ServerNotSeen(f"process {root.pid} did not start when the server did")
    return ServerTree(root)


def _pid(p: int | ServerTree) -> int:
    return p.pid if isinstance(p, ServerTree) else p


def _processes(pids: Mapping[str, int | ServerTree]) -> dict[str, psutil.Process | ServerTree]:
    """Label -> the process to sample (a pid's, while it exists), or the tree."""
    out: dict[str, psutil.Process | ServerTree] = {}
    for label, p in pids.items():
        if isinstance(p, ServerTree):
            out[label] = p
            continue
        with contextlib.suppress(psutil.Error):
            out[label] = psutil.Process(p)
    return out


def _cpu(proc: psutil.Process | ServerTree) -> tuple[float | None, float | None]:
    """(user + system, system) CPU seconds of the process so far."""
    try:
        t = proc.cpu_times()
        return float(t.user + t.system), float(t.system)
    except psutil.Error:
        return None, None


class RssSampler:
    """Every `interval` seconds, the RSS of each process (psutil), in a thread;
    CPU time used between `start` and `stop`."""

    def __init__(self, pids: Mapping[str, int | ServerTree], interval: float = 0.5) -> None:
        self.interval = interval
        self.samples = {label: ProcSamples(label, _pid(p)) for label, p in pids.items()}
        self._procs = _processes(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        for label, p in self._procs.items():
            sample = self.samples[label]
            sample.cpu_start, sample.system_start = _cpu(p)
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.perf_counter()
        for label, p in self._procs.items():
            try:
                self.samples[label].rss.append((now, int(p.memory_info().rss)))
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, ProcSamples]:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        for label, p in self._procs.items():
            sample = self.samples[label]
            sample.cpu_end, sample.system_end = _cpu(p)
        return self.samples


def _read_bytes(proc: psutil.Process | ServerTree) -> int | None:
    """Bytes the process has read from storage so far (Linux's `read_bytes`: reads
    that the kernel's page cache could not serve), None where the system does not
    say."""
    try:
        return int(proc.io_counters().read_bytes)  # type: ignore[attr-defined]
    except (psutil.Error, AttributeError, NotImplementedError):
        return None


class ActivitySampler:
    """Every `interval` seconds, each process's CPU time and bytes read from storage
    so far, in a thread: what each process did in a part of a phase (`between`)."""

    def __init__(self, pids: Mapping[str, int | ServerTree], interval: float = 1.0) -> None:
        self.interval = interval
        self._procs = _processes(pids)
        #: label -> [(perf_counter(), CPU seconds, bytes read from storage)]
        self.samples: dict[str, list[tuple[float, float, int | None]]] = {
            label: [] for label in self._procs
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)

    def start(self) -> ActivitySampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.perf_counter()
        for label, p in self._procs.items():
            cpu, _ = _cpu(p)
            if cpu is not None:
                self.samples[label].append((now, cpu, _read_bytes(p)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def between(self, a: float, b: float) -> dict[str, tuple[float, int | None]]:
        """Per process, the CPU seconds and bytes read from storage from `a` to `b`
        (perf_counter times), each counter taken at `a` and at `b` by linear
        interpolation between the samples around them (so that neighbouring
        slices do not count the same second twice)."""
        out: dict[str, tuple[float, int | None]] = {}
        for label, xs in self.samples.items():
            if not xs:
                continue
            cpu = _at(xs, a, 1), _at(xs, b, 1)
            read = _at(xs, a, 2), _at(xs, b, 2)
            bytes_read = (
                None if read[0] is None or read[1] is None else max(0, round(read[1] - read[0]))
            )
            out[label] = (max(0.0, (cpu[1] or 0.0) - (cpu[0] or 0.0)), bytes_read)
        return out


def _at(xs: list[tuple[float, float, int | None]], t: float, i: int) -> float | None:
    """Field `i` of the samples `xs` (in time order) at time `t`, interpolated
    linearly; the first or last sample's outside them; None if either sample
    around `t` lacks it."""
    if t <= xs[0][0]:
        v = xs[0][i]
        return None if v is None else float(v)
    for (t0, *v0), (t1, *v1) in itertools.pairwise(xs):
        if t0 <= t <= t1:
            a, b = v0[i - 1], v1[i - 1]
            if a is None or b is None:
                return None
            share = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return float(a) + (float(b) - float(a)) * share
    v = xs[-1][i]
    return None if v is None else float(v)


def parse_metric_sum(text: str, name: str) -> float:
    """The sum of every sample of a Prometheus metric family in an exposition text."""
    total = 0.0
    prefix_labels, prefix_bare = name + "{", name + " "
    for line in text.splitlines():
        if line.startswith(prefix_labels) or line.startswith(prefix_bare):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


CONSUMED = "idt_events_consumed_total"
OUTBOX_PENDING = "idt_outbox_pending"


def scrape(http: httpx.Client, urls: dict[str, list[str]], name: str) -> dict[str, float]:
    """Per service, the sum over its replicas of one metric family."""
    out: dict[str, float] = {}
    for service, service_urls in urls.items():
        out[service] = sum(
            parse_metric_sum(http.get(u + "/metrics").text, name) for u in service_urls
        )
    return out


class MetricsSampler:
    """Every `interval` seconds, each service's `idt_events_consumed_total` (summed
    over replicas and results) from its /metrics, in a thread; how long each scrape
    took (a scrape costs the service some CPU: the scoring service computes scores
    at scrape time)."""

    def __init__(self, urls: dict[str, list[str]], interval: float) -> None:
        self.urls = urls
        self.interval = interval
        #: (seconds since start, service, consumed so far)
        self.points: list[tuple[float, str, float]] = []
        self.scrape_seconds: dict[str, list[float]] = {s: [] for s in urls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self.t0 = time.perf_counter()

    def start(self, t0: float) -> MetricsSampler:
        self.t0 = t0
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.is_set():
                for service, urls in self.urls.items():
                    began = time.perf_counter()
                    try:
                        total = sum(
                            parse_metric_sum(http.get(u + "/metrics").text, CONSUMED) for u in urls
                        )
                    except httpx.HTTPError:
                        continue
                    done = time.perf_counter()
                    self.scrape_seconds[service].append(done - began)
                    self.points.append((done - self.t0, service, total))
                self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35)
