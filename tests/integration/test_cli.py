"""The `idt` command against real servers: `idt offices load` through typer's
CliRunner, `idt up` as the real console script in a subprocess, and the clock
publisher it runs. (`idt simulate` and `idt replay`: tests/unit/test_simulate.py
and tests/integration/test_replay.py.)"""

from __future__ import annotations

import csv
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from typer.testing import CliRunner

from idt_cli.clock import tick_event, tick_id, tick_time
from idt_cli.main import app
from idt_cli.offices import DEFAULT_OFFICES
from idt_cli.registry import HEADER, STREAM
from idt_cli.services import SERVICES
from idt_cli.varlock import VarDirLock
from idt_contract import decode_entry
from idt_contract.events import ClockTick, OfficeKind, OfficeRegistered
from idt_runtime.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

IDT = Path(sys.executable).parent / "idt"

ROWS = [
    ("CC01", "CONTACT_CENTRE", "Bolton Contact Centre", "Contact Centre Directorate", "North West"),
    ("BDC01", "BDC", "Wigan Benefit Delivery Centre", "Benefit Delivery Directorate", "North West"),
    ("JC0101", "JOBCENTRE", "Bolton Jobcentre", "Greater Manchester East", "North West"),
    ("JC1301", "JOBCENTRE", "Leith Jobcentre", "Edinburgh, Lothian and Borders", "Scotland"),
]


