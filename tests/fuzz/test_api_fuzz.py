"""Every service's OpenAPI, fuzzed with schemathesis (issue 5, item 6).

Each operation of each service is called in-process (starlette's TestClient, the
app's lifespan running, so the runtime is up on a real Redis and a SQLite file) with
schemathesis's examples, coverage and fuzzing phases, valid and invalid data. Every
response must:

- not be a server error, and no exception may escape the app (TestClient re-raises);
- use a documented status code, content type and body schema;
- answer invalid data with a 4xx;
- never echo an NI number in an error body (the services' rule: errors never echo input).

The fuzzer is steered to reach more than validation: string inputs are often an
NI number, office ids often name registered offices, claim ids often name a claim the
fixtures created, so requests succeed and conflict as well as fail.

Reproducibility: under CI (`CI=true`) schemathesis runs deterministically
(`generation.deterministic`, i.e. Hypothesis's `derandomize=True`, and seed 0) with
25 examples per operation and phase, so a red CI is reproduced exactly by
`CI=true python -m pytest tests/fuzz/test_api_fuzz.py`. Locally the seed is random
(or `IDT_FUZZ_SEED`), is attached to every failure as a note, and twice as many
examples are run (`IDT_FUZZ_SCALE` multiplies them).

Plain regression tests for what the fuzzing found are at the end of the module.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
)
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from idt_contract.events import NINO_IN_TEXT, ClockTick, make_event
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
from tests.fuzz import CI, NINOS, SEED, examples
from tests.helpers import OFFICES, TEST_KEY, register_offices, xadd

pytestmark = [pytest.mark.fuzz, pytest.mark.integration]

#: The claim every fixture makes exist in its service, so paths can name a real one.
CLAIM = "FUZZ-1"
CLAIM_BODY = {
    "nino": "JT123456C",
    "benefit": "IB",
    "claim_start_date": "2007-06-01",
    "contact_centre_id": "CC01",
    "jobcentre_id": "JC0101",
}
#: Fixed under CI (with `deterministic`, the cases are a function of it); random locally.
RUN_SEED = SEED if SEED is not None else 0 if CI else random.randrange(2**32)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _config() -> schemathesis.Config:
    offices = [o[0] for o in OFFICES]
    jobcentres = [o[0] for o in OFFICES if o[0].startswith("JC")]
    return schemathesis.Config.from_dict(
        {
            "seed": RUN_SEED,
            "generation": {
                "max-examples": examples(ci=25, local=50),
                "deterministic": CI,
                "database": "none",
                "dictionaries": {"string": {"dictionary": "nino", "probability": 0.15}},
            },
            "dictionaries": {
                "nino": {"values": NINOS},
                "offices": {"values": offices},
                "jobcentres": {"values": jobcentres},
                "contact_centres": {"values": ["CC01"]},
                "bdcs": {"values": ["BDC01"]},
                "claims": {"values": [CLAIM, "NO-SUCH-CLAIM", *NINOS[:2]]},
            },
            "parameters": {
                "path.claim_id": {"dictionary": "claims", "probability": 0.6},
                "path.office_id": {"dictionary": "offices", "probability": 0.6},
                "query.contact_centre_id": {"dictionary": "contact_centres", "probability": 0.5},
                "body.claim_id": {"dictionary": "claims", "probability": 0.3},
                "body.nino": {"dictionary": "nino", "probability": 0.6},
                "body.contact_centre_id": {"dictionary": "contact_centres", "probability": 0.7},
                "body.jobcentre_id": {"dictionary": "jobcentres", "probability": 0.7},
                "body.bdc_id": {"dictionary": "bdcs", "probability": 0.7},
                "body.source_office": {"dictionary": "offices", "probability": 0.5},
                "body.value": {"dictionary": "jobcentres", "probability": 0.4},
            },
        }
    )


def _schema(app: FastAPI) -> Any:
    # The document only; the app that answers is started by a fixture.
    return schemathesis.openapi.from_dict(app.openapi(), config=_config())


CC = _schema(cc_app(ContactCentreSettings(environment="test", customer_ref_key=TEST_KEY)))
BDC = _schema(bdc_app(BdcSettings(environment="test")))
SCHEDULER = _schema(scheduler_app(SchedulerSettings(environment="test")))
SCORING = _schema(scoring_app(ScoringSettings(environment="test")))


# ---------------------------------------------------------------- running services


@pytest.fixture(scope="module")
def bus(redis_server: str) -> Iterator[tuple[str, redis.Redis]]:
    """One Redis for the module: the registry published, one claim's history on the bus."""
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    register_offices(client)
    claim = Claim(CLAIM, start="2007-06-01").cleared("2007-06-08", received="2007-06-04")
    for ev in claim.events:
        xadd(client, ev)
    xadd(client, make_event(ClockTick, source="/clock", time=at("2007-09-03", 1), data=None))
    yield redis_server, client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def cc_api(bus, tmp_path_factory) -> Iterator[TestClient]:
    url, _ = bus
    settings = ContactCentreSettings(
        redis_url=url,
        var_dir=tmp_path_factory.mktemp("cc"),
        environment="test",
        customer_ref_key=TEST_KEY,
        block_ms=50,
    )
    with TestClient(cc_app(settings)) as client:
        # The registry has been consumed once a registration can succeed.
        wait_for(lambda: _register(client, "WARMUP") in (201, 409))
        yield client


