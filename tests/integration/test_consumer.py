"""The consuming guarantees of issue 2, on a real Redis, through a real service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from idt_contract import Envelope, entry_fields
from idt_contract.events import (
    Benefit,
    ClaimRegistered,
    ClaimRegisteredData,
    MarkerName,
    MarkerSet,
    MarkerSetData,
    make_event,
)
from idt_runtime.clock import FixedClock
from idt_runtime.consumer import EventConsumer
from idt_runtime.db import RuntimeTables, make_engine, runtime_tables
from idt_runtime.embedded_redis import redis_server_binary
from idt_runtime.metrics import RuntimeMetrics
from services.contact_centre.app import ContactCentreSettings, create_app
from services.contact_centre.models import CcClaim, CcMarker
from tests.conftest import t, wait_for
from tests.helpers import TEST_KEY, xadd
from tests.samples import sample


def claim_registered(claim_id: str, *, event_id: str | None = None) -> Envelope:
    return make_event(
        ClaimRegistered,
        source="/offices/CC01",
        time=t("2007-06-01"),
        data=ClaimRegisteredData(
            claim_id=claim_id,
            customer_ref="cr_" + "0" * 20,
            benefit=Benefit.IB,
            claim_start_date=t("2007-06-01").date(),
            contact_centre_id="CC01",
        ),
        id=event_id,
    )


def marker(claim_id: str, value: str, *, day: str = "2007-06-01", event_id: str | None = None):
    return make_event(
        MarkerSet,
        source="/offices/CC01",
        time=t(day),
        data=MarkerSetData(claim_id=claim_id, marker=MarkerName.JOBCENTRE, value=value),
        id=event_id,
    )


@pytest.fixture
def cc(redis_url, var_dir, database_url):
    settings = ContactCentreSettings(
        database_url=database_url,
        redis_url=redis_url,
        var_dir=var_dir,
        environment="test",
        customer_ref_key=TEST_KEY,
        reclaim_idle_ms=300,
        reclaim_interval_s=0.2,
        max_deliveries=3,
        block_ms=50,
    )
    app = create_app(settings, FixedClock(datetime(2007, 6, 10, 9, tzinfo=UTC)))
    with TestClient(app) as client:
        yield client


def engine_of(client: TestClient):
    return client.app.state.runtime.engine


def count(client: TestClient, model) -> int:
    with Session(engine_of(client)) as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def jobcentre_marker(client: TestClient, claim_id: str) -> str | None:
    with Session(engine_of(client)) as s:
        row = s.get(CcMarker, (claim_id, MarkerName.JOBCENTRE.value))
        return row.value if row else None


def duplicates(client: TestClient, stream: str) -> float:
    labels = f'result="duplicate",service="contact_centre",stream="{stream}"'
    prefix = f"idt_events_consumed_total{{{labels}}} "
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_events_published_before_the_service_first_starts_are_consumed(redis_url, var_dir, r):
    # The group is created at 0, not `$`: a replay that starts first keeps its head.
    xadd(r, claim_registered("EARLY-1"))
    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY
    )
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: count(client, CcClaim) == 1)


def test_a_running_service_leaves_its_startup_heap_out_of_garbage_collection(redis_url, var_dir):
    """While the app runs, what it held once started is frozen and collections
    wait for GC_THRESHOLDS; stopped, the process gets both back (a test process
    runs many apps)."""
    import gc

    from idt_runtime.service import GC_THRESHOLDS

    outside = gc.get_threshold()
    gc.set_threshold(1_234, 5, 6)  # whatever the process had
    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY
    )
    try:
        with TestClient(create_app(settings)):
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 10_000  # modules, classes, the app
        assert gc.get_threshold() == (1_234, 5, 6)
        assert gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*outside)


def test_raw_redis_cli_xadd_is_consumed(cc, redis_url):
    doc = sample("claim-registered", id="raw-1")
    doc["data"]["claim_id"] = doc["subject"] = "RAW-1"
    cli = str(Path(redis_server_binary()).with_name("redis-cli"))
    out = subprocess.run(
        [cli, "-u", redis_url, "XADD", "idt:claim-registered", "*", "__data__", json.dumps(doc)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip()
    wait_for(lambda: count(cc, CcClaim) == 1)
    with Session(engine_of(cc)) as s:
        assert s.get(CcClaim, "RAW-1").benefit == "IB"


def test_garbage_goes_to_dead_letters_and_the_next_event_is_processed(cc, r):
    bad_id = r.xadd("idt:claim-registered", {"__data__": b"{not json\xff"}).decode()
    wrong_type = sample("marker-set", id="wrong-stream")
    wrong_id = r.xadd("idt:claim-registered", {"__data__": json.dumps(wrong_type)}).decode()
    no_data_id = r.xadd("idt:claim-registered", {"payload": b"hello"}).decode()
    xadd(r, claim_registered("GOOD-1"))

    wait_for(lambda: count(cc, CcClaim) == 1)
    letters = wait_for(
        lambda: r.xrange("idt:dead-letters") if r.xlen("idt:dead-letters") == 3 else None
    )
    by_entry = {f[b"entry_id"].decode(): f for _, f in letters}
    assert set(by_entry) == {bad_id, wrong_id, no_data_id}

    garbage = by_entry[bad_id]
    assert garbage[b"original:__data__"] == b"{not json\xff"  # byte for byte
    assert garbage[b"source_stream"] == b"idt:claim-registered"
    assert garbage[b"group"] == b"contact_centre"
    assert b"not UTF-8" in garbage[b"reason"]
    assert b"on the stream for 'claim-registered'" in by_entry[wrong_id][b"reason"]
    assert by_entry[no_data_id][b"original:payload"] == b"hello"
    assert b"no __data__ field" in by_entry[no_data_id][b"reason"]

    # Everything was acked: nothing left pending for the group.
    wait_for(lambda: r.xpending("idt:claim-registered", "contact_centre")["pending"] == 0)


def test_the_same_event_delivered_twice_changes_nothing(cc, r):
    xadd(r, claim_registered("DUP-1"))
    first = marker("DUP-1", "JC0101", event_id="marker-evt-1")
    xadd(r, first)
    wait_for(lambda: jobcentre_marker(cc, "DUP-1") == "JC0101")
    # Redelivered (same CloudEvent id), even with a later time and other content:
    replay = marker("DUP-1", "JC0102", day="2007-06-05", event_id="marker-evt-1")
    xadd(r, replay)
    xadd(r, first)
    # Both redeliveries were seen as duplicates (a slow batch reclaimed and seen
    # again would only add to the count).
    wait_for(lambda: duplicates(cc, "idt:marker-set") >= 2)
    assert jobcentre_marker(cc, "DUP-1") == "JC0101"


def test_an_entry_read_by_a_consumer_that_died_before_acking_is_reclaimed(cc, r):
    # A consumer of the same group reads an entry and dies without acking it.
    xadd(r, claim_registered("ORPHAN-1"))
    wait_for(lambda: count(cc, CcClaim) == 1)  # the live consumer is up
    # ... and idle: it acks after its commit, so wait for the ack too (CI once saw
    # ORPHAN-1 still pending to the live consumer when the ghost read).
    wait_for(lambda: r.xpending("idt:claim-registered", "contact_centre")["pending"] == 0)
    xadd_id = None

    # Pause the live consumer's view by reading as a ghost first: XREADGROUP ">"
    # hands the next entry to whoever asks first, so publish and read atomically.
    pipe = r.pipeline(transaction=True)
    pipe.xadd("idt:claim-registered", entry_fields(claim_registered("ORPHAN-2")))
    pipe.xreadgroup("contact_centre", "ghost-consumer", {"idt:claim-registered": ">"}, count=10)
    xadd_id, read = pipe.execute()
    assert read and read[0][1][0][0] == xadd_id, "the ghost consumer got the entry"
    pending = r.xpending_range("idt:claim-registered", "contact_centre", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"ghost-consumer"]

    # The ghost never acks; the live service claims it once idle and applies it.
    wait_for(lambda: count(cc, CcClaim) == 2, timeout=15)
    wait_for(lambda: r.xpending("idt:claim-registered", "contact_centre")["pending"] == 0)
    assert 'idt_entries_reclaimed_total{service="contact_centre"' in cc.get("/metrics").text


def test_redis_emptied_under_a_running_service_recovers(cc, r):
    xadd(r, claim_registered("BEFORE-1"))
    wait_for(lambda: count(cc, CcClaim) == 1)
    r.flushdb()  # streams and groups gone (a Redis restarted without persistence)
    xadd(r, claim_registered("AFTER-1"))
    wait_for(lambda: count(cc, CcClaim) == 2, timeout=20)
    wait_for(lambda: cc.get("/health").status_code == 200)


def test_a_stream_redis_refuses_degrades_health_and_the_others_are_read(cc, r, monkeypatch):
    import idt_runtime.consumer as consumer_module

    monkeypatch.setattr(consumer_module, "UNREADABLE_RETRY_S", 0.2)
    bad = next(s for s in cc.app.state.runtime.consumer.streams if s != "idt:claim-registered")
    r.delete(bad)
    r.set(bad, "not a stream")  # an operator's mistake, say
    time.sleep(0.3)  # the reader meets it
    xadd(r, claim_registered("REFUSED-1"))
    wait_for(lambda: count(cc, CcClaim) == 1)
    health = cc.get("/health")
    assert health.status_code != 200 and health.json()["status"] == "degraded"
    assert bad in health.json()["checks"]["subscribers"]
    assert "WRONGTYPE" in health.json()["checks"]["subscribers"]
    gauge = f'idt_stream_unreadable{{service="contact_centre",stream="{bad}"}} 1.0'
    assert gauge in cc.get("/metrics").text
    r.delete(bad)
    wait_for(lambda: cc.get("/health").status_code == 200, timeout=15)
    assert gauge.replace(" 1.0", " 0.0") in cc.get("/metrics").text


# ---------------------------------------------------------------- poison entries


class FailOn:
    """A fake applier: fails on one claim id, records the others."""

    def __init__(self, claim_id: str, exc: Exception) -> None:
        self.claim_id = claim_id
        self.exc = exc
        self.applied: list[str] = []
        self.calls = 0

    def __call__(self, session: Session, events: Sequence[Envelope]) -> None:
        self.calls += 1
        for ev in events:
            if ev.data.claim_id == self.claim_id:  # type: ignore[union-attr]
                raise self.exc
        self.applied += [ev.data.claim_id for ev in events]  # type: ignore[union-attr]


async def _consumer(redis_url: str, tmp: Path, applier, **kw) -> tuple[EventConsumer, object]:
    import redis.asyncio as aredis

    tables, engine = runtime_store("tst", tmp / "tst.db")
    client = aredis.from_url(redis_url)
    consumer = EventConsumer(
        service="tst",
        group="tst",
        consumer="tst-1",
        redis=client,
        engine=engine,
        tables=tables,
        appliers={"idt:claim-registered": applier},
        metrics=RuntimeMetrics("tst"),
        **kw,
    )
    await consumer.ensure_groups()
    return consumer, client


def runtime_store(prefix: str, path: Path) -> tuple[RuntimeTables, Engine]:
    """A SQLite file with only the runtime's own tables (processed events, outbox)
    under `prefix`: a throwaway schema for consumer tests."""
    metadata = MetaData()
    tables = runtime_tables(prefix, metadata)
    engine = make_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    return tables, engine


async def _read(consumer: EventConsumer, client) -> None:
    resp = await client.xreadgroup(
        consumer.group, consumer.consumer, {"idt:claim-registered": ">"}, count=100
    )
    for stream, entries in resp:
        await consumer.handle(stream.decode(), [e[0] for e in entries], [e[1] for e in entries])


@pytest.mark.asyncio
async def test_a_poison_entry_is_dead_lettered_after_max_deliveries_and_the_rest_flows(
    redis_url, tmp_path
):
    import asyncio

    r = redis.Redis.from_url(redis_url)
    applier = FailOn("POISON", ValueError("cannot apply this claim"))
    consumer, client = await _consumer(
        redis_url, tmp_path, applier, reclaim_idle_ms=10, max_deliveries=3
    )
    for cid in ("OK-1", "POISON", "OK-2"):
        xadd(r, claim_registered(cid))
    await _read(consumer, client)
    # The batch failed as a whole, then each entry was retried alone: the good
    # ones are applied and acked, the poison stays pending.
    assert sorted(applier.applied) == ["OK-1", "OK-2"]
    assert r.xpending("idt:claim-registered", "tst")["pending"] == 1
    assert r.xlen("idt:dead-letters") == 0

    for _ in range(5):
        await asyncio.sleep(0.02)
        await consumer.reclaim_once()
    letters = r.xrange("idt:dead-letters")
    assert len(letters) == 1
    fields = letters[0][1]
    assert (
        b"handler failed on 4 deliveries (max 3): ValueError: cannot apply this claim"
        in (fields[b"reason"])
    )
    assert r.xpending("idt:claim-registered", "tst")["pending"] == 0

    xadd(r, claim_registered("OK-3"))
    await _read(consumer, client)
    assert sorted(applier.applied) == ["OK-1", "OK-2", "OK-3"]
    await client.aclose()


@pytest.mark.asyncio
async def test_a_database_outage_never_dead_letters(redis_url, tmp_path):
    import asyncio

    from sqlalchemy.exc import OperationalError

    r = redis.Redis.from_url(redis_url)
    applier = FailOn("C-1", OperationalError("SELECT 1", {}, Exception("database is down")))
    consumer, client = await _consumer(
        redis_url, tmp_path, applier, reclaim_idle_ms=10, max_deliveries=2
    )
    xadd(r, claim_registered("C-1"))
    await _read(consumer, client)
    for _ in range(6):
        await asyncio.sleep(0.02)
        await consumer.reclaim_once()
    assert r.xlen("idt:dead-letters") == 0
    assert r.xpending("idt:claim-registered", "tst")["pending"] == 1
    # The database comes back: the next reclaim applies and acks it.
    applier.claim_id = "nothing-fails-now"
    await asyncio.sleep(0.02)
    await consumer.reclaim_once()
    assert applier.applied == ["C-1"]
    assert r.xpending("idt:claim-registered", "tst")["pending"] == 0
    await client.aclose()


def test_a_dead_letter_never_keeps_an_ni_number(cc, r):
    doc = sample("claim-registered", id="pii-1")
    doc["data"]["customer_ref"] = "JT123456C"  # a legacy system leaking the raw number
    r.xadd("idt:claim-registered", {"__data__": json.dumps(doc)})
    (letter,) = wait_for(lambda: r.xrange("idt:dead-letters"))
    fields = letter[1]
    assert b"raw National Insurance" in fields[b"reason"]
    assert b"JT123456C" not in b"".join(fields.values())
    assert b"[NI-NUMBER-REDACTED]" in fields[b"original:__data__"]
    assert fields[b"original_redacted"] == b"1"


@pytest.mark.asyncio
async def test_batches_of_several_streams_share_a_transaction_and_a_failure_stays_alone(
    redis_url, tmp_path
):
    """Batches that arrive while a commit runs are committed together (one applier
    call for streams sharing an applier); when that shared transaction fails, each
    batch is committed on its own, so only the failing entry is held back."""
    calls: list[list[str]] = []
    started, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    def applier(session, events):
        ids = [e.id for e in events]
        calls.append(ids)
        if ids[0].startswith("first"):
            loop.call_soon_threadsafe(started.set)
            release.wait(10)  # hold the first commit until the others are waiting
        if "bad" in ids:
            raise ValueError("cannot apply 'bad'")

    tables, engine = runtime_store("grp", tmp_path / "grp.db")
    client = redis.asyncio.from_url(redis_url)
    # Two batches of one stream and one of another, all with the same applier.
    streams = ["idt:claim-registered", "idt:marker-set", "idt:claim-registered"]
    consumer = EventConsumer(
        service="grp", group="grp", consumer="grp-1", redis=client, engine=engine,
        tables=tables, appliers=dict.fromkeys(streams, applier), metrics=RuntimeMetrics("grp"),
    )  # fmt: skip
    await consumer.ensure_groups()

    def entry(event_id: str, stream: str) -> tuple[bytes, dict[bytes, bytes]]:
        fields = entry_fields(claim_registered(f"C-{event_id}", event_id=event_id))
        if stream == "idt:marker-set":
            fields = entry_fields(marker(f"C-{event_id}", "JC0101", event_id=event_id))
        entry_id = client_sync.xadd(stream, fields)
        return entry_id, {(k.encode() if isinstance(k, str) else k): v for k, v in fields.items()}

    client_sync = redis.Redis.from_url(redis_url)

    async def handle(stream: str, *event_ids: str):
        got = [entry(e, stream) for e in event_ids]
        return await consumer.handle(stream, [g[0] for g in got], [g[1] for g in got])

    first = asyncio.create_task(handle(streams[0], "first"))
    await asyncio.wait_for(started.wait(), 10)
    second = asyncio.create_task(handle(streams[1], "m1", "m2"))
    third = asyncio.create_task(handle(streams[2], "c1"))
    await asyncio.sleep(0.2)  # both are waiting for the next shared transaction
    release.set()
    results = await asyncio.gather(first, second, third)
    assert calls == [["first"], ["m1", "m2", "c1"]]  # one call for the two waiting
    assert [len(r.applied) for r in results] == [1, 2, 1]

    calls.clear()
    started.clear()
    release.clear()
    first = asyncio.create_task(handle(streams[0], "first2"))
    await asyncio.wait_for(started.wait(), 10)
    second = asyncio.create_task(handle(streams[1], "m3", "bad"))
    third = asyncio.create_task(handle(streams[2], "c2"))
    await asyncio.sleep(0.2)
    release.set()
    first_r, second_r, third_r = await asyncio.gather(first, second, third)
    assert len(first_r.applied) == 1
    assert calls[1] == ["m3", "bad", "c2"]  # shared, failed: then each batch alone
    assert len(third_r.applied) == 1 and not third_r.failed
    assert len(second_r.applied) == 1 and len(second_r.failed) == 1  # only "bad" held back
    with Session(engine) as s:
        done = set(s.execute(select(tables.processed.c.event_id)).scalars())
    assert done == {"first", "m1", "m2", "c1", "first2", "m3", "c2"}
    await client.aclose()
    client_sync.close()
    engine.dispose()


async def _claims_then_markers(redis_url: str, tmp_path: Path) -> list[tuple[str, list[str]]]:
    """A consumer listing a markers applier before a claims one; a claims batch
    holds the first commit while a claims batch, then a markers batch, arrive.
    Returns the applier calls, in order."""
    calls: list[tuple[str, list[str]]] = []
    started, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    def claims_applier(session, events):
        ids = [e.id for e in events]
        calls.append(("claims", ids))
        if ids == ["first"]:
            loop.call_soon_threadsafe(started.set)
            release.wait(10)

    def markers_applier(session, events):
        calls.append(("markers", [e.id for e in events]))

    tables, engine = runtime_store("ord", tmp_path / "ord.db")
    client = redis.asyncio.from_url(redis_url)
    client_sync = redis.Redis.from_url(redis_url)
    consumer = EventConsumer(
        service="ord", group="ord", consumer="ord-1", redis=client, engine=engine,
        tables=tables, metrics=RuntimeMetrics("ord"),
        appliers={"idt:marker-set": markers_applier, "idt:claim-registered": claims_applier},
    )  # fmt: skip
    await consumer.ensure_groups()

    async def handle(stream: str, event_id: str):
        if stream == "idt:marker-set":
            fields = entry_fields(marker(f"C-{event_id}", "JC0101", event_id=event_id))
        else:
            fields = entry_fields(claim_registered(f"C-{event_id}", event_id=event_id))
        entry_id = client_sync.xadd(stream, fields)
        data = {(k.encode() if isinstance(k, str) else k): v for k, v in fields.items()}
        return await consumer.handle(stream, [entry_id], [data])

    first = asyncio.create_task(handle("idt:claim-registered", "first"))
    await asyncio.wait_for(started.wait(), 10)
    claims = asyncio.create_task(handle("idt:claim-registered", "c1"))
    await asyncio.sleep(0.1)
    markers = asyncio.create_task(handle("idt:marker-set", "m1"))
    await asyncio.sleep(0.2)  # both wait for the next shared transaction, c1 first
    release.set()
    results = await asyncio.gather(first, claims, markers)
    assert [len(r.applied) for r in results] == [1, 1, 1]
    await client.aclose()
    client_sync.close()
    engine.dispose()
    return calls


@pytest.mark.asyncio
async def test_in_a_shared_transaction_appliers_run_in_the_order_the_service_lists_them(
    redis_url, tmp_path
):
    """Whichever batch arrived first, the applier listed first runs first (the
    scheduler lists first the appliers taking its state lock exclusively)."""
    calls = await _claims_then_markers(redis_url, tmp_path)
    assert calls == [("claims", ["first"]), ("markers", ["m1"]), ("claims", ["c1"])]


@pytest.mark.asyncio
async def test_a_shared_transaction_takes_at_most_group_max_entries(
    redis_url, tmp_path, monkeypatch
):
    """Past the cap, waiting batches wait for the next transaction, in arrival order."""
    import idt_runtime.consumer

    monkeypatch.setattr(idt_runtime.consumer, "GROUP_MAX_ENTRIES", 1)
    calls = await _claims_then_markers(redis_url, tmp_path)
    assert calls == [("claims", ["first"]), ("claims", ["c1"]), ("markers", ["m1"])]


# ---------------------------------------------------------------- reading


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", [2, 3])
async def test_one_read_takes_every_stream_into_one_transaction(redis_url, tmp_path, protocol):
    """The reader asks for all of the service's streams in one XREADGROUP: what
    waits on several streams is applied in one transaction (one applier call
    here, the streams sharing it), and acked. RESP3 (`?protocol=3` in the URL)
    shapes the reply differently; it reads the same."""
    calls: list[list[str]] = []

    def applier(session, events):
        calls.append(sorted(e.id for e in events))

    tables, engine = runtime_store("one", tmp_path / "one.db")
    client = redis.asyncio.from_url(redis_url, protocol=protocol)
    streams = ["idt:claim-registered", "idt:marker-set"]
    consumer = EventConsumer(
        service="one", group="one", consumer="one-1", redis=client, engine=engine,
        tables=tables, appliers=dict.fromkeys(streams, applier), metrics=RuntimeMetrics("one"),
    )  # fmt: skip
    await consumer.ensure_groups()
    r = redis.Redis.from_url(redis_url)
    xadd(r, claim_registered("ONE-1", event_id="c1"))
    xadd(r, claim_registered("ONE-2", event_id="c2"))
    xadd(r, marker("ONE-1", "JC0101", event_id="m1"))
    async with _running(
        consumer, consumer.read_forever(block_ms=50, linger_ms=5), client, r, engine
    ):
        await _until(lambda: calls)
        assert calls == [["c1", "c2", "m1"]]
        await _until(lambda: all(r.xpending(s, "one")["pending"] == 0 for s in streams))
        assert consumer.read_error is None


@pytest.mark.asyncio
async def test_after_a_read_that_was_not_full_the_reader_lets_entries_gather(redis_url, tmp_path):
    """With a linger of 200 ms, entries arriving every 10 ms for 0.8 s are taken in
    a few reads, each bringing what came meanwhile (a read, a transaction and an
    ack round for many events), not one read per entry; every entry is applied."""
    batches: list[list[str]] = []

    def applier(session, events):
        batches.append([e.id for e in events])

    tables, engine = runtime_store("ling", tmp_path / "ling.db")
    client = redis.asyncio.from_url(redis_url)
    stream = "idt:claim-registered"
    consumer = EventConsumer(
        service="ling", group="ling", consumer="ling-1", redis=client, engine=engine,
        tables=tables, appliers={stream: applier}, metrics=RuntimeMetrics("ling"),
    )  # fmt: skip
    await consumer.ensure_groups()
    r = redis.Redis.from_url(redis_url)
    async with _running(
        consumer, consumer.read_forever(block_ms=50, linger_ms=200), client, r, engine
    ):
        began = time.monotonic()
        for i in range(80):
            xadd(r, claim_registered(f"LING-{i}", event_id=f"l{i}"))
            await asyncio.sleep(0.01)
        spread = time.monotonic() - began
        await _until(lambda: sum(map(len, batches)) == 80)
        # One read at most every 200 ms while they arrive, one for the rest.
        assert len(batches) <= spread / 0.2 + 2, (len(batches), spread)
        assert sorted(e for b in batches for e in b) == sorted(f"l{i}" for i in range(80))


@pytest.mark.asyncio
@pytest.mark.parametrize("from_the_start", [False, True])
async def test_a_stream_redis_refuses_is_set_aside_and_the_others_are_still_read(
    redis_url, tmp_path, monkeypatch, from_the_start
):
    """A key of another type at one stream's name (WRONGTYPE) fails a read of all
    the streams: that stream is set aside, with Redis's reason in /health's words
    and `idt_stream_unreadable`, the others are read and reclaimed, their pending
    entries counted; once the key is gone, the stream is read again. The same when
    the key is there before the service starts."""
    import idt_runtime.consumer as consumer_module
    from idt_runtime.metrics import StreamCollector

    monkeypatch.setattr(consumer_module, "UNREADABLE_RETRY_S", 0.2)
    applied: list[str] = []

    def applier(session, events):
        applied.extend(e.id for e in events)

    tables, engine = runtime_store("bad", tmp_path / "bad.db")
    client = redis.asyncio.from_url(redis_url)
    good, bad = "idt:claim-registered", "idt:marker-set"
    metrics = RuntimeMetrics("bad")
    consumer = EventConsumer(
        service="bad", group="bad", consumer="bad-1", redis=client, engine=engine,
        tables=tables, appliers=dict.fromkeys([good, bad], applier), metrics=metrics,
    )  # fmt: skip
    r = redis.Redis.from_url(redis_url)

    def unreadable_gauge() -> float | None:
        labels = {"service": "bad", "stream": bad}
        return metrics.registry.get_sample_value("idt_stream_unreadable", labels)

    if from_the_start:
        r.set(bad, "not a stream")
    await consumer.ensure_groups()
    async with _running(
        consumer, consumer.read_forever(block_ms=50, linger_ms=5), client, r, engine
    ):
        if not from_the_start:
            xadd(r, claim_registered("BAD-1", event_id="c1"))
            await _until(lambda: applied == ["c1"])
            r.delete(bad)
            r.set(bad, "not a stream")
            await asyncio.sleep(0.3)  # reads (blocking 50 ms each) meet the key first
        xadd(r, claim_registered("BAD-2", event_id="c2"))
        await _until(lambda: "c2" in applied)
        assert "WRONGTYPE" in consumer.unreadable[bad]
        assert list(consumer.unreadable) == [bad]
        problem = consumer.reading_problem()
        assert problem is not None and bad in problem and "WRONGTYPE" in problem
        assert unreadable_gauge() == 1
        assert await consumer.reclaim_once() == 0  # the good stream's round is not stopped
        collector = StreamCollector("bad", redis_url, "bad", [bad, good])
        try:
            pending = next(m for m in collector.collect() if m.name == "idt_consumer_pending")
            assert [s.labels["stream"] for s in pending.samples] == [good]
        finally:
            collector.close()

        r.delete(bad)
        xadd(r, marker("BAD-2", "JC0101", event_id="m1"))  # a new stream, no group yet
        await _until(lambda: "m1" in applied)
        assert consumer.unreadable == {}
        assert consumer.reading_problem() is None
        assert unreadable_gauge() == 0
        await _until(lambda: all(r.xpending(s, "bad")["pending"] == 0 for s in (good, bad)))


@pytest.mark.asyncio
async def test_the_relay_is_woken_only_by_transactions_that_queued_events(redis_url, tmp_path):
    from idt_runtime.outbox import add_to_outbox

    tables, engine = runtime_store("wak", tmp_path / "wake.db")
    woken: list[int] = []

    def applier(session, events):
        # Publishes a copy of the events of claims named PUB-*, nothing for others.
        add_to_outbox(session, tables, [e for e in events if e.data.claim_id.startswith("PUB")])

    client = redis.asyncio.from_url(redis_url)
    consumer = EventConsumer(
        service="wak", group="wak", consumer="wak-1", redis=client, engine=engine,
        tables=tables, appliers={"idt:claim-registered": applier}, metrics=RuntimeMetrics("wak"),
        after_commit=lambda: woken.append(1),
    )  # fmt: skip
    await consumer.ensure_groups()
    r = redis.Redis.from_url(redis_url)
    try:
        xadd(r, claim_registered("QUIET-1"))
        await _read(consumer, client)
        assert woken == []  # applied, nothing queued: the relay is left asleep
        xadd(r, claim_registered("PUB-1"))
        xadd(r, claim_registered("QUIET-2"))
        await _read(consumer, client)
        assert woken == [1]
        xadd(r, claim_registered("QUIET-3"))
        await _read(consumer, client)
        assert woken == [1]
        with Session(engine) as s:
            assert s.execute(select(func.count()).select_from(tables.outbox)).scalar_one() == 1
    finally:
        await client.aclose()
        r.close()
        engine.dispose()


@pytest.mark.asyncio
async def test_a_commit_that_queued_events_publishes_them_before_the_next_commit(
    redis_url, tmp_path
):
    """What a batch queued in the outbox is on its stream before the batch is
    acked, published by the committing thread (the relay's task, asleep here, is
    not woken); when Redis refuses, the batch is still acked and the relay is woken
    to publish later."""
    from idt_runtime.embedded_redis import free_port
    from idt_runtime.outbox import OutboxRelay, add_to_outbox

    tables, engine = runtime_store("inl", tmp_path / "inline.db")
    woken: list[int] = []
    copies = "idt:test-inline-copies"

    def applier(session, events):
        add_to_outbox(session, tables, events, stream=copies)

    def consumer_for(relay_url: str) -> tuple[EventConsumer, OutboxRelay]:
        relay = OutboxRelay(service="inl", engine=engine, tables=tables, redis_url=relay_url,
                            metrics=RuntimeMetrics("inl"))  # fmt: skip
        consumer = EventConsumer(
            service="inl", group="inl", consumer="inl-1", redis=client, engine=engine,
            tables=tables, appliers={"idt:claim-registered": applier},
            metrics=RuntimeMetrics("inl"), after_commit=lambda: woken.append(1),
            publish_now=relay.publish_once,
        )  # fmt: skip
        return consumer, relay

    client = redis.asyncio.from_url(redis_url)
    r = redis.Redis.from_url(redis_url)
    consumer, relay = consumer_for(redis_url)
    down, down_relay = consumer_for(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    await consumer.ensure_groups()
    try:
        xadd(r, claim_registered("INL-1", event_id="inl-1"))
        xadd(r, claim_registered("INL-2", event_id="inl-2"))
        await _read(consumer, client)
        published = [json.loads(f[b"__data__"])["id"] for _, f in r.xrange(copies)]
        assert published == ["inl-1", "inl-2"]
        assert woken == []
        assert r.xpending("idt:claim-registered", "inl")["pending"] == 0

        xadd(r, claim_registered("INL-3", event_id="inl-3"))
        await _read(down, client)
        assert woken == [1]  # Redis refused the relay: left to the relay's task
        assert r.xpending("idt:claim-registered", "inl")["pending"] == 0
        assert len(r.xrange(copies)) == 2
        await relay.flush()  # the relay's task, Redis answering again
        published = [json.loads(f[b"__data__"])["id"] for _, f in r.xrange(copies)]
        assert published == ["inl-1", "inl-2", "inl-3"]
    finally:
        relay.close()
        down_relay.close()
        await client.aclose()
        r.close()
        engine.dispose()


@pytest.mark.asyncio
async def test_the_reclaimer_survives_failing_to_recreate_a_missing_group(redis_url, tmp_path):
    """The group gone (Redis emptied) and Redis failing again while the reclaimer
    recreates it: the reclaimer logs, keeps running and recreates it next round
    (it used to end there, and nothing was reclaimed again until a restart)."""
    tables, engine = runtime_store("rcl", tmp_path / "reclaim.db")
    client = redis.asyncio.from_url(redis_url)
    consumer = EventConsumer(
        service="rcl", group="rcl", consumer="rcl-1", redis=client, engine=engine,
        tables=tables, appliers={"idt:claim-registered": lambda s, e: None},
        metrics=RuntimeMetrics("rcl"),
    )  # fmt: skip
    await consumer.ensure_groups()
    r = redis.Redis.from_url(redis_url)
    real = consumer.ensure_groups
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("Redis went away again")
        await real()

    consumer.ensure_groups = flaky  # type: ignore[method-assign]
    r.xgroup_destroy("idt:claim-registered", "rcl")
    async with _running(consumer, consumer.reclaim_forever(0.05), client, r, engine) as task:
        await _until(lambda: len(calls) >= 2)
        await _until(
            lambda: any(g["name"] == b"rcl" for g in r.xinfo_groups("idt:claim-registered"))
        )
        assert not task.done()


@contextlib.asynccontextmanager
async def _running(
    consumer: EventConsumer,
    loop: Coroutine[Any, Any, Any],
    client: Any,
    r: redis.Redis,
    engine: Engine,
) -> AsyncIterator[asyncio.Task[Any]]:
    """One of the consumer's loops (its reader, its reclaimer) running as a task
    while the block runs; then the consumer stopped, the task awaited, and the
    clients and engine closed."""
    task = asyncio.create_task(loop)
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        r.close()
        engine.dispose()


async def _until(check, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not so after {timeout_s} s")


@pytest.mark.asyncio
async def test_quiet_waits_while_a_batch_is_in_hand_and_gives_up_after_its_limit(
    redis_url, tmp_path
):
    """`quiet` (when the scheduler's sweeper takes its turn) answers at once with no
    batch in hand; with one being applied, it gives up (False) after the time it
    was given, and a caller waiting longer is let through (True) once the batch
    is committed and acked."""
    tables, engine = runtime_store("qui", tmp_path / "quiet.db")
    client = redis.asyncio.from_url(redis_url)
    r = redis.Redis.from_url(redis_url)
    entered, release = threading.Event(), threading.Event()

    def applier(session, events):
        entered.set()
        assert release.wait(10), "the test never released the batch"

    consumer = EventConsumer(
        service="qui", group="qui", consumer="qui-1", redis=client, engine=engine,
        tables=tables, appliers={"idt:claim-registered": applier},
        metrics=RuntimeMetrics("qui"),
    )  # fmt: skip
    await consumer.ensure_groups()
    try:
        assert await asyncio.wait_for(consumer.quiet(5.0), 1.0)
        xadd(r, claim_registered("QUI-1", event_id="qui-1"))
        reading = asyncio.create_task(_read(consumer, client))
        await _until(entered.is_set)
        assert await consumer.quiet(0.05) is False
        waiting = asyncio.create_task(consumer.quiet(10.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        release.set()
        assert await asyncio.wait_for(waiting, 5.0) is True
        assert reading.done()  # quiet only once the batch was committed and acked
        assert r.xpending("idt:claim-registered", "qui")["pending"] == 0
    finally:
        release.set()
        await client.aclose()
        r.close()
        engine.dispose()


@pytest.mark.asyncio
async def test_a_cancelled_reader_ends_at_once_and_leaves_its_batch_pending(redis_url, tmp_path):
    """Cancelled (a shutdown past its limit), the reader cancels the batch it is
    handling instead of waiting for a commit that may never end; the entry is
    not acked, so the reclaimer gets it."""
    entered, release = threading.Event(), threading.Event()

    def stuck(session, events):
        entered.set()
        release.wait(20)

    tables, engine = runtime_store("cnc", tmp_path / "cancel.db")
    client = redis.asyncio.from_url(redis_url)
    consumer = EventConsumer(
        service="cnc", group="cnc", consumer="cnc-1", redis=client, engine=engine,
        tables=tables, appliers={"idt:claim-registered": stuck}, metrics=RuntimeMetrics("cnc"),
    )  # fmt: skip
    await consumer.ensure_groups()
    r = redis.Redis.from_url(redis_url)
    xadd(r, claim_registered("STUCK-1"))
    reader = asyncio.create_task(consumer.read_forever(block_ms=50))
    try:
        await _until(entered.is_set)
        reader.cancel()
        done, _ = await asyncio.wait({reader}, timeout=3)
        assert reader in done and reader.cancelled()
        assert r.xpending("idt:claim-registered", "cnc")["pending"] == 1
    finally:
        release.set()
        consumer.stop()
        await asyncio.wait({reader}, timeout=10)
        await asyncio.sleep(0.2)  # the worker thread's transaction ends
        await client.aclose()
        r.close()
        engine.dispose()


def test_a_half_open_redis_connection_does_not_hang_the_reader(redis_url, var_dir, r):
    """A network fault can leave the reader's connection open with nobody at the
    other end (no FIN, nothing more): its blocked read must give up after
    IDT_REDIS_TIMEOUT_S and take a new connection, not wait for ever. (Redis may
    have delivered the next entry into the silence: the reclaimer gets it.)"""
    from urllib.parse import urlparse

    from tests.chaos.proxy import TcpProxy

    u = urlparse(redis_url)
    with TcpProxy((u.hostname or "127.0.0.1", u.port or 6379)) as proxy:
        url = redis_url.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.port}", 1)
        settings = ContactCentreSettings(
            redis_url=url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY,
            block_ms=50, redis_timeout_s=1, reclaim_idle_ms=500, reclaim_interval_s=0.2,
        )  # fmt: skip
        with TestClient(create_app(settings)) as client:
            xadd(r, claim_registered("OPEN-1"))
            wait_for(lambda: count(client, CcClaim) == 1)
            proxy.silence()  # every connection open now goes quiet
            xadd(r, claim_registered("LATER-1"))
            wait_for(lambda: count(client, CcClaim) == 2, timeout=20)


@pytest.mark.asyncio
async def test_a_commit_needs_no_thread_of_the_loop_s_default_executor(redis_url, tmp_path):
    """HTTP requests waiting for the write turn, checkpoints and trims run in the
    loop's default executor; with every one of its threads busy, the consumer
    still commits (in a thread of its own)."""
    import asyncio
    import threading

    r = redis.Redis.from_url(redis_url)
    applier = FailOn("NONE", ValueError("unused"))
    consumer, client = await _consumer(redis_url, tmp_path, applier)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    busy = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # more than it has
    try:
        xadd(r, claim_registered("WHILE-BUSY"))
        await asyncio.wait_for(_read(consumer, client), 10)
        assert applier.applied == ["WHILE-BUSY"]
        assert r.xpending("idt:claim-registered", "tst")["pending"] == 0
    finally:
        release.set()
        await asyncio.gather(*busy)
        consumer.close()
        await client.aclose()
