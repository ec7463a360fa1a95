"""The BDC service against a real Redis: intake over HTTP, `claim-cleared` on the
bus, claim status, AACT from every clearance on the bus, bad inputs and bad events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from idt_contract import decode, encode, stream_for
from idt_contract.events import (
    Benefit,
    ClaimCleared,
    ClaimClearedData,
    ClaimRegistered,
    ClaimRegisteredData,
    ClearanceOutcome,
    OfficeKind,
    OfficeRegistered,
    OfficeRegisteredData,
    make_event,
)
from idt_runtime.clock import FixedClock
from services.bdc.app import BdcSettings, create_app
from tests.conftest import t, wait_for
from tests.helpers import register_offices, xadd

pytestmark = pytest.mark.integration

CLEARED = stream_for("claim-cleared")
#: Business "now" of every test: Monday 3 September 2007, 10:00 in London.
NOW = datetime(2007, 9, 3, 9, tzinfo=UTC)


# ---------------------------------------------------------------- helpers


def consumed(client: TestClient, stream: str, result: str = "applied") -> float:
    """`idt_events_consumed_total` of this service for a stream and result, from /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if (
                s.name == "idt_events_consumed_total"
                and s.labels["stream"] == stream
                and s.labels["result"] == result
            ):
                return s.value
    return 0.0


def wait_consumed(client: TestClient, stream: str, n: int, result: str = "applied") -> None:
    wait_for(lambda: consumed(client, stream, result) >= n)


@contextmanager
def running_bdc(
    redis_url: str, var_dir: Any, r: redis.Redis, **overrides: Any
) -> Iterator[tuple[TestClient, FixedClock]]:
    register_offices(r)
    settings = BdcSettings(redis_url=redis_url, var_dir=var_dir, environment="test", **overrides)
    clock = FixedClock(NOW)
    with TestClient(create_app(settings, clock)) as client:
        wait_consumed(client, stream_for("office-registered"), 4)
        yield client, clock


@pytest.fixture
def bdc(redis_url, var_dir, r, database_url) -> Iterator[TestClient]:
    with running_bdc(redis_url, var_dir, r, database_url=database_url) as (client, _clock):
        yield client


def register_claim(r: redis.Redis, claim_id: str, day: str) -> None:
    xadd(
        r,
        make_event(
            ClaimRegistered,
            source="/offices/CC01",
            time=t(day),
            data=ClaimRegisteredData(
                claim_id=claim_id,
                customer_ref="cr_" + claim_id.replace("-", "_").lower().ljust(8, "0"),
                benefit=Benefit.IB,
                claim_start_date=date.fromisoformat(day),
                contact_centre_id="CC01",
            ),
            id=f"registered-{claim_id}",
        ),
    )


def cleared_event(
    claim_id: str,
    bdc_id: str,
    received: str,
    when: datetime,
    outcome: ClearanceOutcome = ClearanceOutcome.ELIGIBLE,
    event_id: str | None = None,
) -> Any:
    return make_event(
        ClaimCleared,
        source=f"/offices/{bdc_id}",
        time=when,
        data=ClaimClearedData(
            claim_id=claim_id,
            bdc_id=bdc_id,
            outcome=outcome,
            received_date=date.fromisoformat(received),
        ),
        id=event_id,
    )


def aact(client: TestClient, period: str) -> Any:
    resp = client.get("/v1/aact", params={"period": period})
    assert resp.status_code == 200, resp.text
    return resp.json()


