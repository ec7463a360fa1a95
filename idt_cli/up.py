"""`idt up`: Redis, every service in its own process, the office registry, in the
foreground, until Ctrl-C.

Order of events:
1. validate the registry file and the ports (nothing is started if either is bad);
2. start the embedded Redis (unless a Redis URL is given) and check Redis answers;
3. start each service as `python -m uvicorn <module>:<factory> --factory`, its output
   going to `<var>/logs/<service>.log`;
4. wait until every service answers `GET /health` with 200;
5. publish the office registry;
6. with `--clock live`, start the clock publisher (`python -m idt_cli.clock`), which
   sends a `clock-tick` with the wall-clock time every interval; with
   `--clock events` business time comes only from ticks on the bus (a replayed log,
   the demo simulator);
7. supervise: a service, the clock publisher or the embedded Redis that exits stops
   everything with a non-zero exit code; SIGINT or SIGTERM stops the demo and the
   clock, the services (SIGTERM, then SIGKILL after the stop timeout), then Redis,
   and exits 0.

Each service runs in its own session (process group), so a terminal's Ctrl-C
reaches only `idt`, which then stops the services before Redis. On Linux each
service also gets SIGTERM should `idt` itself die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Literal

import httpx
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from idt_runtime.embedded_redis import EmbeddedRedis

from .offices import (
    RedisUnavailable,
    RegistryFileError,
    connect,
    publish_offices,
    read_registry,
    redact_url,
)
from .registry import STREAM, RegistryParse, summarise
from .services import Service
from .varlock import VarDirBusy, VarDirLock
from .wallclock import wall_clock_now

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class UpConfig:
    services: tuple[Service, ...]
    ports: dict[str, int]
    host: str = "127.0.0.1"
    var_dir: Path = Path("var")
    #: None: start the embedded Redis under `<var>/redis`.
    redis_url: str | None = None
    #: None: each service keeps a SQLite file under the var dir.
    database_url: str | None = None
    #: None: do not publish a registry.
    offices: Path | None = None
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0
    #: Run the demo simulator (a year of claims in accelerated business time).
    demo: bool = False
    demo_day_seconds: float = 0.5
    demo_claims_per_day: int = 12
    #: "live": run the clock publisher; "events": business time only from the bus.
    clock: Literal["live", "events"] = "live"
    clock_interval: float = 60.0


class Failure(Exception):
    """`idt up` cannot go on; `details` are (title, text) blocks such as a log tail."""

    def __init__(
        self, message: str, *, exit_code: int = 1, details: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = list(details)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while starting up."""