def _register(client: TestClient, claim_id: str) -> int:
    return client.post("/v1/claims", json={**CLAIM_BODY, "claim_id": claim_id}).status_code


@pytest.fixture(scope="module")
def bdc_api(bus, tmp_path_factory) -> Iterator[TestClient]:
    url, _ = bus
    settings = BdcSettings(
        redis_url=url, var_dir=tmp_path_factory.mktemp("bdc"), environment="test", block_ms=50
    )
    with TestClient(bdc_app(settings)) as client:
        wait_for(lambda: client.get(f"/v1/claims/{CLAIM}/status").status_code == 200)
        yield client


@pytest.fixture(scope="module")
def scheduler_api(bus, tmp_path_factory) -> Iterator[TestClient]:
    url, _ = bus
    settings = SchedulerSettings(
        redis_url=url, var_dir=tmp_path_factory.mktemp("scheduler"), environment="test", block_ms=50
    )
    with TestClient(scheduler_app(settings)) as client:
        wait_for(lambda: client.get(f"/v1/claims/{CLAIM}").status_code == 200)
        yield client


@pytest.fixture(scope="module")
def scoring_api(bus, tmp_path_factory) -> Iterator[TestClient]:
    url, _ = bus
    settings = ScoringSettings(
        redis_url=url, var_dir=tmp_path_factory.mktemp("scoring"), environment="test", block_ms=50
    )
    with TestClient(scoring_app(settings)) as client:
        wait_for(lambda: client.get("/v1/scores").status_code == 200)
        yield client


# ---------------------------------------------------------------- one call, every check


def call_and_check(client: TestClient, case: Any) -> None:
    """Send `case` to the running app and hold the response to every check."""
    kw = case.as_transport_kwargs(base_url="http://testserver")
    request: dict[str, Any] = {k: kw[k] for k in ("method", "url", "params", "headers") if k in kw}
    if "json" in kw:
        request["json"] = kw["json"]
    if kw.get("data") is not None:
        request["content"] = kw["data"]
    try:
        response = client.request(**request)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            echoed = NINO_IN_TEXT.search(response.text)
            assert echoed is None, (
                f"{response.status_code} error body echoes an NI number {echoed.group()!r}: "
                f"{response.text[:500]}\n{case.as_curl_command()}"
            )
    except BaseException as exc:
        if not CI:
            exc.add_note(f"schemathesis seed: IDT_FUZZ_SEED={RUN_SEED}")
        raise


@CC.parametrize()
def test_contact_centre_api(case, cc_api):
    call_and_check(cc_api, case)


@BDC.parametrize()
def test_bdc_api(case, bdc_api):
    call_and_check(bdc_api, case)


@SCHEDULER.parametrize()
def test_scheduler_api(case, scheduler_api):
    call_and_check(scheduler_api, case)


@SCORING.parametrize()
def test_scoring_api(case, scoring_api):
    call_and_check(scoring_api, case)


# ---------------------------------------------------------------- steered at the calendar's edges

#: Moments whose London date does not exist, or only just: schemathesis rarely draws them.
EDGE_MOMENTS = [
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:30Z",  # London (LMT, -0:01:15) is still year 0
    "0001-01-02T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:00:00+01:00",
]
edge_moments = st.sampled_from(EDGE_MOMENTS) | st.builds(
    "{}T{}{}".format,
    st.sampled_from(["0001-01-01", "0001-01-02", "9999-12-30", "9999-12-31"]),
    st.sampled_from(["00:00:00", "00:59:59", "12:00:00", "23:59:59"]),
    st.sampled_from(["Z", "+01:00", "-01:00", "+14:00", "-12:00", "+23:59", "-23:59"]),
)