def status(client: TestClient, claim_id: str, **params: str) -> Any:
    resp = client.get(f"/v1/claims/{claim_id}/status", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def problem(resp: Any, code: int, loc: list[Any], *fragments: str) -> str:
    """The response is a `code` whose single detail points at `loc` and says
    something containing every fragment; returns the message."""
    assert resp.status_code == code, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    match = [d for d in detail if d["loc"] == loc]
    assert match, f"no error at {loc}: {detail}"
    assert set(match[0]) == {"loc", "msg", "type"}, match[0]
    for fragment in fragments:
        assert fragment in match[0]["msg"], (fragment, match[0]["msg"])
    return str(match[0]["msg"])


def receive(client: TestClient, claim_id: str, bdc_id: str = "BDC01", day: str = "2007-08-24"):
    return client.post(
        f"/v1/claims/{claim_id}/received", json={"bdc_id": bdc_id, "received_date": day}
    )


# ---------------------------------------------------------------- the happy path


def test_full_flow_status_event_and_aact_across_a_bank_holiday(bdc, r):
    register_claim(r, "CLM-1", "2007-08-20")
    wait_consumed(bdc, stream_for("claim-registered"), 1)
    st = status(bdc, "CLM-1")
    assert st["stage"] == "REGISTERED"
    assert st["registered_date"] == "2007-08-20"
    assert st["bdc_id"] is None and st["received_date"] is None
    assert st["working_days_elapsed"] is None
    assert st["as_of"] == "2007-09-03"

    # Received on Friday 24 August 2007.
    resp = receive(bdc, "CLM-1")
    assert resp.status_code == 201, resp.text
    st = resp.json()
    assert (st["stage"], st["bdc_id"], st["received_date"]) == ("RECEIVED", "BDC01", "2007-08-24")
    # To "today" (Mon 3 Sep): Tue 28 .. Fri 31 Aug and Mon 3 Sep; Mon 27 is a holiday.
    assert st["working_days_elapsed"] == 5
    assert status(bdc, "CLM-1", as_of="2007-08-27")["working_days_elapsed"] == 0
    assert status(bdc, "CLM-1", as_of="2007-08-28")["working_days_elapsed"] == 1
    # The very same receipt again is harmless.
    again = receive(bdc, "CLM-1")
    assert again.status_code == 200 and again.json()["stage"] == "RECEIVED"

    resp = bdc.post(
        "/v1/claims/CLM-1/evidence-requests",
        json={"kind": "MEDICAL_EVIDENCE", "requested_date": "2007-08-24"},
    )
    assert resp.status_code == 201, resp.text
    st = resp.json()
    assert st["stage"] == "AWAITING_EVIDENCE"
    assert st["outstanding_evidence"] == ["MEDICAL_EVIDENCE"]
    assert st["evidence"] == [
        {"kind": "MEDICAL_EVIDENCE", "requested_date": "2007-08-24", "received_date": None}
    ]
    problem(
        bdc.post("/v1/claims/CLM-1/evidence-requests", json={"kind": "MEDICAL_EVIDENCE"}),
        409,
        ["body", "kind"],
        "MEDICAL_EVIDENCE is already outstanding",
    )
    problem(
        bdc.post("/v1/claims/CLM-1/clearance", json={"outcome": "ELIGIBLE"}),
        409,
        ["body", "outcome"],
        "cannot clear as ELIGIBLE while evidence is outstanding: MEDICAL_EVIDENCE",
    )
    assert r.xlen(CLEARED) == 0

    resp = bdc.post(
        "/v1/claims/CLM-1/evidence-requests/MEDICAL_EVIDENCE/received",
        json={"received_date": "2007-08-28"},
    )
    assert resp.status_code == 200, resp.text
    st = resp.json()
    assert st["stage"] == "RECEIVED" and st["outstanding_evidence"] == []
    assert st["evidence"] == [
        {"kind": "MEDICAL_EVIDENCE", "requested_date": "2007-08-24", "received_date": "2007-08-28"}
    ]
    problem(
        bdc.post("/v1/claims/CLM-1/evidence-requests/MEDICAL_EVIDENCE/received", json={}),
        404,
        ["path", "kind"],
        "no MEDICAL_EVIDENCE evidence is outstanding",
    )

    # Cleared on Tuesday 28 August 2007 (15:30 in London).
    resp = bdc.post(
        "/v1/claims/CLM-1/clearance",
        json={"outcome": "ELIGIBLE", "occurred_at": "2007-08-28T15:30:00+01:00"},
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["event"]["type"] == "claim-cleared"
    st = body["status"]
    # The local clearance shows at once, before the event comes back from the bus.
    assert st["stage"] == "CLEARED_ELIGIBLE"
    assert st["cleared_date"] == "2007-08-28"
    assert st["working_days_elapsed"] == 1
    assert st["outstanding_evidence"] == []

    # The event on the bus.
    entries = r.xrange(CLEARED)
    assert len(entries) == 1
    ev = decode(entries[0][1][b"__data__"])
    assert isinstance(ev, ClaimCleared)
    assert ev.id == body["event"]["id"]
    assert ev.source == "/offices/BDC01"
    assert ev.subject == "CLM-1"
    assert ev.time == datetime(2007, 8, 28, 14, 30, tzinfo=UTC)
    assert ev.data == ClaimClearedData(
        claim_id="CLM-1",
        bdc_id="BDC01",
        outcome=ClearanceOutcome.ELIGIBLE,
        received_date=date(2007, 8, 24),
    )

    # AACT counts it once it is back from the bus: 1 working day across the holiday.
    wait_for(
        lambda: (
            aact(bdc, "2007-08")
            == {"period": "2007-08", "rows": [{"bdc_id": "BDC01", "claims": 1, "aact": 1.0}]}
        )
    )
    assert aact(bdc, "2007-09") == {"period": "2007-09", "rows": []}
    # A cleared claim's working days no longer depend on as_of.
    later = status(bdc, "CLM-1", as_of="2007-12-03")
    assert later["working_days_elapsed"] == 1 and later["as_of"] == "2007-12-03"

    # Decided claims take no more commands.
    problem(
        bdc.post("/v1/claims/CLM-1/clearance", json={"outcome": "DISALLOWED"}),
        409,
        ["path", "claim_id"],
        "already cleared (ELIGIBLE on 2007-08-28 by BDC01)",
    )
    problem(
        bdc.post("/v1/claims/CLM-1/evidence-requests", json={"kind": "SSP1"}),
        409,
        ["path", "claim_id"],
        "already cleared",
    )
    assert r.xlen(CLEARED) == 1
    assert r.xlen("idt:dead-letters") == 0


def test_disallowed_with_evidence_outstanding_and_evidence_asked_again(bdc, r):
    assert receive(bdc, "CLM-2", day="2007-08-20").status_code == 201
    for kind, day in [("SSP1", "2007-08-20"), ("EMPLOYMENT_DETAILS", "2007-08-21")]:
        resp = bdc.post(
            "/v1/claims/CLM-2/evidence-requests", json={"kind": kind, "requested_date": day}
        )
        assert resp.status_code == 201, resp.text
    resp = bdc.post(
        "/v1/claims/CLM-2/evidence-requests/SSP1/received",
        json={"occurred_at": "2007-08-22T09:00:00+01:00"},
    )
    assert resp.json()["outstanding_evidence"] == ["EMPLOYMENT_DETAILS"]
    # The same kind may be asked for again once the first request was answered.
    resp = bdc.post(
        "/v1/claims/CLM-2/evidence-requests",
        json={"kind": "SSP1", "occurred_at": "2007-08-23T09:00:00+01:00"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["outstanding_evidence"] == ["EMPLOYMENT_DETAILS", "SSP1"]
    assert len(resp.json()["evidence"]) == 3

    # Evidence that never comes is a reason to disallow.
    resp = bdc.post(
        "/v1/claims/CLM-2/clearance",
        json={"outcome": "DISALLOWED", "occurred_at": "2007-08-31T12:00:00+01:00"},
    )
    assert resp.status_code == 201, resp.text
    st = resp.json()["status"]
    assert st["stage"] == "CLEARED_DISALLOWED"
    assert st["outstanding_evidence"] == []
    assert [(e["kind"], e["received_date"]) for e in st["evidence"]] == [
        ("SSP1", "2007-08-22"),
        ("EMPLOYMENT_DETAILS", None),
        ("SSP1", None),
    ]
    # (Mon 20, Fri 31 Aug]: 21-24 and 28-31 (Mon 27 is the bank holiday) = 8.
    assert st["working_days_elapsed"] == 8
    wait_for(
        lambda: aact(bdc, "2007-08")["rows"] == [{"bdc_id": "BDC01", "claims": 1, "aact": 8.0}]
    )


def test_clearance_date_is_the_london_date_of_the_event_time(bdc, r):
    assert receive(bdc, "CLM-3").status_code == 201
    # 23:30 UTC on the 23rd is 00:30 on the 24th in London (BST): the received day.
    resp = bdc.post(
        "/v1/claims/CLM-3/clearance",
        json={"outcome": "ELIGIBLE", "occurred_at": "2007-08-23T23:30:00+00:00"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"]["cleared_date"] == "2007-08-24"
    assert resp.json()["status"]["working_days_elapsed"] == 0
    wait_for(
        lambda: aact(bdc, "2007-08")["rows"] == [{"bdc_id": "BDC01", "claims": 1, "aact": 0.0}]
    )


# ---------------------------------------------------------------- clearances from elsewhere


def test_foreign_clearances_duplicates_and_reclearance(bdc, r):
    # Another system publishes with any Redis client: one field, the CloudEvent JSON.
    raw = {
        "specversion": "1.0",
        "id": "legacy-1",
        "source": "/offices/BDC02",
        "type": "claim-cleared",
        "time": "2007-08-20T11:00:00+01:00",
        "subject": "LEGACY-1",
        "data": {
            "claim_id": "LEGACY-1",
            "bdc_id": "BDC02",
            "outcome": "ELIGIBLE",
            "received_date": "2007-08-01",
        },
    }
    r.xadd(CLEARED, {"__data__": json.dumps(raw)})
    second = cleared_event("LEGACY-2", "BDC02", "2007-08-24", t("2007-08-28"), event_id="legacy-2")
    xadd(r, second)
    wait_consumed(bdc, CLEARED, 2)
    # (Wed 1, Mon 20 Aug] = 13 and (Fri 24, Tue 28 Aug] = 1: mean 7.
    expected_aug = {"period": "2007-08", "rows": [{"bdc_id": "BDC02", "claims": 2, "aact": 7.0}]}
    assert aact(bdc, "2007-08") == expected_aug

    st = status(bdc, "LEGACY-1")
    assert st["stage"] == "CLEARED_ELIGIBLE"
    assert (st["bdc_id"], st["received_date"], st["cleared_date"]) == (
        "BDC02",
        "2007-08-01",
        "2007-08-20",
    )
    assert st["working_days_elapsed"] == 13
    assert st["registered_date"] is None and st["evidence"] == []
    # Not received here, so this intake cannot add evidence or clear it again.
    problem(
        bdc.post("/v1/claims/LEGACY-1/clearance", json={"outcome": "ELIGIBLE"}),
        404,
        ["path", "claim_id"],
        "has not been received",
    )
    # Nor receive it: it is decided.
    problem(
        receive(bdc, "LEGACY-1"),
        409,
        ["path", "claim_id"],
        "already cleared (ELIGIBLE on 2007-08-20 by BDC02)",
    )

    # The same CloudEvent delivered twice changes nothing.
    xadd(r, second)
    r.xadd(CLEARED, {"__data__": json.dumps(raw)})
    wait_consumed(bdc, CLEARED, 2, result="duplicate")
    assert consumed(bdc, CLEARED) == 2
    assert aact(bdc, "2007-08") == expected_aug

    # Re-cleared later (a new event): counted once, in the month of the latest clearance.
    xadd(
        r,
        cleared_event(
            "LEGACY-2",
            "BDC02",
            "2007-08-24",
            t("2007-09-04"),
            ClearanceOutcome.DISALLOWED,
            event_id="legacy-2-again",
        ),
    )
    wait_consumed(bdc, CLEARED, 3)
    assert aact(bdc, "2007-08")["rows"] == [{"bdc_id": "BDC02", "claims": 1, "aact": 13.0}]
    # (Fri 24 Aug, Tue 4 Sep]: 28-31 Aug, 3-4 Sep = 6.
    assert aact(bdc, "2007-09")["rows"] == [{"bdc_id": "BDC02", "claims": 1, "aact": 6.0}]
    assert status(bdc, "LEGACY-2")["stage"] == "CLEARED_DISALLOWED"

    # An older clearance arriving late does not win: event time decides.
    xadd(r, cleared_event("LEGACY-2", "BDC02", "2007-08-24", t("2007-08-29"), event_id="old"))
    wait_consumed(bdc, CLEARED, 4)
    assert aact(bdc, "2007-08")["rows"] == [{"bdc_id": "BDC02", "claims": 1, "aact": 13.0}]
    assert aact(bdc, "2007-09")["rows"] == [{"bdc_id": "BDC02", "claims": 1, "aact": 6.0}]
    assert status(bdc, "LEGACY-2")["stage"] == "CLEARED_DISALLOWED"
    assert r.xlen("idt:dead-letters") == 0


def test_bad_events_are_dead_lettered_with_a_reason_and_nothing_else_is_lost(redis_url, var_dir, r):
    overrides = {"reclaim_idle_ms": 50, "reclaim_interval_s": 0.1, "max_deliveries": 1}
    with running_bdc(redis_url, var_dir, r, **overrides) as (client, _clock):
        r.xadd(CLEARED, {"__data__": b"not json"})
        missing = {
            "specversion": "1.0",
            "id": "missing-received",
            "source": "/offices/BDC02",
            "type": "claim-cleared",
            "time": "2007-08-20T11:00:00+01:00",
            "data": {"claim_id": "BAD-1", "bdc_id": "BDC02", "outcome": "ELIGIBLE"},
        }
        r.xadd(CLEARED, {"__data__": json.dumps(missing)})
        # Contract-valid, but cleared (20 Aug) before it was received (22 Aug).
        impossible_doc = json.loads(
            encode(cleared_event("BAD-2", "BDC02", "2007-08-22", t("2007-08-22"), event_id="bad-2"))
        )
        impossible_doc["time"] = "2007-08-20T10:00:00+00:00"
        r.xadd(CLEARED, {"__data__": json.dumps(impossible_doc)})
        xadd(r, cleared_event("GOOD-1", "BDC02", "2007-08-24", t("2007-08-28"), event_id="good"))

        wait_for(lambda: r.xlen("idt:dead-letters") == 3, timeout=20)
        letters = {
            fields[b"original:__data__"]: fields[b"reason"].decode()
            for _id, fields in r.xrange("idt:dead-letters")
        }
        assert "not JSON" in letters[b"not json"]
        assert "received_date" in letters[json.dumps(missing).encode()]
        (impossible,) = (v for k, v in letters.items() if b'"bad-2"' in k)
        assert "cleared on 2007-08-20" in impossible
        assert "before its received_date 2007-08-22" in impossible

        assert aact(client, "2007-08")["rows"] == [{"bdc_id": "BDC02", "claims": 1, "aact": 1.0}]
        assert status(client, "GOOD-1")["stage"] == "CLEARED_ELIGIBLE"
        problem(client.get("/v1/claims/BAD-2/status"), 404, ["path", "claim_id"], "not known")
        # Every entry was acked: nothing stays pending.
        assert r.xpending(CLEARED, "bdc")["pending"] == 0


# ---------------------------------------------------------------- bad inputs


def test_every_bad_input_gets_a_clear_4xx(bdc, r):
    xadd(
        r,
        make_event(
            OfficeRegistered,
            source="/registry",
            time=t("2007-01-01"),
            data=OfficeRegisteredData(
                office_id="BDC02",
                kind=OfficeKind.BDC,
                name="Bolton Benefit Delivery Centre",
                district="BDCs",
                region="North West",
            ),
            id="office-BDC02",
        ),
    )
    register_claim(r, "CLM-R", "2007-08-20")
    wait_consumed(bdc, stream_for("office-registered"), 5)
    wait_consumed(bdc, stream_for("claim-registered"), 1)
    body = ["body"]

    # Who received it.
    problem(receive(bdc, "CLM-X", "BDC99"), 422, [*body, "bdc_id"], "'BDC99' names no registered")
    problem(
        receive(bdc, "CLM-X", "JC0101"),
        422,
        [*body, "bdc_id"],
        "'JC0101' is a JOBCENTRE (Bolton Jobcentre), not a Benefit Delivery Centre",
    )
    problem(receive(bdc, "CLM-X", "CC01"), 422, [*body, "bdc_id"], "is a CONTACT_CENTRE")
    problem(receive(bdc, "CLM-X", "BDC 01!"), 422, [*body, "bdc_id"], "pattern")

    # Bad dates.
    problem(receive(bdc, "CLM-X", day="2007-02-30"), 422, [*body, "received_date"], "date")
    problem(
        receive(bdc, "CLM-X", day="2007-09-10"),
        422,
        [*body, "received_date"],
        "2007-09-10 is after the date it is recorded 2007-09-03",
    )
    problem(
        receive(bdc, "CLM-R", day="2007-08-17"),
        422,
        [*body, "received_date"],
        "before the date the claim was registered 2007-08-20",
    )
    problem(
        bdc.get("/v1/claims/CLM-R/status", params={"as_of": "yesterday"}),
        422,
        ["query", "as_of"],
        "date",
    )
    # Extra fields, missing fields, a malformed claim id.
    problem(
        bdc.post(
            "/v1/claims/CLM-X/received",
            json={"bdc_id": "BDC01", "received_date": "2007-08-24", "colour": "red"},
        ),
        422,
        [*body, "colour"],
        "Extra inputs are not permitted",
    )
    problem(
        bdc.post("/v1/claims/CLM-X/received", json={"bdc_id": "BDC01"}),
        422,
        [*body, "received_date"],
        "Field required",
    )
    problem(receive(bdc, "bad*id"), 422, ["path", "claim_id"], "pattern")

    # Nothing was recorded by any of those.
    problem(bdc.get("/v1/claims/CLM-X/status"), 404, ["path", "claim_id"], "not known to the BDC")
    assert status(bdc, "CLM-R")["stage"] == "REGISTERED"

    # A good receipt, then conflicts with it.
    assert receive(bdc, "CLM-R", day="2007-08-21").status_code == 201
    problem(
        receive(bdc, "CLM-R", "BDC02", day="2007-08-21"),
        409,
        ["path", "claim_id"],
        "already received by BDC01",
    )
    problem(
        receive(bdc, "CLM-R", day="2007-08-22"),
        409,
        ["path", "claim_id"],
        "already received on 2007-08-21",
    )

    # Evidence.
    problem(
        bdc.post("/v1/claims/CLM-R/evidence-requests", json={"kind": "P45"}),
        422,
        [*body, "kind"],
        "MEDICAL_EVIDENCE",
    )
    problem(
        bdc.post("/v1/claims/CLM-R/evidence-requests/P45/received", json={}),
        422,
        ["path", "kind"],
        "NI_ACCOUNT_PROBLEM",
    )
    problem(
        bdc.post("/v1/claims/CLM-X/evidence-requests", json={"kind": "SSP1"}),
        404,
        ["path", "claim_id"],
        "'CLM-X' has not been received",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/evidence-requests",
            json={"kind": "SSP1", "requested_date": "2007-08-20"},
        ),
        422,
        [*body, "requested_date"],
        "2007-08-20 is before the claim's received_date 2007-08-21",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/evidence-requests",
            json={"kind": "SSP1", "requested_date": "2007-09-04"},
        ),
        422,
        [*body, "requested_date"],
        "after the date it is recorded 2007-09-03",
    )
    assert (
        bdc.post(
            "/v1/claims/CLM-R/evidence-requests",
            json={"kind": "NI_ACCOUNT_PROBLEM", "requested_date": "2007-08-22"},
        ).status_code
        == 201
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/evidence-requests/NI_ACCOUNT_PROBLEM/received",
            json={"received_date": "2007-08-21"},
        ),
        422,
        [*body, "received_date"],
        "2007-08-21 is before the date it was requested 2007-08-22",
    )
    problem(
        bdc.post("/v1/claims/CLM-R/evidence-requests/SSP1/received", json={}),
        404,
        ["path", "kind"],
        "no SSP1 evidence is outstanding",
    )

    # Clearance.
    problem(
        bdc.post("/v1/claims/CLM-X/clearance", json={"outcome": "ELIGIBLE"}),
        404,
        ["path", "claim_id"],
        "'CLM-X' has not been received",
    )
    problem(
        bdc.post("/v1/claims/CLM-R/clearance", json={"outcome": "ELIGIBLE"}),
        409,
        ["body", "outcome"],
        "while evidence is outstanding: NI_ACCOUNT_PROBLEM",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/clearance",
            json={"outcome": "DISALLOWED", "occurred_at": "2007-08-20T12:00:00+01:00"},
        ),
        422,
        [*body, "occurred_at"],
        "cleared date 2007-08-20 is before the claim's received_date 2007-08-21",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/clearance",
            json={"outcome": "DISALLOWED", "occurred_at": "2007-08-28T12:00:00"},
        ),
        422,
        [*body, "occurred_at"],
        "timezone",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-R/clearance",
            json={"outcome": "DISALLOWED", "occurred_at": "2007-09-04T09:00:00+01:00"},
        ),
        422,
        [*body, "occurred_at"],
        "occurred_at 2007-09-04T09:00:00+01:00 is in the future",
    )
    problem(
        bdc.post(
            "/v1/claims/CLM-X/received",
            json={
                "bdc_id": "BDC01",
                "received_date": "2007-09-05",
                "occurred_at": "2007-09-05T09:00:00+01:00",
            },
        ),
        422,
        [*body, "occurred_at"],
        "is in the future",
    )
    problem(
        bdc.post("/v1/claims/CLM-R/clearance", json={"outcome": "MAYBE"}),
        422,
        [*body, "outcome"],
        "ELIGIBLE",
    )
    problem(
        bdc.post("/v1/claims/CLM-R/clearance", json={"outcome": "ELIGIBLE", "by": "me"}),
        422,
        [*body, "by"],
        "Extra inputs are not permitted",
    )

    # AACT periods.
    for bad in ["2007-13", "August", "2007-8", "0000-01", ""]:
        problem(
            bdc.get("/v1/aact", params={"period": bad}),
            422,
            ["query", "period"],
            f"period must be a calendar month YYYY-MM (e.g. 2007-08), got {bad!r}",
        )
    # No period: the current month of the business clock.
    assert aact(bdc, "2007-09") == bdc.get("/v1/aact").json()

    # Nothing else was lost or published: the good receipt and request stand.
    st = status(bdc, "CLM-R")
    assert st["stage"] == "AWAITING_EVIDENCE"
    assert st["received_date"] == "2007-08-21"
    assert st["outstanding_evidence"] == ["NI_ACCOUNT_PROBLEM"]
    assert r.xlen(CLEARED) == 0
    assert r.xlen("idt:dead-letters") == 0


