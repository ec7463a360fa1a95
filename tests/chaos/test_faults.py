"""Faults on real servers: services killed with SIGKILL mid-replay, Redis crashed
and restarted from its AOF, the log delivered twice in shuffled order, the
database cut off for a while. After each, the scores are the ones an independent
oracle computes from the log (what a clean run gives: tests/integration/
test_replay.py), nothing is dead-lettered and nothing is left pending.

The services run as uvicorn processes (tests/stack.py), exactly as deployed.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy

from idt_contract import decode_entry, stream_for
from idt_runtime.embedded_redis import EmbeddedRedis
from tests.chaos.proxy import TcpProxy
from tests.conftest import wait_for
from tests.helpers import register_offices, xadd
from tests.integration.test_consumer import claim_registered
from tests.integration.test_contact_centre import claim_body
from tests.integration.test_replay import (
    START,
    differences,
    expected_counts,
    invoke,
    months_of_span,
    simulate,
)
from tests.stack import SERVICES, Quiet, Stack, alert_ids, dead_letters, outcome_ids, publish_lines

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

CLAIMS = 100


def _log(tmp_path: Path, seed: int) -> tuple[Path, dict, list[str]]:
    log = simulate(tmp_path / "year.jsonl", claims=CLAIMS, seed=seed)
    expected, as_of = expected_counts(log)
    return log, expected, [*months_of_span(START, as_of), "FY2007-08"]


def _no_differences(scoring: str, expected: dict, periods: list[str]) -> None:
    diffs = differences(scoring, expected, periods)
    assert diffs == [], f"{len(diffs)} differences, e.g.:\n" + "\n".join(diffs[:20])


@pytest.mark.timeout(400)
def test_each_service_killed_mid_replay_and_restarted_changes_no_score(tmp_path, redis_url, r):
    log, expected, periods = _log(tmp_path, seed=11)
    first_stream = {
        "contact_centre": stream_for("claim-registered"),
        "bdc": stream_for("claim-registered"),
        "scheduler": stream_for("claim-registered"),
        "scoring": stream_for("window-outcome"),
    }
    with Stack(tmp_path, redis_url, batch_size=50) as stack:
        stack.start()
        result: dict[str, object] = {}

        def replay() -> None:
            result["r"] = invoke("replay", str(log), "--redis-url", redis_url, "--timeout", "300")

        publisher = threading.Thread(target=replay)
        publisher.start()
        killed = []
        for service in SERVICES:
            stream = first_stream[service]
            # Mid-work: it has read part of its input, and not all of it.
            wait_for(lambda s=service, st=stream: r.exists(st) and _started(r, s, st), 60, 0.02)
            stack.kill(service)  # SIGKILL: no shutdown, no flush
            killed.append((service, _unfinished(r, service, stream)))
            time.sleep(0.3)
            stack.start_replica(service, 0)
        publisher.join(360)
        assert not publisher.is_alive()
        replayed = result["r"]
        assert replayed.exit_code == 0, replayed.output  # type: ignore[attr-defined]
        # At least one service really died with work in flight (usually all).
        assert any(unfinished for _, unfinished in killed), killed
        wait_for(Quiet(r), timeout=120, interval=0.5)
        assert dead_letters(r) == []
        _no_differences(stack.url("scoring"), expected, periods)


def _started(r: redis.Redis, group: str, stream: str) -> bool:
    for g in r.xinfo_groups(stream):
        if g["name"].decode() == group:
            return g["last-delivered-id"] != b"0-0"
    return False


def _unfinished(r: redis.Redis, group: str, stream: str) -> bool:
    """The group had pending entries or unread ones when its consumer died."""
    last = r.xinfo_stream(stream)["last-generated-id"]
    for g in r.xinfo_groups(stream):
        if g["name"].decode() == group:
            return bool(g["pending"]) or g["last-delivered-id"] != last
    return False


@pytest.mark.timeout(400)
def test_redis_crashed_and_restarted_from_its_aof_loses_nothing_acked(tmp_path):
    """`appendfsync always`: every write Redis acknowledged is on disk before the
    reply, so a SIGKILLed Redis brings back every entry and every ack (with
    `everysec` up to a second of writes can go: docs/guarantees.md)."""
    log, expected, periods = _log(tmp_path, seed=12)
    lines = log.read_bytes().splitlines()
    server = EmbeddedRedis(tmp_path / "redis", aof=True, appendfsync="always").start()
    try:
        r = redis.Redis.from_url(server.url)
        with Stack(tmp_path, server.url, batch_size=50) as stack:
            stack.start()
            assert publish_lines(r, lines) == len(lines)
            stream = stream_for("claim-registered")
            wait_for(lambda: _started(r, "scheduler", stream), 60, 0.02)
            outcomes_before = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and outcomes_before == 0:
                outcomes_before = r.xlen("idt:window-outcome")
                time.sleep(0.05)
            server.crash()
            r.close()
            time.sleep(1.0)
            server.start()
            r = redis.Redis.from_url(server.url)
            # Every entry published before the crash is still there.
            counts: dict[str, int] = {}
            for line in lines:
                t = line.split(b'"type":"', 1)[1].split(b'"', 1)[0].decode()
                counts[stream_for(t)] = counts.get(stream_for(t), 0) + 1
            assert {s: r.xlen(s) for s in counts} == counts
            assert r.xlen("idt:window-outcome") >= outcomes_before
            wait_for(Quiet(r, quiet=4.0), timeout=180, interval=0.5)
            assert dead_letters(r) == []
            _no_differences(stack.url("scoring"), expected, periods)
            for service in SERVICES:
                health = httpx.get(stack.url(service) + "/health", timeout=5).json()
                assert health["status"] == "ok", health
        r.close()
    finally:
        server.stop()


@pytest.mark.timeout(200)
def test_events_a_restarted_redis_lost_are_published_again_from_the_outbox(tmp_path):
    """What `appendfsync everysec` can lose, made certain: Redis comes back from
    an AOF copied before the last claims were published (its tail missing, as
    after a crash between fsyncs). The Contact Centre's outbox notices the new
    Redis run and publishes its recent events again: every claim is on the bus."""
    server = EmbeddedRedis(tmp_path / "redis", aof=True, appendfsync="always").start()
    aof = tmp_path / "redis" / "appendonly.aof"
    stream = stream_for("claim-registered")
    try:
        r = redis.Redis.from_url(server.url)
        register_offices(r)
        with Stack(tmp_path, server.url) as stack:
            stack.start("contact_centre")
            base = stack.url("contact_centre")

            def register(n: int) -> None:
                body = claim_body(claim_id=f"TAIL-{n}")
                resp = httpx.post(base + "/v1/claims", json=body, timeout=10)
                assert resp.status_code == 201, resp.text

            def on_bus() -> set[str]:
                return {decode_entry(stream, f).data.claim_id for _, f in r.xrange(stream)}

            wait_for(lambda: _registry_known(base), 30)  # registers WARMUP
            for n in range(5):
                register(n)
            first = {"WARMUP", *(f"TAIL-{n}" for n in range(5))}
            wait_for(lambda: on_bus() == first, 10)
            before = aof.read_bytes()
            for n in range(5, 10):
                register(n)
            everything = {"WARMUP", *(f"TAIL-{n}" for n in range(10))}
            wait_for(lambda: on_bus() == everything, 10)
            server.crash()
            r.close()
            aof.write_bytes(before)  # the last five claims never reached the disk
            server.start()
            r = redis.Redis.from_url(server.url)
            # The restored AOF has none of the last five: without the outbox they are lost.
            assert b"TAIL-4" in before and not any(
                f"TAIL-{n}".encode() in before for n in range(5, 10)
            )
            wait_for(lambda: on_bus() == everything, 30)
            metrics = httpx.get(base + "/metrics", timeout=5).text
            assert 'idt_outbox_republished_total{service="contact_centre"}' in metrics
        r.close()
    finally:
        server.stop()


def _registry_known(base: str) -> bool:
    """The Contact Centre has consumed the registry: a claim for JC0101 is accepted."""
    resp = httpx.post(base + "/v1/claims", json=claim_body(claim_id="WARMUP"), timeout=10)
    assert resp.status_code in (201, 422), resp.text
    return resp.status_code == 201


@pytest.mark.timeout(300)
def test_the_log_delivered_twice_in_shuffled_order_gives_the_same_scores(tmp_path, redis_url, r):
    log, expected, periods = _log(tmp_path, seed=13)
    lines = log.read_bytes().splitlines()
    doubled = lines + lines
    random.Random(13).shuffle(doubled)
    with Stack(tmp_path, redis_url, batch_size=100) as stack:
        stack.start()
        assert publish_lines(r, doubled) == 2 * len(lines)
        wait_for(Quiet(r, quiet=4.0), timeout=240, interval=0.5)
        assert dead_letters(r) == []
        _no_differences(stack.url("scoring"), expected, periods)
        # Each event's effects happened once: no alert and no outcome twice.
        alerts, outcomes = alert_ids(r), outcome_ids(r)
        assert alerts and len(alerts) == len(set(alerts))
        assert len(outcomes) == len(set(outcomes))


def _claim(n: int):  # type: ignore[no-untyped-def]
    return claim_registered(f"OUTAGE-{n}", event_id=f"outage-{n}")


@pytest.mark.timeout(200)
def test_a_database_outage_acks_nothing_loses_nothing_and_heals_without_a_restart(
    tmp_path, redis_url, r, pg_url
):
    """PostgreSQL behind a proxy that the test cuts: every connection dropped,
    new ones refused. The service keeps running; entries stay pending however
    often they are retried (an outage is never a poison entry); when the
    database is back everything is applied once, with the same process."""
    url = sqlalchemy.engine.make_url(pg_url)
    with TcpProxy.to_postgres(url) as proxy:
        register_offices(r)
        via_proxy = url.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(
            hide_password=False
        )
        with Stack(tmp_path, redis_url, via_proxy, max_deliveries=2) as stack:
            stack.start("contact_centre")
            pid = stack.replicas[("contact_centre", 0)].proc.pid
            base = stack.url("contact_centre")
            wait_for(lambda: _processed(pg_url) >= 1, timeout=30)  # the registry

            proxy.cut()
            wait_for(lambda: httpx.get(base + "/health", timeout=10).status_code == 503, 30)
            for n in range(20):
                xadd(r, _claim(n))
            stream = stream_for("claim-registered")
            # Read, failed, retried past max_deliveries by the reclaimer: still pending.
            wait_for(lambda: r.xpending(stream, "contact_centre")["pending"] == 20, 30)
            wait_for(lambda: _max_deliveries(r, stream) > 3, timeout=30)
            assert r.xpending(stream, "contact_centre")["pending"] == 20
            assert dead_letters(r) == []

            proxy.restore()
            wait_for(lambda: r.xpending(stream, "contact_centre")["pending"] == 0, 60)
            assert _claims(pg_url) == 20
            assert dead_letters(r) == []
            wait_for(lambda: httpx.get(base + "/health", timeout=10).status_code == 200, 30)
            assert stack.replicas[("contact_centre", 0)].proc.pid == pid  # no restart
            assert stack.replicas[("contact_centre", 0)].proc.poll() is None


def _max_deliveries(r: redis.Redis, stream: str) -> int:
    rows = r.xpending_range(stream, "contact_centre", "-", "+", 100)
    return max((row["times_delivered"] for row in rows), default=0)


def _processed(pg_url: str) -> int:
    return _count(pg_url, "cc_processed_events")


def _claims(pg_url: str) -> int:
    return _count(pg_url, "cc_claims")


def _count(pg_url: str, table: str) -> int:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as c:
            return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    except sqlalchemy.exc.ProgrammingError:
        return 0  # not migrated yet
    finally:
        engine.dispose()