@settings(max_examples=examples(ci=15, local=60), deadline=None, derandomize=CI)
@given(moment=edge_moments, start=st.sampled_from(["0001-01-01", "2007-06-01", "9999-12-31"]))
@example(moment="0001-01-01T00:00:00+23:59", start="2007-06-01")
@example(moment="9999-12-31T23:59:59-23:59", start="2007-06-01")
def test_moments_at_the_edges_of_the_calendar_never_give_a_server_error(
    cc_api, bdc_api, moment, start
):
    calls = [
        (cc_api, "post", "/v1/claims", {**CLAIM_BODY, "claim_start_date": start}),
        (cc_api, "put", f"/v1/claims/{CLAIM}/markers/JOBCENTRE", {"value": "JC0102"}),
        (
            bdc_api,
            "post",
            "/v1/claims/EDGE-1/received",
            {"bdc_id": "BDC01", "received_date": start},
        ),
        (bdc_api, "post", f"/v1/claims/{CLAIM}/evidence-requests", {"kind": "SSP1"}),
        (bdc_api, "post", f"/v1/claims/{CLAIM}/evidence-requests/SSP1/received", {}),
        (bdc_api, "post", "/v1/claims/NO-SUCH/clearance", {"outcome": "ELIGIBLE"}),
    ]
    for client, method, url, body in calls:
        # TestClient re-raises an exception that escaped the app.
        resp = client.request(method, url, json={**body, "occurred_at": moment})
        assert resp.status_code < 500, f"{method.upper()} {url}: {resp.text}"


# ---------------------------------------------------------------- what the fuzzing found

NOT_READABLE_JSON = {
    "not-utf8": b"\xff\xfe\x01",
    "nested-5000-deep": b"[" * 5000 + b"]" * 5000,
    "int-of-5000-digits": b'{"kind": ' + b"1" * 5000 + b"}",
}