class StopRequest:
    """SIGINT/SIGTERM: the first asks for a clean stop, a second one for a kill.

    The handler only sets flags (anything more is unsafe in a signal handler);
    the main loop polls them with short sleeps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.force = False
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is not None:
            self.force = True
        else:
            self.signal_name = signal.Signals(signum).name

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.1))
        return True


@dataclass
class RunningService:
    service: Service
    port: int
    url: str
    log_path: Path
    log_start: int
    proc: subprocess.Popen[bytes]

    @property
    def health_url(self) -> str:
        return self.url + "/health"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, self.log_start, lines)


@dataclass
class Stack:
    """What is running, to be stopped in order: the services, then Redis."""

    out: Console
    stop: StopRequest
    services: list[RunningService] = field(default_factory=list)
    redis_server: EmbeddedRedis | None = None
    client: redis.Redis | None = None
    lock: VarDirLock | None = None
    demo: subprocess.Popen[bytes] | None = None
    clock: subprocess.Popen[bytes] | None = None
    clock_log: Path | None = None
    clock_log_start: int = 0

    def stop_all(self, timeout: float) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.demo is not None:
            self._stop_child(self.demo, "the demo simulator", timeout)
            self.demo = None
        if self.clock is not None:
            self._stop_child(self.clock, "the clock publisher", timeout)
            self.clock = None
        alive = [s for s in self.services if s.proc.poll() is None]
        if alive:
            self.out.print(f"Stopping {', '.join(s.service.name for s in alive)} (SIGTERM)")
        for s in alive:
            _signal_group(s.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (
            any(s.proc.poll() is None for s in alive)
            and time.monotonic() < deadline
            and not self.stop.force
        ):
            time.sleep(0.1)
        for s in alive:
            if s.proc.poll() is None:
                why = "a second signal" if self.stop.force else f"{timeout:g} s"
                self.out.print(f"{s.service.name} is still running after {why}: killing it")
                _signal_group(s.proc, signal.SIGKILL)
            code = s.proc.wait()
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
            clean = code in (0, -signal.SIGTERM)
            self.out.print(
                f"  {s.service.name} stopped ({'clean' if clean else describe_exit(code)})"
            )
        self.services.clear()
        if self.redis_server is not None:
            if self.redis_server.proc is not None and self.redis_server.proc.poll() is None:
                self.out.print("Stopping the embedded Redis")
            self.redis_server.stop()
            self.redis_server = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _stop_child(self, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
        if proc.poll() is None:
            self.out.print(f"Stopping {name}")
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def run_up(cfg: UpConfig, out: Console, err: Console) -> int:
    """Run everything until stopped; the exit code."""
    stop = StopRequest()
    stop.install()
    stack = Stack(out, stop)
    try:
        return _run(cfg, out, stack)
    except Failure as failure:
        err.print(f"[bold red]error:[/] {escape(str(failure))}")
        for title, text in failure.details:
            err.print(f"[bold]{escape(title)}[/]")
            err.print(escape(text.rstrip() or "(empty)"), soft_wrap=True)
        return failure.exit_code
    except Interrupted:
        out.print(f"{stop.signal_name} received during start-up: stopping")
        return 0
    finally:
        stack.stop_all(cfg.stop_timeout)
        stop.restore()


def _run(cfg: UpConfig, out: Console, stack: Stack) -> int:
    stop = stack.stop
    var_dir = cfg.var_dir.resolve()
    registry = _read_registry(cfg.offices) if cfg.offices is not None else None
    _check_ports(cfg)
    logs = var_dir / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failure(f"cannot create {logs}: {exc.strerror or exc}", exit_code=2) from None
    lock = VarDirLock(var_dir)
    try:
        lock.acquire()
    except VarDirBusy as exc:
        raise Failure(str(exc), exit_code=2) from None
    stack.lock = lock

    if cfg.redis_url is None:
        server = EmbeddedRedis(var_dir / "redis", aof=True)
        stack.redis_server = server
        out.print(f"Starting the embedded Redis (data and AOF in {_show(server.data_dir)})")
        try:
            _start_shielded_from_sigint(server)
        except RuntimeError as exc:
            raise Failure(f"the embedded Redis did not start: {exc}") from None
        if server.proc is not None:
            lock.record_redis(server.proc.pid)
        redis_url = server.url
    else:
        redis_url = cfg.redis_url
    try:
        stack.client = connect(redis_url)
    except RedisUnavailable as exc:
        raise Failure(str(exc)) from None
    if stop.requested:
        raise Interrupted

    env = service_env(redis_url, var_dir, cfg.database_url)
    out.print(f"Service logs go to {_show(logs)}/<service>.log")
    for svc in cfg.services:
        running = _start_service(svc, cfg.ports[svc.name], cfg.host, env, logs)
        stack.services.append(running)
        out.print(
            f"Started {svc.name} (pid {running.proc.pid}) on {running.url}, "
            f"log {_show(running.log_path)}"
        )
    _wait_healthy(stack.services, stop, cfg.startup_timeout, out)

    registry_note = "not loaded (--no-offices)"
    if registry is not None and cfg.offices is not None:
        try:
            publish_offices(stack.client, registry.events)
        except redis.RedisError as exc:
            raise Failure(f"publishing the office registry failed: {exc}") from None
        s = summarise(registry.events)
        kinds = ", ".join(f"{n} {k.value}" for k, n in s.by_kind.items())
        registry_note = f"{s.total} offices ({kinds}) from {_show(cfg.offices)}"
        out.print(f"Published {registry_note} to {STREAM}")

    if cfg.clock == "live":
        stack.clock, stack.clock_log, stack.clock_log_start = _start_clock(
            cfg, redis_url, env, logs
        )
        out.print(
            f"Started the clock publisher (pid {stack.clock.pid}): a clock-tick every "
            f"{cfg.clock_interval:g} s; log {_show(stack.clock_log)}"
        )
    if cfg.demo:
        stack.demo = _start_demo(cfg, stack, redis_url, env, logs)
        out.print(
            f"Started the demo simulator (pid {stack.demo.pid}): a year of claims, one business "
            f"day every {cfg.demo_day_seconds:g} s; log {_show(logs / 'demo.log')}"
        )
    out.print(_where_table(cfg, stack, redis_url, var_dir, registry_note))
    return _supervise(stack)


def _start_demo(
    cfg: UpConfig, stack: Stack, redis_url: str, env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    urls = {s.service.name: s.url for s in stack.services}
    missing = {"contact_centre", "bdc"} - set(urls)
    if missing:
        raise Failure(f"--demo needs the services {sorted(missing)} running", exit_code=2)
    # A year ending today, so every date is in the past for the intakes' checks.
    start = wall_clock_now().date() - timedelta(days=365)
    cmd = [
        sys.executable, "-m", "idt_cli.demo", "--redis-url", redis_url,
        "--contact-centre", urls["contact_centre"], "--bdc", urls["bdc"],
        "--start", start.isoformat(), "--days", "365",
        "--day-seconds", str(cfg.demo_day_seconds),
        "--claims-per-day", str(cfg.demo_claims_per_day),
    ]  # fmt: skip
    if cfg.offices is not None:
        cmd += ["--offices", str(cfg.offices)]
    log = (logs / "demo.log").open("ab")
    with log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def _start_clock(
    cfg: UpConfig, redis_url: str, env: dict[str, str], logs: Path
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """The clock publisher, its log and where this run's part of the log starts."""
    log_path = logs / "clock.log"
    cmd = [
        sys.executable, "-m", "idt_cli.clock", "--redis-url", redis_url,
        "--interval", str(cfg.clock_interval),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    return proc, log_path, start


def _supervise(stack: Stack) -> int:
    while True:
        if stack.stop.wait(0.5):
            stack.out.print(f"{stack.stop.signal_name} received: stopping")
            return 0
        if stack.clock is not None and (code := stack.clock.poll()) is not None:
            log = stack.clock_log or Path("clock.log")
            raise Failure(
                f"the clock publisher {describe_exit(code)}; business time would stand "
                "still: stopping everything",
                details=[
                    (
                        f"last lines of {_show(log)}:",
                        _tail(log, stack.clock_log_start, LOG_TAIL_LINES),
                    )
                ],
            )
        if stack.demo is not None and (code := stack.demo.poll()) is not None:
            if code == 0:
                stack.out.print("The demo simulator finished its year; the services keep running")
            else:
                stack.out.print(
                    f"The demo simulator {describe_exit(code)} (see its log); "
                    "the services keep running"
                )
            stack.demo = None
        for s in stack.services:
            code = s.proc.poll()
            if code is not None:
                raise Failure(
                    f"service {s.service.name} {describe_exit(code)}; stopping everything",
                    details=[(f"last lines of {_show(s.log_path)}:", s.log_tail())],
                )
        server = stack.redis_server
        if server is not None and server.proc is not None:
            code = server.proc.poll()
            if code is not None:
                log = server.data_dir / "redis.log"
                raise Failure(
                    f"the embedded Redis {describe_exit(code)}; stopping everything",
                    details=[(f"last lines of {_show(log)}:", _tail(log, 0, LOG_TAIL_LINES))],
                )


# ---------------------------------------------------------------- start-up steps


def _read_registry(path: Path) -> RegistryParse:
    try:
        registry = read_registry(path, time=wall_clock_now())
    except RegistryFileError as exc:
        raise Failure(str(exc), exit_code=2) from None
    if not registry.ok:
        problems = "\n".join(str(e) for e in registry.errors)
        raise Failure(
            f"the office registry {_show(path)} has {len(registry.errors)} problem(s); "
            "nothing was started (fix the file, or pass --no-offices)",
            exit_code=2,
            details=[("problems:", problems)],
        )
    return registry


def _check_ports(cfg: UpConfig) -> None:
    taken: dict[int, str] = {}
    for svc in cfg.services:
        port = cfg.ports[svc.name]
        if port in taken:
            raise Failure(
                f"{taken[port]} and {svc.name} would both listen on port {port}; "
                f"give {svc.name} another with {svc.port_option} (or {svc.port_env})",
                exit_code=2,
            )
        taken[port] = svc.name
        problem = _bind_problem(cfg.host, port)
        if problem is not None:
            raise Failure(
                f"{svc.name} cannot listen on {cfg.host}:{port}: {problem}; "
                f"choose another port with {svc.port_option} (or {svc.port_env})",
                exit_code=2,
            )


def _bind_problem(host: str, port: int) -> str | None:
    """Why a listener could not bind host:port now, or None when it could."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"the host {host!r} does not resolve ({exc.strerror})"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn does: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return "the port is already in use" if exc.errno == errno.EADDRINUSE else str(exc)
    return None


def _start_shielded_from_sigint(server: EmbeddedRedis) -> None:
    """Start redis-server with SIGINT blocked, a mask it inherits and keeps.

    A terminal's Ctrl-C signals the whole foreground process group, which includes
    the redis-server that `EmbeddedRedis` starts; Redis would then shut down at
    once, under services that are still draining. With SIGINT blocked it only
    stops when `idt` stops it (SIGTERM), after the services. A SIGINT that arrives
    meanwhile stays pending for `idt` and is handled when the mask is restored.
    """
    if not hasattr(signal, "pthread_sigmask"):
        server.start()
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        server.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def service_env(redis_url: str, var_dir: Path, database_url: str | None) -> dict[str, str]:
    """The environment of every service process."""
    env = dict(os.environ)
    # The settings prefer IDT_REDIS_URL / IDT_DATABASE_URL over the plain names:
    # drop them so the values chosen here are the ones the services use.
    for name in ("IDT_REDIS_URL", "REDIS_URL", "IDT_DATABASE_URL", "DATABASE_URL"):
        env.pop(name, None)
    env.update(
        REDIS_URL=redis_url,
        IDT_VAR_DIR=str(var_dir),
        IDT_ENVIRONMENT="development",
        IDT_CONSUMER_SLOT="0",
        PYTHONUNBUFFERED="1",
    )
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def pinned_service_env(
    redis_url: str,
    var_dir: Path,
    database_url: str | None,
    *,
    slot: int,
    settings: dict[str, object] | None = None,
) -> dict[str, str]:
    """The environment of a service process that inherits no `IDT_*` setting (and
    no Redis or database URL) from the caller's: every setting is the one given
    here (`settings`: name -> value, as `IDT_<NAME>`). For benchmarks and tests."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IDT_") and k not in ("REDIS_URL", "DATABASE_URL")
    }
    env.update(
        REDIS_URL=redis_url,
        IDT_VAR_DIR=str(var_dir),
        IDT_ENVIRONMENT="development",
        IDT_CONSUMER_SLOT=str(slot),
        PYTHONUNBUFFERED="1",
    )
    env.update({f"IDT_{k.upper()}": str(v) for k, v in (settings or {}).items()})
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def _start_service(
    svc: Service, port: int, host: str, env: dict[str, str], logs: Path
) -> RunningService:
    log_path = logs / f"{svc.name}.log"
    cmd = [
        sys.executable, "-m", "uvicorn", svc.factory, "--factory",
        "--host", host, "--port", str(port),
        "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        start = log.tell()
        stamp = wall_clock_now().isoformat(timespec="seconds")
        log.write(f"=== idt up {stamp}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            # A pre-exec hook is safe here: `idt up` runs no other threads.
            preexec_fn=_die_with_parent(),
        )
    url = f"http://{_client_host(host)}:{port}"
    return RunningService(svc, port, url, log_path, start, proc)


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a pre-exec hook asking the kernel to SIGTERM the child when `idt` dies
    (even by SIGKILL), so no service outlives it holding its port."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # `idt` died before the hook ran
            os._exit(1)

    return hook


def _wait_healthy(
    services: list[RunningService], stop: StopRequest, timeout: float, out: Console
) -> None:
    pending = list(services)
    last: dict[str, str] = {s.service.name: "no answer yet" for s in services}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while pending:
            if stop.requested:
                raise Interrupted
            for s in list(pending):
                code = s.proc.poll()
                if code is not None:
                    raise Failure(
                        f"service {s.service.name} {describe_exit(code)} while starting; "
                        "stopping everything",
                        details=[(f"last lines of {_show(s.log_path)}:", s.log_tail())],
                    )
                try:
                    resp = http.get(s.health_url)
                except httpx.HTTPError as exc:
                    last[s.service.name] = f"{type(exc).__name__}: {exc}"
                    continue
                if resp.status_code == 200:
                    pending.remove(s)
                    out.print(f"  {s.service.name} is healthy ({s.health_url})")
                else:
                    last[s.service.name] = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.service.name for s in pending)
                details: list[tuple[str, str]] = []
                for s in pending:
                    details.append((f"{s.service.name}: last answer", last[s.service.name]))
                    details.append((f"last lines of {_show(s.log_path)}:", s.log_tail()))
                raise Failure(
                    f"{names} did not answer GET /health with 200 within {timeout:g} s; "
                    "stopping everything",
                    details=details,
                )
            if pending:
                stop.wait(0.2)