def write_csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    lines = [HEADER] + [",".join(f'"{c}"' if "," in c else c for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_events(r: redis.Redis) -> list[OfficeRegistered]:
    events = []
    for _entry_id, fields in r.xrange(STREAM):
        event = decode_entry(STREAM, fields)
        assert isinstance(event, OfficeRegistered)
        events.append(event)
    return events


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


# ---------------------------------------------------------------- idt offices load


def test_offices_load_publishes_one_decodable_event_per_row(tmp_path, redis_url, r):
    path = write_csv(tmp_path / "offices.csv", ROWS)
    result = invoke(
        "offices",
        "load",
        str(path),
        "--redis-url",
        redis_url,
        "--as-of",
        "2007-04-01T09:00:00+01:00",
    )
    assert result.exit_code == 0, result.output
    assert "Published 4 office-registered events to idt:office-registered" in result.output
    assert "Jobcentres in 2 districts and 2 regions." in result.output
    for kind, count in (("CONTACT_CENTRE", 1), ("BDC", 1), ("JOBCENTRE", 2)):
        assert re.search(rf"{kind}\s*│\s*{count}\s*│", result.output), result.output

    entries = r.xrange(STREAM)
    assert len(entries) == 4
    assert all(list(fields) == [b"__data__"] for _, fields in entries)
    events = read_events(r)
    assert [
        (e.data.office_id, e.data.kind.value, e.data.name, e.data.district, e.data.region)
        for e in events
    ] == ROWS
    assert all(e.source == "/registry" for e in events)
    assert all(e.time == datetime(2007, 4, 1, 8, 0, tzinfo=UTC) for e in events)
    assert events[2].data.kind is OfficeKind.JOBCENTRE


def test_loading_the_same_file_twice_gives_identical_ids(tmp_path, redis_url, r):
    path = write_csv(tmp_path / "offices.csv", ROWS)
    assert invoke("offices", "load", str(path), "--redis-url", redis_url).exit_code == 0
    assert invoke("offices", "load", str(path), "--redis-url", redis_url).exit_code == 0
    events = read_events(r)
    assert len(events) == 8
    first, second = [e.id for e in events[:4]], [e.id for e in events[4:]]
    assert first == second
    assert len(set(first)) == 4
    assert all(i.startswith("office-") for i in first)

    # A changed row gets a new id; the unchanged ones keep theirs.
    renamed = [*ROWS[:2], (*ROWS[2][:2], "Bolton Jobcentre Plus", *ROWS[2][3:]), ROWS[3]]
    path = write_csv(tmp_path / "offices.csv", renamed)
    assert invoke("offices", "load", str(path), "--redis-url", redis_url).exit_code == 0
    third = [e.id for e in read_events(r)[8:]]
    assert [a == b for a, b in zip(first, third, strict=True)] == [True, True, False, True]


def test_a_bad_file_publishes_nothing_and_exits_2(tmp_path, redis_url, r):
    rows = [
        ROWS[0],
        ("JC 0101", "JOBCENTRE", "Bolton Jobcentre", "Greater Manchester East", "North West"),
        ("JC0102", "JOBCENTER", "Bury Jobcentre", "Greater Manchester East", "North West"),
        ROWS[0],
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    result = invoke("offices", "load", str(path), "--redis-url", redis_url)
    assert result.exit_code == 2
    assert "3 problems; nothing was published" in result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert lines[1:] == [
        "line 3: office_id 'JC 0101' is not a valid office id (1 to 32 letters, digits, "
        "'_' or '-', starting with a letter or digit)",
        "line 4: kind 'JOBCENTER' is not one of CONTACT_CENTRE, BDC, JOBCENTRE",
        "line 5: duplicate office_id 'CC01' (first on line 2)",
    ]
    assert r.exists(STREAM) == 0


def test_a_bad_header_publishes_nothing(tmp_path, redis_url, r):
    path = tmp_path / "bad.csv"
    path.write_text("office_id,kind,name,region\nCC01,CONTACT_CENTRE,Bolton,North West\n")
    result = invoke("offices", "load", str(path), "--redis-url", redis_url)
    assert result.exit_code == 2
    assert "missing column(s) 'district'" in result.output
    assert r.exists(STREAM) == 0


def test_the_redis_url_comes_from_the_environment(tmp_path, redis_url, r):
    path = write_csv(tmp_path / "offices.csv", ROWS)
    result = invoke("offices", "load", str(path), env={"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert r.xlen(STREAM) == 4


def test_bad_options_and_unreachable_redis(tmp_path, redis_url, r):
    path = write_csv(tmp_path / "offices.csv", ROWS)
    naive = invoke(
        "offices", "load", str(path), "--redis-url", redis_url, "--as-of", "2007-04-01T09:00:00"
    )
    assert naive.exit_code == 2
    assert "has no UTC offset" in naive.output
    missing = invoke("offices", "load", str(tmp_path / "nope.csv"), "--redis-url", redis_url)
    assert missing.exit_code == 2
    assert r.exists(STREAM) == 0

    nobody = f"redis://127.0.0.1:{free_port()}/0"
    down = invoke("offices", "load", str(path), "--redis-url", nobody)
    assert down.exit_code == 1
    assert f"cannot reach Redis at {nobody}" in down.output
    assert "nothing was published" in down.output


# ---------------------------------------------------------------- idt up


def read_default_registry() -> list[dict[str, str]]:
    with DEFAULT_OFFICES.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def a_jobcentre_from_the_default_registry() -> str:
    return next(o["office_id"] for o in read_default_registry() if o["kind"] == "JOBCENTRE")


CLAIM = {
    "nino": "JT123456C",
    "benefit": "IB",
    "claim_start_date": "2007-06-01",
    "contact_centre_id": "CC01",
    "jobcentre_id": a_jobcentre_from_the_default_registry(),
}


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ports: dict[str, int]

    @property
    def cc_port(self) -> int:
        return self.ports["contact_centre"]

    @property
    def bdc_port(self) -> int:
        return self.ports["bdc"]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def cc(self) -> str:
        return self.url("contact_centre")

    @property
    def bdc(self) -> str:
        return self.url("bdc")

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"idt up did not stop within {timeout}s:\n{self.output()}"
            ) from None


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would steer `idt up`."""
    steer = ("REDIS_URL", "DATABASE_URL", "IDT_")
    return {k: v for k, v in os.environ.items() if not k.startswith(steer)}


@contextmanager
def idt_up(tmp_path: Path, *args: str) -> Iterator[Up]:
    assert IDT.exists(), f"the console script {IDT} is not installed (pip install -e .)"
    # A free port for every service in the table (the options the brief names are
    # --port-contact-centre and --port-bdc), so a service added later cannot collide.
    ports = {svc.name: free_port() for svc in SERVICES}
    port_args = [a for svc in SERVICES for a in (svc.port_option, str(ports[svc.name]))]
    out, err = tmp_path / "idt.out", tmp_path / "idt.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [str(IDT), "up", *port_args, *args],
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            env=clean_env(),
            cwd=tmp_path,
        )
    up = Up(proc, out, err, ports)
    try:
        yield up
    finally:
        if proc.poll() is None:
            # The test failed with idt still running: do not leave it (or its children) behind.
            for child in up.descendants():
                child.kill()
            proc.kill()
            proc.wait(10)


def healthy(up: Up, base: str) -> bool:
    assert up.proc.poll() is None, f"idt up exited early:\n{up.output()}"
    try:
        return httpx.get(base + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def claim_accepted(up: Up) -> bool:
    """201 once the Contact Centre has consumed the registry (CC01 and the Jobcentre)."""
    resp = httpx.post(up.cc + "/v1/claims", json=CLAIM, timeout=5)
    assert resp.status_code in (201, 422), resp.text
    return resp.status_code == 201


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def our_services(up: Up) -> list[psutil.Process]:
    """Any uvicorn, anywhere, listening on one of this test's ports."""
    found = []
    ports = {str(p) for p in up.ports.values()}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "uvicorn" in cmd and ports & set(cmd) and alive(p):
            found.append(p)
    return found


def is_clock(p: psutil.Process) -> bool:
    return "idt_cli.clock" in " ".join(p.cmdline())


def assert_all_stopped(children: list[psutil.Process], up: Up) -> None:
    left = [c for c in children if alive(c)] + our_services(up)
    assert left == [], f"left running: {[c.cmdline() for c in left]}\n{up.output()}"


def test_up_runs_the_services_loads_the_registry_and_stops_on_sigint(tmp_path, redis_url, r):
    var = tmp_path / "var"
    with idt_up(tmp_path, "--redis-url", redis_url, "--var-dir", str(var)) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        wait_for(lambda: healthy(up, up.bdc), timeout=60, interval=0.2)
        wait_for(lambda: claim_accepted(up), timeout=30, interval=0.2)
        assert r.xlen(STREAM) == len(read_default_registry())
        assert r.xlen("idt:claim-registered") == 1
        for svc in SERVICES:  # every service of the table, scoring included
            wait_for(lambda svc=svc: healthy(up, up.url(svc.name)), timeout=30, interval=0.2)

        # --clock live is the default: a tick with the wall-clock time at once.
        wait_for(lambda: r.xlen("idt:clock-tick") >= 1, timeout=15, interval=0.2)
        _, fields = r.xrange("idt:clock-tick", count=1)[0]
        tick = decode_entry("idt:clock-tick", fields)
        assert isinstance(tick, ClockTick)
        assert tick.id == tick_id(tick.time)
        assert abs(datetime.now(UTC) - tick.time) < timedelta(minutes=2)

        output = up.output()
        for where in (
            up.cc + "/docs",
            up.cc + "/metrics",
            up.bdc + "/health",
            up.cc + "/v1/reports/jp-process",
            up.bdc + "/v1/aact?period=",
            up.url("scoring") + "/v1/scores?level=district",
        ):
            assert where in output, output
        assert "Started the clock publisher" in output
        assert "live: a clock-tick every 60 s" in output
        assert "var/logs/<service>.log" in output
        assert (var / "logs" / "contact_centre.log").stat().st_size > 0
        assert (var / "logs" / "bdc.log").stat().st_size > 0
        # The services' own lines: UTC time, level, service, logger (idt_runtime/logs.py).
        stamped = re.compile(
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO scheduler idt\.service: scheduler: "
            r"consuming \d+ streams in group scheduler as consumer ",
            re.M,
        )
        wait_for(
            lambda: stamped.search((var / "logs" / "scheduler.log").read_text()) is not None,
            timeout=10,
            interval=0.2,
        )
        assert (var / "contact_centre.db").exists()
        assert not (var / "redis").exists()  # Redis was given: none embedded

        children = up.descendants()
        uvicorns = [c for c in children if "uvicorn" in c.cmdline()]
        assert len(uvicorns) == len(SERVICES) == 4, [c.cmdline() for c in children]
        assert len([c for c in children if is_clock(c)]) == 1
        started = time.monotonic()
        assert up.stop() == 0, up.output()
        assert time.monotonic() - started < 20
        assert_all_stopped(children, up)
        assert "SIGINT received: stopping" in up.output()
        assert "Stopping the clock publisher" in up.output()


def test_up_without_a_redis_url_starts_and_stops_the_embedded_redis(tmp_path):
    var = tmp_path / "own-var"
    with idt_up(tmp_path, "--var-dir", str(var)) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        wait_for(lambda: healthy(up, up.bdc), timeout=60, interval=0.2)
        # The registry reached the embedded Redis and the Contact Centre consumed it.
        wait_for(lambda: claim_accepted(up), timeout=30, interval=0.2)
        assert (var / "redis" / "appendonly.aof").exists()

        # The table of where things are comes last, after the clock has started:
        # a claim can be accepted before it is written.
        pattern = re.compile(r"(redis://127\.0\.0\.1:(\d+)/0) \(embedded")
        try:
            match = wait_for(lambda: pattern.search(up.output()), timeout=30, interval=0.2)
        except AssertionError:
            raise AssertionError(up.output()) from None
        embedded = redis.Redis.from_url(match.group(1))
        try:
            assert embedded.xlen(STREAM) == len(read_default_registry())
            assert embedded.xlen("idt:claim-registered") == 1
        finally:
            embedded.close()

        children = up.descendants()
        redis_servers = [c for c in children if c.name().startswith("redis-server")]
        assert len(redis_servers) == 1, [c.cmdline() for c in children]
        assert len([c for c in children if "uvicorn" in c.cmdline()]) == len(SERVICES)
        assert up.stop() == 0, up.output()
        assert_all_stopped(children, up)
        assert "Stopping the embedded Redis" in up.output()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(match[2])), 1):
            pass


def test_up_stops_on_sigterm_too(tmp_path, redis_url):
    with idt_up(
        tmp_path,
        "--redis-url",
        redis_url,
        "--var-dir",
        str(tmp_path / "var"),
        "--services",
        "contact_centre",
        "--no-offices",
    ) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        wait_for(lambda: "IDT is running" in up.output(), timeout=10)
        children = up.descendants()
        assert len(children) == 2  # the service and the clock publisher
        assert len([c for c in children if is_clock(c)]) == 1
        assert up.stop(signal.SIGTERM) == 0, up.output()
        assert_all_stopped(children, up)
        assert "SIGTERM received: stopping" in up.output()
        assert "contact_centre stopped (clean)" in up.output()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_services_do_not_outlive_a_killed_up(tmp_path, redis_url):
    with idt_up(
        tmp_path,
        "--redis-url",
        redis_url,
        "--var-dir",
        str(tmp_path / "var"),
        "--services",
        "contact_centre",
        "--no-offices",
    ) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        wait_for(lambda: len(up.descendants()) == 2, timeout=10)  # and the clock
        children = up.descendants()
        up.proc.kill()  # no chance to clean up
        up.proc.wait(10)
        wait_for(lambda: not any(alive(c) for c in children), timeout=15, interval=0.2)
        assert_all_stopped(children, up)


def test_up_stops_everything_when_a_service_dies(tmp_path, redis_url):
    with idt_up(
        tmp_path, "--redis-url", redis_url, "--var-dir", str(tmp_path / "var"), "--no-offices"
    ) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        wait_for(lambda: healthy(up, up.bdc), timeout=60, interval=0.2)
        wait_for(lambda: "IDT is running" in up.output(), timeout=10)
        children = up.descendants()
        bdc = next(c for c in children if "services.bdc.app:create_app" in c.cmdline())
        bdc.kill()
        assert up.proc.wait(20) == 1
        output = up.output()
        assert "service bdc was killed by SIGKILL; stopping everything" in output
        assert "last lines of var/logs/bdc.log:" in output
        assert_all_stopped(children, up)


def test_up_names_the_service_that_fails_to_start_and_shows_its_log(tmp_path, redis_url):
    unreachable_db = f"postgresql+psycopg://idt@127.0.0.1:{free_port()}/idt"
    with idt_up(
        tmp_path,
        "--redis-url",
        redis_url,
        "--var-dir",
        str(tmp_path / "var"),
        "--services",
        "contact_centre",
        "--database-url",
        unreachable_db,
    ) as up:
        assert up.proc.wait(60) == 1
        output = up.output()
        assert "error: service contact_centre exited with code 3 while starting" in output
        assert "last lines of var/logs/contact_centre.log:" in output
        assert "Connection refused" in output
        assert "Application startup failed" in output
        assert_all_stopped([], up)


def test_up_refuses_bad_input_before_starting_anything(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [("JC 1", "JOBCENTRE", "X", "D", "R")])
    var = tmp_path / "var"
    result = invoke("up", "--var-dir", str(var), "--offices", str(bad))
    assert result.exit_code == 2
    assert "has 1 problem(s); nothing was started" in result.output
    assert "line 2: office_id 'JC 1' is not a valid office id" in result.output
    assert not var.exists()

    unknown = invoke("up", "--var-dir", str(var), "--services", "contact_centre,payroll")
    assert unknown.exit_code == 2
    assert "unknown service(s) 'payroll'" in unknown.output

    both = invoke("up", "--var-dir", str(var), "--offices", str(bad), "--no-offices")
    assert both.exit_code == 2
    assert "use either --offices FILE or --no-offices" in both.output

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = invoke(
            "up",
            "--var-dir",
            str(var),
            "--no-offices",
            "--services",
            "contact_centre",
            "--port-contact-centre",
            str(port),
        )
    assert taken.exit_code == 2
    assert f"contact_centre cannot listen on 127.0.0.1:{port}: the port is already in use" in (
        taken.output
    )
    port = free_port()
    same = invoke(
        "up",
        "--var-dir",
        str(var),
        "--no-offices",
        "--port-contact-centre",
        str(port),
        "--port-bdc",
        str(port),
    )
    assert same.exit_code == 2
    assert f"contact_centre and bdc would both listen on port {port}" in same.output
    assert not var.exists()


def test_up_ports_come_from_the_environment(tmp_path, redis_url):
    port = free_port()
    # A wide terminal, so rich does not wrap the env var names in the help table.
    result = invoke("up", "--help", env={"IDT_PORT_CONTACT_CENTRE": str(port), "COLUMNS": "200"})
    assert result.exit_code == 0
    assert "IDT_PORT_CONTACT_CENTRE" in result.output
    assert "IDT_PORT_BDC" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        taken = invoke(
            "up",
            "--var-dir",
            str(tmp_path / "var"),
            "--no-offices",
            "--services",
            "contact_centre",
            env={"IDT_PORT_CONTACT_CENTRE": str(port)},
        )
    assert taken.exit_code == 2
    assert f"127.0.0.1:{port}: the port is already in use" in taken.output


def test_one_up_per_var_dir(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    holder = VarDirLock(var)
    holder.acquire()
    try:
        second = invoke(
            "up",
            "--var-dir",
            str(var),
            "--no-offices",
            "--services",
            "contact_centre",
            "--port-contact-centre",
            str(free_port()),
        )
        assert second.exit_code == 2
        assert f"another `idt up` is running with the var dir {var}" in second.output
    finally:
        holder.release()


def test_a_redis_left_over_by_a_killed_up_is_not_doubled(tmp_path):
    var = tmp_path / "var"
    with EmbeddedRedis(var / "redis") as leftover:
        assert leftover.proc is not None
        (var / "idt-up.lock").write_text(str(leftover.proc.pid))
        result = invoke(
            "up",
            "--var-dir",
            str(var),
            "--no-offices",
            "--services",
            "contact_centre",
            "--port-contact-centre",
            str(free_port()),
        )
        assert result.exit_code == 2
        assert f"redis-server pid {leftover.proc.pid}" in result.output
        assert f"(kill {leftover.proc.pid})" in result.output
    # Once it is gone, the recorded pid no longer blocks a run.
    lock = VarDirLock(var)
    lock.acquire()
    lock.release()
    assert (var / "idt-up.lock").read_text() == ""


def scored(up: Up) -> bool:
    resp = httpx.get(up.url("scoring") + "/v1/scores", params={"level": "national"}, timeout=5)
    if resp.status_code != 200:
        return False  # 422 until the first tick has reached scoring
    rows = resp.json()["rows"]
    return bool(rows) and any(e["due"] > 0 for e in rows[0]["elements"].values())


def test_up_with_the_demo_opens_windows_and_stops_the_simulator_on_sigint(tmp_path, redis_url, r):
    var = tmp_path / "var"
    args = ("--redis-url", redis_url, "--var-dir", str(var), "--demo", "--demo-day-seconds", "0.05")
    with idt_up(tmp_path, *args) as up:
        wait_for(lambda: healthy(up, up.cc), timeout=60, interval=0.2)
        # Claims flow through both intakes and the scheduler decides windows.
        wait_for(lambda: r.xlen("idt:claim-cleared") > 20, timeout=60, interval=0.5)
        wait_for(lambda: r.xlen("idt:window-outcome") > 0, timeout=90, interval=0.5)
        alerts = [k for k in r.scan_iter("idt:window-alerts:*")]
        assert alerts, "no office received an alert"
        # ... and the scores move: the current business month has scored windows.
        wait_for(lambda: scored(up), timeout=90, interval=0.5)
        demo_log = (var / "logs" / "demo.log").read_text()
        assert "business day" in demo_log
        # Every request the simulator made was accepted by the intakes.
        assert not re.search(r": [45]\d\d \{", demo_log), demo_log
        children = up.descendants()
        assert any("idt_cli.demo" in " ".join(c.cmdline()) for c in children)
        # The demo publishes its own ticks: --demo implies --clock events.
        assert not any(is_clock(c) for c in children)
        assert "the demo's clock-ticks on the bus (--clock events)" in up.output()
        assert up.stop() == 0, up.output()
        assert "Stopping the demo simulator" in up.output()
        assert_all_stopped(children, up)


def test_the_demo_refuses_a_live_clock(tmp_path):
    var = tmp_path / "var"
    result = invoke("up", "--var-dir", str(var), "--demo", "--clock", "live")
    assert result.exit_code == 2
    assert "cannot run with --clock live" in result.output
    assert not var.exists()
    bad = invoke("up", "--var-dir", str(var), "--clock", "wall")
    assert bad.exit_code == 2
    assert "--clock" in bad.output
    assert not var.exists()


def test_up_stops_everything_when_the_clock_publisher_dies(tmp_path, redis_url, r):
    args = ("--redis-url", redis_url, "--var-dir", str(tmp_path / "var"), "--no-offices")
    with idt_up(tmp_path, *args, "--services", "contact_centre", "--clock-interval", "0.5") as up:
        wait_for(lambda: "IDT is running" in up.output(), timeout=60, interval=0.2)
        wait_for(lambda: r.xlen("idt:clock-tick") >= 2, timeout=10, interval=0.1)
        children = up.descendants()
        clock = next(c for c in children if is_clock(c))
        clock.kill()
        assert up.proc.wait(20) == 1
        output = up.output()
        assert "the clock publisher was killed by SIGKILL" in output
        assert "last lines of var/logs/clock.log:" in output
        assert "clock: published tick-" in output
        assert_all_stopped(children, up)


# ---------------------------------------------------------------- the clock publisher


def test_tick_times_are_interval_boundaries_with_ids_of_their_time():
    now = datetime(2007, 6, 4, 10, 15, 42, 700_000, tzinfo=UTC)
    assert tick_time(now, 60) == datetime(2007, 6, 4, 10, 15, tzinfo=UTC)
    assert tick_time(now, 0.5) == datetime(2007, 6, 4, 10, 15, 42, 500_000, tzinfo=UTC)
    assert tick_time(now, 3600) == datetime(2007, 6, 4, 10, tzinfo=UTC)
    # Any offset, the same instant, the same tick (and id).
    bst = now.astimezone(datetime.fromisoformat("2007-06-04T11:15:42+01:00").tzinfo)
    assert tick_time(bst, 60) == tick_time(now, 60)
    assert tick_id(tick_time(now, 60)) == "tick-2007-06-04T10:15:00Z"
    event = tick_event(tick_time(now, 60))
    assert (event.id, event.type, event.source) == (
        "tick-2007-06-04T10:15:00Z",
        "clock-tick",
        "/clock",
    )
    with pytest.raises(ValueError, match="aware"):
        tick_time(datetime(2007, 6, 4), 60)
    with pytest.raises(ValueError, match="positive"):
        tick_time(now, 0)


def run_clock(redis_url: str, interval: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "idt_cli.clock",
                "--redis-url",
                redis_url,
                "--interval",
                interval,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )


def ticks(r: redis.Redis) -> list[ClockTick]:
    out = []
    for _, fields in r.xrange("idt:clock-tick"):
        event = decode_entry("idt:clock-tick", fields)
        assert isinstance(event, ClockTick)
        out.append(event)
    return out


def test_the_clock_publishes_at_once_then_every_interval_and_stops_on_sigterm(
    tmp_path, redis_url, r
):
    log = tmp_path / "clock.log"
    started = time.monotonic()
    proc = run_clock(redis_url, "0.5", log)
    try:
        wait_for(lambda: r.xlen("idt:clock-tick") >= 1, timeout=5, interval=0.02)
        first_after = time.monotonic() - started
        wait_for(lambda: r.xlen("idt:clock-tick") >= 4, timeout=10, interval=0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first_after < 3.0  # the interpreter's start-up, then the first tick at once
    published = ticks(r)
    times = [t.time for t in published]
    assert times == sorted(times) and len(set(times)) == len(times)
    for t in published:
        assert t.id == tick_id(t.time)
        assert t.time.tzinfo is not None and t.time.utcoffset() == timedelta(0)
        assert t.time.microsecond in (0, 500_000)
        assert abs(datetime.now(UTC) - t.time) < timedelta(minutes=1)
    # Ticks fall on the boundaries, at most one each (a loaded machine may skip one).
    half = timedelta(seconds=0.5)
    assert all((b - a) % half == timedelta(0) for a, b in itertools.pairwise(times))
    assert "clock: stopped after" in log.read_text()


def test_a_restarted_clock_repeats_no_tick_under_a_new_id(tmp_path, redis_url, r):
    log = tmp_path / "clock.log"
    for _ in range(2):
        proc = run_clock(redis_url, "3600", log)
        try:
            before = r.xlen("idt:clock-tick")
            wait_for(lambda before=before: r.xlen("idt:clock-tick") > before, timeout=5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first, second = ticks(r)
    # Both runs fell in the same hour: the same boundary, the same id, so consumers
    # drop the repeat (unless the hour turned between the runs: then a later tick).
    assert second.id == first.id or second.time > first.time
    assert {t.id for t in (first, second)} <= {tick_id(first.time), tick_id(second.time)}