@pytest.mark.parametrize("body", NOT_READABLE_JSON.values(), ids=NOT_READABLE_JSON.keys())
def test_a_body_that_is_not_readable_json_is_a_422_in_the_common_shape(cc_api, bdc_api, body):
    # Was a 400 {"detail": "There was an error parsing the body"}: undocumented, and
    # unlike malformed JSON, which is a 422.
    for client, url in (
        (cc_api, "/v1/claims"),
        (bdc_api, f"/v1/claims/{CLAIM}/evidence-requests"),
    ):
        resp = client.post(url, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        (item,) = resp.json()["detail"]
        assert item["loc"] == ["body"] and item["type"] == "json_invalid"


def test_a_claim_id_holding_an_ni_number_is_a_422_not_a_server_error(cc_api, bdc_api, bus):
    _, r = bus
    before = r.xlen("idt:claim-registered"), r.xlen("idt:claim-cleared")
    # Was a 500: the Contact Centre accepted it, then the contract refused the event.
    resp = cc_api.post("/v1/claims", json={**CLAIM_BODY, "claim_id": "AB123456C"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "claim_id"]
    # Was 201, then a 500 at clearance (the BDC cannot publish claim-cleared for it).
    receipt = {"bdc_id": "BDC01", "received_date": "2007-06-04"}
    for url, body in (
        ("/v1/claims/AB123456C/received", receipt),
        ("/v1/claims/AB123456C/clearance", {"outcome": "ELIGIBLE"}),
    ):
        resp = bdc_api.post(url, json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"] == ["path", "claim_id"]
        assert "AB123456C" not in resp.text
    assert (r.xlen("idt:claim-registered"), r.xlen("idt:claim-cleared")) == before


@pytest.mark.parametrize(
    ("service", "method", "url", "body"),
    [
        ("cc", "put", "/v1/claims/JT123456C/markers/JOBCENTRE", {"value": "JC0101"}),
        ("cc", "post", "/v1/claims", {**CLAIM_BODY, "JT123456C": 1}),
        ("bdc", "get", "/v1/aact?period=JT123456C", None),
        ("bdc", "get", "/v1/claims/JT123456C/status", None),
        ("scheduler", "get", "/v1/claims/JT123456C", None),
        ("scoring", "get", "/v1/scores?period=jt%2012%2034%2056%20c", None),
    ],
)  # fmt: skip
def test_no_error_echoes_an_ni_number(request, service, method, url, body):
    # Each echoed the number: in a 404's message, an unknown field's `loc`, a 422's msg.
    client = request.getfixturevalue(f"{service}_api")
    resp = client.request(method, url, json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert not NINO_IN_TEXT.search(resp.text), resp.text
    assert isinstance(resp.json()["detail"], list)


def test_every_error_has_the_common_shape(cc_api, scheduler_api):
    # The scheduler's 404 was {"detail": "claim 'NOPE' is not known to the scheduler"}.
    resp = scheduler_api.get("/v1/claims/NOPE")
    assert resp.status_code == 404
    assert resp.json() == {
        "detail": [
            {
                "loc": ["path", "claim_id"],
                "msg": "claim 'NOPE' is not known to the scheduler",
                "type": "not_found",
            }
        ]
    }
    # Starlette's own errors, once {"detail": "Not Found"} and {"detail": "Method Not Allowed"}.
    resp = cc_api.get("/no-such-route")
    assert resp.status_code == 404
    assert resp.json() == {"detail": [{"loc": [], "msg": "Not Found", "type": "not_found"}]}
    resp = cc_api.delete("/v1/claims")
    assert resp.status_code == 405
    assert resp.json()["detail"][0]["type"] == "method_not_allowed"
    assert resp.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("service", "method", "url", "body", "loc"),
    [
        ("cc", "get", "/v1/reports/jp-process?as_of=0", None, ["query", "as_of"]),
        ("cc", "post", "/v1/claims", {**CLAIM_BODY, "claim_start_date": 0},
         ["body", "claim_start_date"]),
        ("cc", "post", "/v1/claims", {**CLAIM_BODY, "claim_start_date": "86400"},
         ["body", "claim_start_date"]),
        ("cc", "put", f"/v1/claims/{CLAIM}/markers/JOBCENTRE",
         {"value": "JC0102", "occurred_at": 1}, ["body", "occurred_at"]),
        ("bdc", "post", "/v1/claims/NUM-1/received", {"bdc_id": "BDC01", "received_date": 0},
         ["body", "received_date"]),
        ("bdc", "post", "/v1/claims/NUM-2/received",
         {"bdc_id": "BDC01", "received_date": "2007-06-04", "occurred_at": "1.5e9"},
         ["body", "occurred_at"]),
        ("bdc", "get", f"/v1/claims/{CLAIM}/status?as_of=0", None, ["query", "as_of"]),
    ],
)  # fmt: skip
def test_a_date_given_as_a_number_is_refused(request, service, method, url, body, loc):
    # Each was read as a Unix time (a date when it falls on midnight UTC): as_of=0
    # answered the report for 1970-01-01.
    client = request.getfixturevalue(f"{service}_api")
    resp = client.request(method, url, json=body)
    assert resp.status_code == 422, resp.text
    assert [d["loc"] for d in resp.json()["detail"]] == [loc]


def test_iso_dates_are_still_accepted(cc_api, bdc_api):
    assert cc_api.get("/v1/reports/jp-process?as_of=2007-06-10").status_code == 200
    assert bdc_api.get(f"/v1/claims/{CLAIM}/status?as_of=2007-06-10").status_code == 200


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_an_occurred_at_with_no_london_date_is_a_422(cc_api, bdc_api, bus, moment):
    _, r = bus
    before = r.xlen("idt:claim-registered"), r.xlen("idt:marker-set")
    # Was a 500 (the BDC took its London date).
    resp = bdc_api.post(
        "/v1/claims/EDGE-2/received",
        json={"bdc_id": "BDC01", "received_date": "2007-06-04", "occurred_at": moment},
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "occurred_at"]
    # Was a 201 whose events no consumer could apply (each takes the London date).
    resp = cc_api.post("/v1/claims", json={**CLAIM_BODY, "occurred_at": moment})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "occurred_at"]
    assert (r.xlen("idt:claim-registered"), r.xlen("idt:marker-set")) == before


def test_the_status_codes_the_services_answer_are_documented():
    def codes(schema: Any, path: str, method: str) -> set[str]:
        return set(schema.raw_schema["paths"][path][method]["responses"])

    # The Contact Centre's 409 and 404, the BDC's 200 for a repeated receipt and the
    # scheduler's 404 were answered but not documented.
    assert {"201", "409", "422"} <= codes(CC, "/v1/claims", "post")
    assert {"200", "404", "422"} <= codes(CC, "/v1/claims/{claim_id}/markers/{marker}", "put")
    assert {"200", "201", "409", "422"} <= codes(BDC, "/v1/claims/{claim_id}/received", "post")
    assert {"200", "404"} <= codes(SCHEDULER, "/v1/claims/{claim_id}", "get")