# ---------------------------------------------------------------- helpers


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's process group (it leads its own session); only while the
    child has not been reaped, so the group id cannot have been reused."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _tail(path: Path, start: int, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _show(path: Path) -> str:
    """`path` relative to the current directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _where_table(
    cfg: UpConfig, stack: Stack, redis_url: str, var_dir: Path, registry_note: str
) -> Table:
    table = Table(title="IDT is running", title_justify="left", header_style="bold")
    table.add_column("What", style="cyan", no_wrap=True)
    table.add_column("Where", overflow="fold")
    month = wall_clock_now().strftime("%Y-%m")
    for s in stack.services:
        table.add_row(s.service.name, s.url)
        table.add_row("  API docs", s.url + "/docs")
        table.add_row("  health", s.health_url)
        table.add_row("  metrics", s.url + "/metrics")
        for path in s.service.examples:
            table.add_row("  example", s.url + path.format(month=month))
        table.add_row("  log", _show(s.log_path))
        table.add_section()
    shown_url = redact_url(redis_url)
    if cfg.redis_url is None:
        redis_dir = _show(var_dir / "redis")
        table.add_row("Redis", f"{shown_url} (embedded; AOF and redis.log in {redis_dir})")
    else:
        table.add_row("Redis", shown_url)
    if cfg.database_url is None:
        table.add_row("Databases", f"SQLite, {_show(var_dir)}/<service>.db")
    else:
        table.add_row("Database", redact_url(cfg.database_url))
    table.add_row("Var dir", _show(var_dir))
    table.add_row("Office registry", registry_note)
    if cfg.clock == "live":
        table.add_row("Business time", f"live: a clock-tick every {cfg.clock_interval:g} s")
    else:
        source = "the demo's" if cfg.demo else "the"
        table.add_row("Business time", f"{source} clock-ticks on the bus (--clock events)")
    if stack.clock_log is not None:
        table.add_row("  clock log", _show(stack.clock_log))
    registry_file = _show(cfg.offices) if cfg.offices is not None else "FILE.csv"
    table.add_row("Load offices", f"idt offices load {registry_file} --redis-url {shown_url}")
    table.add_row("Replay a log", f"idt replay FILE.jsonl --redis-url {shown_url}")
    scoring = next((s for s in stack.services if s.service.name == "scoring"), None)
    if scoring is not None:
        table.add_row("Scores", f"idt scores --period {month} --level region --url {scoring.url}")
    table.add_row("Stop", "Ctrl-C: stops the services, then Redis")
    return table
