"""The Contact Centre over HTTP and over the bus, against a real Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from idt_contract import decode_entry
from idt_contract.events import (
    Benefit,
    ClaimCleared,
    ClaimClearedData,
    ClaimRegistered,
    ClaimRegisteredData,
    ClearanceOutcome,
    MarkerName,
    MarkerSet,
    MarkerSetData,
    make_event,
)
from idt_runtime.clock import FixedClock
from idt_runtime.embedded_redis import EmbeddedRedis
from services.contact_centre.app import ContactCentreSettings, create_app
from tests.conftest import t, wait_for
from tests.helpers import TEST_KEY, register_offices, xadd

NINO = "JT123456C"
CLOCK = datetime(2007, 6, 20, 9, tzinfo=UTC)


def claim_body(**changes):
    body = {
        "claim_id": "C-100",
        "nino": NINO,
        "benefit": "IB",
        "claim_start_date": "2007-06-01",
        "contact_centre_id": "CC01",
        "jobcentre_id": "JC0101",
        "occurred_at": "2007-06-01T10:00:00+01:00",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def settings_for(redis_url: str, var_dir: Path, **kw) -> ContactCentreSettings:
    return ContactCentreSettings(
        redis_url=redis_url,
        var_dir=var_dir,
        environment="test",
        customer_ref_key=TEST_KEY,
        block_ms=50,
        **kw,
    )


@pytest.fixture
def cc(redis_url, var_dir, r, database_url):
    register_offices(r)
    app = create_app(settings_for(redis_url, var_dir, database_url=database_url), FixedClock(CLOCK))
    with TestClient(app) as client:
        # The registry arrives over the bus; intake works once it has.
        wait_for(
            lambda: client.post("/v1/claims", json=claim_body(claim_id="WARMUP")).status_code == 201
        )
        yield client


def report(client: TestClient, **params) -> dict:
    resp = client.get("/v1/reports/jp-process", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def stream_events(r: redis.Redis, stream: str, claim_id: str) -> list:
    out = []
    for _, fields in r.xrange(stream):
        ev = decode_entry(stream, fields)
        if getattr(ev.data, "claim_id", None) == claim_id:
            out.append(ev)
    return out


def test_registering_a_claim_publishes_the_claim_and_both_markers(cc, r):
    resp = cc.post("/v1/claims", json=claim_body())
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["claim_id"] == "C-100"
    assert [e["type"] for e in body["events"]] == ["claim-registered", "marker-set", "marker-set"]

    (reg,) = stream_events(r, "idt:claim-registered", "C-100")
    assert reg.data.customer_ref == body["customer_ref"]
    assert reg.data.benefit is Benefit.IB
    assert reg.source == "/offices/CC01" and reg.subject == "C-100"
    assert reg.time == datetime(2007, 6, 1, 9, tzinfo=UTC)
    markers = {e.data.marker: e.data.value for e in stream_events(r, "idt:marker-set", "C-100")}
    assert markers == {
        MarkerName.PRIMARY_BENEFIT: "INCAPACITATED_DISABLED",
        MarkerName.JOBCENTRE: "JC0101",
    }
    # A correctly registered claim is not in the JP process report (once the
    # service has consumed its own claim and both markers: separate streams).
    wait_for(lambda: _known(cc, "C-100") == (1, 2))
    assert "C-100" not in [row["claim_id"] for row in report(cc)["rows"]]


def _known(client: TestClient, claim_id: str) -> tuple[int, int]:
    """(claims, markers) the service has consumed for `claim_id`."""
    from sqlmodel import Session, select

    from services.contact_centre.models import CcClaim, CcMarker

    with Session(client.app.state.runtime.engine) as s:
        claims = s.exec(select(CcClaim.claim_id).where(CcClaim.claim_id == claim_id)).all()
        markers = s.exec(select(CcMarker.marker).where(CcMarker.claim_id == claim_id)).all()
        return len(claims), len(markers)


def test_the_ni_number_never_reaches_the_bus_or_the_store(cc, r, var_dir):
    assert cc.post("/v1/claims", json=claim_body(nino="jt 12 34 56 c")).status_code == 201
    wait_for(lambda: _known(cc, "C-100")[0] == 1)
    for key in r.scan_iter("*"):
        if r.type(key) == b"stream":
            for _, fields in r.xrange(key):
                blob = b"".join(fields.values()).upper().replace(b" ", b"")
                assert NINO.encode() not in blob
    for db_file in var_dir.glob("*.db*"):
        assert NINO.encode() not in db_file.read_bytes().upper()


def processed(client: TestClient, event_id: str) -> bool:
    from sqlalchemy import select
    from sqlmodel import Session

    from services.contact_centre.models import TABLES

    p = TABLES.processed
    with Session(client.app.state.runtime.engine) as s:
        return s.execute(select(p.c.event_id).where(p.c.event_id == event_id)).first() is not None


def test_a_generated_claim_id_when_none_is_given(cc):
    resp = cc.post("/v1/claims", json=claim_body(claim_id=None))
    assert resp.status_code == 201
    assert resp.json()["claim_id"].startswith("CLM-")


@pytest.mark.parametrize(
    ("changes", "status", "field", "message"),
    [
        ({"nino": "QQ123456C"}, 422, "nino", "never used in a prefix"),
        ({"nino": "GB123456A"}, 422, "nino", "never allocated"),
        ({"nino": "AB12"}, 422, "nino", "9 characters"),
        ({"jobcentre_id": "CC01"}, 422, "jobcentre_id", "is a Contact Centre"),
        ({"jobcentre_id": "BDC01"}, 422, "jobcentre_id", "not a Jobcentre"),
        ({"jobcentre_id": "JC9999"}, 422, "jobcentre_id", "names no registered office"),
        ({"contact_centre_id": "JC0101"}, 422, "contact_centre_id", "not a registered Contact"),
        ({"primary_benefit": "JOBSEEKER"}, 422, "primary_benefit", "disagrees with the IB claim"),
        ({"claim_id": "WARMUP"}, 409, "claim_id", "already registered"),
    ],
)  # fmt: skip
def test_bad_registrations_get_a_clear_error_and_publish_nothing(
    cc, r, changes, status, field, message
):
    before = r.xlen("idt:claim-registered"), r.xlen("idt:marker-set")
    resp = cc.post("/v1/claims", json=claim_body(**changes))
    assert resp.status_code == status, resp.text
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", field]
    assert message in detail["msg"]
    assert NINO not in resp.text and "QQ123456C" not in resp.text
    assert (r.xlen("idt:claim-registered"), r.xlen("idt:marker-set")) == before


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({k: v for k, v in claim_body().items() if k != "jobcentre_id"}, "jobcentre_id"),
        (claim_body(benefit="DLA"), "benefit"),
        (claim_body(claim_start_date="2007-02-30"), "claim_start_date"),
        (claim_body(occurred_at="2007-06-01T10:00:00"), "occurred_at"),
        ({**claim_body(), "ni_number": NINO}, "ni_number"),
        (claim_body(nino=123456789), "nino"),
    ],
)
def test_malformed_requests_are_422_without_echoing_input(cc, body, where):
    resp = cc.post("/v1/claims", json=body)
    assert resp.status_code == 422
    assert where in json.dumps(resp.json()["detail"])
    assert NINO not in resp.text and "123456789" not in resp.text


def test_changing_a_marker(cc, r):
    assert cc.post("/v1/claims", json=claim_body()).status_code == 201
    resp = cc.put(
        "/v1/claims/C-100/markers/JOBCENTRE",
        json={"value": "JC0102", "occurred_at": "2007-06-05T11:00:00+01:00"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["changed"] is True
    last = stream_events(r, "idt:marker-set", "C-100")[-1]
    assert (last.data.value, last.id) == ("JC0102", resp.json()["event_id"])

    # Setting the value already in force (as the bus has it) publishes nothing.
    wait_for(lambda: processed(cc, resp.json()["event_id"]))
    published = r.xlen("idt:marker-set")
    same = cc.put("/v1/claims/C-100/markers/JOBCENTRE", json={"value": "JC0102"})
    assert same.status_code == 200, same.text
    assert (same.json()["changed"], same.json()["event_id"]) == (False, None)
    assert r.xlen("idt:marker-set") == published

    bad = cc.put("/v1/claims/C-100/markers/JOBCENTRE", json={"value": "CC01"})
    assert bad.status_code == 422 and "is a Contact Centre" in bad.text
    bad = cc.put("/v1/claims/C-100/markers/PRIMARY_BENEFIT", json={"value": "LONE_PARENT"})
    assert bad.status_code == 422 and "disagrees" in bad.text
    assert cc.put("/v1/claims/NOPE/markers/JOBCENTRE", json={"value": "JC0101"}).status_code == 404
    assert cc.put("/v1/claims/C-100/markers/COLOUR", json={"value": "JC0101"}).status_code == 422


def _legacy(
    r: redis.Redis, claim_id: str, benefit: Benefit, day: str, markers: dict[str, str]
) -> None:
    xadd(
        r,
        make_event(
            ClaimRegistered,
            source="/legacy/CC01",
            time=t(day),
            data=ClaimRegisteredData(
                claim_id=claim_id,
                customer_ref="cr_legacy0000000000",
                benefit=benefit,
                claim_start_date=t(day).date(),
                contact_centre_id="CC01",
            ),
        ),
    )
    for name, value in markers.items():
        xadd(
            r,
            make_event(
                MarkerSet,
                source="/legacy/CC01",
                time=t(day),
                data=MarkerSetData(claim_id=claim_id, marker=MarkerName(name), value=value),
            ),
        )


def test_wrong_markers_from_legacy_systems_appear_in_the_jp_process_report(cc, r):
    # Registered properly over HTTP, then a legacy system resets the Jobcentre
    # marker to the Contact Centre default (a raw event on the bus).
    assert cc.post("/v1/claims", json=claim_body()).status_code == 201
    xadd(
        r,
        make_event(
            MarkerSet,
            source="/legacy/CC01",
            time=t("2007-06-03"),
            data=MarkerSetData(claim_id="C-100", marker=MarkerName.JOBCENTRE, value="CC01"),
        ),
    )
    _legacy(
        r, "L-1", Benefit.JSA, "2007-06-02", {"PRIMARY_BENEFIT": "OTHER", "JOBCENTRE": "JC0102"}
    )
    _legacy(r, "L-2", Benefit.IS_LP, "2007-06-04", {"PRIMARY_BENEFIT": "LONE_PARENT"})

    expected = {
        "C-100": ["JOBCENTRE_MARKER_IS_CONTACT_CENTRE"],
        "L-1": ["PRIMARY_BENEFIT_MARKER_MISMATCH"],
        "L-2": ["JOBCENTRE_MARKER_UNSET"],
    }
    # Streams are consumed independently; the report settles once all have arrived.
    rows = wait_for(
        lambda: (
            (rows := report(cc)["rows"])
            and {x["claim_id"]: x["problems"] for x in rows} == expected
            and rows
        )
    )
    by_id = {row["claim_id"]: row for row in rows}
    assert by_id["C-100"]["problems"] == ["JOBCENTRE_MARKER_IS_CONTACT_CENTRE"]
    assert by_id["C-100"]["jobcentre_marker"] == "CC01"
    assert by_id["C-100"]["age_days"] == 19  # registered 1 June, as of 20 June
    assert by_id["C-100"]["eligibility_confirmed"] is False
    assert by_id["L-1"]["problems"] == ["PRIMARY_BENEFIT_MARKER_MISMATCH"]
    assert by_id["L-2"]["problems"] == ["JOBCENTRE_MARKER_UNSET"]

    # Eligibility confirmed: the claim moves to the top (its window is running).
    xadd(
        r,
        make_event(
            ClaimCleared,
            source="/offices/BDC01",
            time=t("2007-06-15"),
            data=ClaimClearedData(
                claim_id="L-2",
                bdc_id="BDC01",
                outcome=ClearanceOutcome.ELIGIBLE,
                received_date=t("2007-06-05").date(),
            ),
        ),
    )
    rows = wait_for(lambda: (rep := report(cc))["rows"][0]["claim_id"] == "L-2" and rep["rows"])
    assert rows[0]["eligibility_confirmed"] is True and rows[0]["clearance"] == "ELIGIBLE"
    assert [x["claim_id"] for x in report(cc, eligible_only=True)["rows"]] == ["L-2"]
    assert report(cc, as_of="2007-07-01")["rows"][0]["age_days"] == 27

    # The FCO fixes the marker: the claim leaves the report.
    fix = cc.put(
        "/v1/claims/C-100/markers/JOBCENTRE",
        json={"value": "JC0101", "occurred_at": "2007-06-20T09:00:00+01:00"},
    )
    assert fix.status_code == 200 and fix.json()["changed"] is True
    wait_for(lambda: "C-100" not in [x["claim_id"] for x in report(cc)["rows"]])
    assert report(cc, contact_centre_id="CC02")["count"] == 0
    assert cc.get("/v1/reports/jp-process", params={"as_of": "20070701"}).status_code == 422


def test_markers_arriving_out_of_order_settle_on_the_latest_in_event_time(cc, r):
    _legacy(r, "O-1", Benefit.IB, "2007-06-02", {"PRIMARY_BENEFIT": "INCAPACITATED_DISABLED"})
    late_fix = make_event(
        MarkerSet, source="/legacy", time=t("2007-06-10"),
        data=MarkerSetData(claim_id="O-1", marker=MarkerName.JOBCENTRE, value="JC0101"),
    )  # fmt: skip
    early_default = make_event(
        MarkerSet, source="/legacy", time=t("2007-06-02"),
        data=MarkerSetData(claim_id="O-1", marker=MarkerName.JOBCENTRE, value="CC01"),
    )  # fmt: skip
    xadd(r, late_fix)
    xadd(r, early_default)  # arrives last, happened first
    wait_for(lambda: processed(cc, early_default.id) and processed(cc, late_fix.id))
    assert "O-1" not in [x["claim_id"] for x in report(cc)["rows"]]


def test_service_health_metrics_and_openapi(cc):
    health = cc.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = cc.get("/metrics")
    assert "idt_events_consumed_total" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    paths = cc.get("/openapi.json").json()["paths"]
    assert {
        "/v1/claims",
        "/v1/claims/{claim_id}/markers/{marker}",
        "/v1/reports/jp-process",
    } <= set(paths)


def test_a_placeholder_key_is_refused_in_production():
    with pytest.raises(ValidationError, match="IDT_CUSTOMER_REF_KEY must be set"):
        ContactCentreSettings(environment="production")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        ContactCentreSettings(environment="production", customer_ref_key="short")
    ok = ContactCentreSettings(environment="production", customer_ref_key="k" * 40)
    assert ok.customer_ref_key == "k" * 40


def test_intake_keeps_working_while_redis_is_down_and_publishes_when_it_is_back(tmp_path):
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, aof=True).start()
    port = server.port
    try:
        r = redis.Redis.from_url(server.url)
        register_offices(r)
        app = create_app(
            settings_for(server.url, tmp_path / "var", reclaim_interval_s=0.2), FixedClock(CLOCK)
        )
        with TestClient(app) as client:
            wait_for(
                lambda: (
                    client.post("/v1/claims", json=claim_body(claim_id="UP-1")).status_code == 201
                )
            )
            server.stop()
            resp = client.post("/v1/claims", json=claim_body(claim_id="DOWN-1"))
            assert resp.status_code == 201, resp.text
            server = EmbeddedRedis(data, port=port, aof=True).start()
            r = redis.Redis.from_url(server.url)
            wait_for(lambda: stream_events(r, "idt:claim-registered", "DOWN-1"), timeout=20)
            # Published before the outage, once. (The restart makes the relay publish
            # its last seconds again, under the same event id: docs/guarantees.md.)
            assert len({e.id for e in stream_events(r, "idt:claim-registered", "UP-1")}) == 1
    finally:
        server.stop()


def test_health_is_ok_at_once_when_redis_is_back(tmp_path):
    """A restarted Redis leaves the service's pooled connections broken: /health
    answers from a fresh one, not with the broken one's error."""
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, aof=True).start()
    port = server.port
    try:
        register_offices(redis.Redis.from_url(server.url))
        app = create_app(settings_for(server.url, tmp_path / "var"), FixedClock(CLOCK))
        with TestClient(app) as client:
            wait_for(lambda: client.get("/health").status_code == 200)
            server.crash()
            server = EmbeddedRedis(data, port=port, aof=True).start()
            body = client.get("/health").json()
            assert body["checks"]["redis"] == "ok", body
    finally:
        server.stop()
