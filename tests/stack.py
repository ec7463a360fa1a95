"""The services as real processes (uvicorn, as `idt up` and a deployment run
them), any number of replicas each, for tests that kill, restart and scale them.

    with Stack(tmp_path, redis_url, database_url) as stack:
        stack.start("scheduler", replicas=2)
        stack.kill("scheduler", 0)          # SIGKILL
        stack.start_replica("scheduler", 0) # the same consumer name again
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis

from idt_cli.replay import parse_id
from idt_cli.services import BY_NAME
from idt_cli.up import pinned_service_env
from idt_contract import decode_entry
from idt_runtime.embedded_redis import free_port
from tests.conftest import wait_for

SERVICES = ("contact_centre", "bdc", "scheduler", "scoring")


@dataclass
class Replica:
    service: str
    slot: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Stack:
    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        database_url: str | None = None,
        **settings: Any,
    ) -> None:
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.database_url = database_url
        self.var = tmp_path / "var"
        self.logs = tmp_path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        #: IDT_* settings for every replica (e.g. reclaim_idle_ms=1500).
        self.settings = {
            "block_ms": 50,
            "reclaim_idle_ms": 1500,
            "reclaim_interval_s": 0.5,
            **settings,
        }
        self.replicas: dict[tuple[str, int], Replica] = {}

    # ------------------------------------------------------------ processes

    def env(self, slot: int) -> dict[str, str]:
        return pinned_service_env(
            self.redis_url, self.var, self.database_url, slot=slot, settings=self.settings
        )

    def start(self, *services: str, replicas: int = 1) -> None:
        """Start `replicas` of each service (slots 0..n-1) and wait until healthy."""
        for service in services or SERVICES:
            for slot in range(replicas):
                self.start_replica(service, slot, wait=False)
        for replica in self.replicas.values():
            self.wait_healthy(replica)

    def start_replica(self, service: str, slot: int, *, wait: bool = True) -> Replica:
        old = self.replicas.get((service, slot))
        assert old is None or old.proc.poll() is not None, f"{service}/{slot} is running"
        port = old.port if old is not None else free_port()
        log = self.logs / f"{service}-{slot}.log"
        cmd = [
            sys.executable, "-m", "uvicorn", BY_NAME[service].factory, "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(slot),
                cwd=self.tmp,
                start_new_session=True,
            )
        replica = Replica(service, slot, port, proc, log)
        self.replicas[(service, slot)] = replica
        if wait:
            self.wait_healthy(replica)
        return replica

    def wait_healthy(self, replica: Replica, timeout: float = 90) -> None:
        def healthy() -> bool:
            if replica.proc.poll() is not None:
                raise AssertionError(
                    f"{replica.service}/{replica.slot} exited:\n{replica.log.read_text()[-3000:]}"
                )
            try:
                return httpx.get(replica.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=timeout, interval=0.2)

    def kill(self, service: str, slot: int = 0, sig: int = signal.SIGKILL) -> None:
        replica = self.replicas[(service, slot)]
        replica.proc.send_signal(sig)
        replica.proc.wait(30)

    def url(self, service: str, slot: int = 0) -> str:
        return self.replicas[(service, slot)].url

    def close(self) -> None:
        for replica in self.replicas.values():
            if replica.proc.poll() is None:
                replica.proc.terminate()
        for replica in self.replicas.values():
            try:
                replica.proc.wait(15)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(5)

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ observations

    def consumed(self, service: str, slot: int) -> float:
        """Entries this replica applied (its `idt_events_consumed_total`)."""
        text = httpx.get(self.url(service, slot) + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("idt_events_consumed_total{") and 'result="applied"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


# ---------------------------------------------------------------- what the bus holds


def drained(r: redis.Redis) -> bool:
    """Every group on every idt: stream has read everything and acked it."""
    for key in r.scan_iter("idt:*", _type="stream"):
        last = r.xinfo_stream(key)["last-generated-id"]
        for g in r.xinfo_groups(key):
            if g["pending"] or parse_id(g["last-delivered-id"]) < parse_id(last):
                return False
    return True


class Quiet:
    """True once `drained` has held and no stream grew for `quiet` seconds."""

    def __init__(self, r: redis.Redis, quiet: float = 3.0) -> None:
        self.r, self.quiet = r, quiet
        self.lengths: dict[bytes, int] = {}
        self.since = time.monotonic()

    def __call__(self) -> bool:
        lengths = {k: self.r.xlen(k) for k in self.r.scan_iter("idt:*", _type="stream")}
        if lengths != self.lengths or not drained(self.r):
            self.lengths, self.since = lengths, time.monotonic()
            return False
        return time.monotonic() - self.since >= self.quiet


def alert_ids(r: redis.Redis) -> list[str]:
    """The CloudEvent id of every entry in every office's alert stream."""
    out = []
    for key in r.scan_iter("idt:window-alerts:*", _type="stream"):
        stream = key.decode()
        out += [decode_entry(stream, f).id for _, f in r.xrange(stream)]
    return out


def outcome_ids(r: redis.Redis) -> list[str]:
    return [decode_entry("idt:window-outcome", f).id for _, f in r.xrange("idt:window-outcome")]


def dead_letters(r: redis.Redis) -> list[str]:
    return [
        json.dumps({k.decode(): v.decode(errors="replace") for k, v in f.items()})[:500]
        for _, f in r.xrange("idt:dead-letters")
    ]


def publish_lines(r: redis.Redis, lines: Iterator[bytes] | list[bytes]) -> int:
    """XADD each CloudEvent line to its type's stream, pipelined, in the given order."""
    from idt_contract import stream_for

    n = 0
    with r.pipeline(transaction=False) as pipe:
        for line in lines:
            pipe.xadd(stream_for(json.loads(line)["type"]), {"__data__": line})
            n += 1
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()
    return n