def test_concurrent_clearances_publish_once(bdc, r):
    assert receive(bdc, "CLM-C").status_code == 201
    codes: list[int] = []
    barrier = threading.Barrier(4)

    def clear() -> None:
        barrier.wait()
        codes.append(
            bdc.post("/v1/claims/CLM-C/clearance", json={"outcome": "ELIGIBLE"}).status_code
        )

    threads = [threading.Thread(target=clear) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(codes) == [201, 409, 409, 409]
    assert r.xlen(CLEARED) == 1


# ---------------------------------------------------------------- operations


def test_health_metrics_and_openapi(bdc):
    health = bdc.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["service"] == "bdc"

    metrics = bdc.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE idt_events_consumed_total counter" in metrics.text
    assert consumed(bdc, stream_for("office-registered")) == 4

    spec = bdc.get("/openapi.json").json()
    assert spec["info"]["title"] == "IDT Benefit Delivery Centre"
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/claims/{claim_id}/received",
        "/v1/claims/{claim_id}/evidence-requests",
        "/v1/claims/{claim_id}/evidence-requests/{kind}/received",
        "/v1/claims/{claim_id}/clearance",
        "/v1/claims/{claim_id}/status",
        "/v1/aact",
        "/health",
        "/metrics",
    }
    assert "post" in paths["/v1/claims/{claim_id}/clearance"]
    assert "get" in paths["/v1/aact"]


@pytest.mark.parametrize(("setting", "linger"), [(None, 250), (5, 5)])
def test_the_bdc_reads_with_its_own_linger_unless_one_is_set(
    redis_url, var_dir, r, monkeypatch, setting, linger
):
    """The BDC's view is read by people: it lets a quarter of a second of events
    gather between reads; `IDT_READ_LINGER_MS` (here the setting) overrides it."""
    from idt_runtime.consumer import EventConsumer

    used: list[int] = []
    read_forever = EventConsumer.read_forever

    def recording(self, block_ms, linger_ms=0, in_flight=2):  # type: ignore[no-untyped-def]
        used.append(linger_ms)
        return read_forever(self, block_ms, linger_ms, in_flight)

    monkeypatch.setattr(EventConsumer, "read_forever", recording)
    with running_bdc(redis_url, var_dir, r, read_linger_ms=setting):
        assert used == [linger]
