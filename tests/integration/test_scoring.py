"""The scoring service over a real Redis: the scores API shape, revisions,
UNALLOCATED, roll-ups, guard-rails and metrics."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from fastapi.testclient import TestClient

from idt_contract.events import ClockTick, WindowOutcome, WindowOutcomeData, make_event
from services.scoring.app import ScoringSettings, create_app
from tests.claims import Claim, at
from tests.conftest import wait_for
from tests.helpers import register_offices, xadd


def outcome(
    window: str,
    outcome_: str,
    day: str | None,
    jc: str | None,
    *,
    revision: int = 1,
    basis: str = "measured",
    element: str = "IB",
    stage: str | None = None,
):
    data = WindowOutcomeData.model_validate(
        {
            "claim_id": window.split(":")[0],
            "window_id": window,
            "element": element,
            "intervention": {"IB": "IB_INITIAL_WFI", "LP": "LP_WFI_REVIEW"}[element],
            "basis": basis,
            "outcome": outcome_,
            "outcome_date": day,
            "opens": "2007-07-01",
            "closes": "2007-08-30",
            "jobcentre_id": jc,
            "revision": revision,
            "stage": stage,
        },
        strict=False,
    )
    return make_event(
        WindowOutcome,
        source="/services/scheduler",
        time=datetime(2007, 9, 1, tzinfo=UTC),
        data=data,
        id=f"wo-{window}-{basis}-{revision}",
    )


@pytest.fixture
def scoring(redis_url, var_dir, r, database_url):
    register_offices(r)
    settings = ScoringSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", database_url=database_url
    )
    with TestClient(create_app(settings)) as client:
        yield client


def scores(client: TestClient, **params) -> dict:
    resp = client.get("/v1/scores", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def settled(client: TestClient, r: redis.Redis, *streams: str) -> bool:
    return all(
        (g := r.xinfo_groups(s)) and g[0]["pending"] == 0
        and g[0]["last-delivered-id"] == r.xinfo_stream(s)["last-generated-id"]
        for s in streams
    )  # fmt: skip


def test_scores_in_the_exact_shape_with_revisions_and_unallocated(scoring, r):
    events = [
        outcome("A:IB_INITIAL_WFI:1", "MET", "2007-08-10", "JC0101"),
        outcome("B:IB_INITIAL_WFI:1", "MISSED", "2007-08-30", "JC0101", stage="BDC"),
        outcome("C:IB_INITIAL_WFI:1", "WAIVED", "2007-08-05", "JC0102"),
        outcome("D:IB_INITIAL_WFI:1", "MISSED", "2007-08-30", "CC01"),  # UNALLOCATED
        outcome("E:LP_WFI_REVIEW:1", "MET", "2007-08-20", "JC0102", element="LP"),
        # Revised: MISSED then MET (a late interview record); the older revision
        # arrives last and must not win.
        outcome("F:IB_INITIAL_WFI:1", "MET", "2007-08-25", "JC0101", revision=2),
        outcome("F:IB_INITIAL_WFI:1", "MISSED", "2007-08-30", "JC0101", revision=1),
        # Withdrawn: counts nowhere.
        outcome("G:IB_INITIAL_WFI:1", "WITHDRAWN", None, "JC0101", revision=2),
        outcome("H:IB_INITIAL_WFI:1", "MET", "2007-09-02", "JC0101"),  # next month
        outcome("A:IB_INITIAL_WFI:1", "MET", "2007-08-10", "JC0101", basis="policy"),
        outcome("C:IB_INITIAL_WFI:1", "WAIVED", "2007-08-05", "JC0102", basis="policy"),
    ]
    for ev in events:
        xadd(r, ev)
    xadd(r, make_event(ClockTick, source="/clock", time=at("2007-09-03", 1), data=None))
    wait_for(lambda: settled(scoring, r, "idt:window-outcome", "idt:clock-tick"))

    body = scores(scoring, period="2007-08", level="jobcentre", basis="measured")
    assert set(body) == {"period", "level", "basis", "as_of", "rows"}
    assert (body["period"], body["level"], body["basis"], body["as_of"]) == (
        "2007-08", "jobcentre", "measured", "2007-09-03",
    )  # fmt: skip
    rows = {row["scope"]: row for row in body["rows"]}
    assert set(rows) == {"JC0101", "JC0102", "UNALLOCATED"}
    ib = rows["JC0101"]["elements"]["IB"]
    assert {k: ib[k] for k in ("met", "missed", "waived", "deferred", "due")} == {
        "met": 2, "missed": 1, "waived": 0, "deferred": 0, "due": 3,
    }  # fmt: skip
    assert ib["rate"] == pytest.approx(2 / 3) and ib["target"] == 0.8
    assert ib["ci95"][0] < 2 / 3 < ib["ci95"][1]
    assert set(rows["JC0101"]["elements"]) == {"IB"}
    assert rows["JC0102"]["elements"]["IB"]["due"] == 1  # a waiver counts on measured
    assert rows["JC0102"]["overall"]["elements"] == ["IB", "LP"]
    assert rows["UNALLOCATED"]["elements"]["IB"]["missed"] == 1

    policy = scores(scoring, period="2007-08", level="jobcentre", basis="policy")
    jc2 = {row["scope"]: row for row in policy["rows"]}["JC0102"]["elements"]
    assert jc2["IB"]["due"] == 0 and jc2["IB"]["rate"] is None  # waivers leave it

    district = scores(scoring, period="2007-08", level="district", basis="measured")
    (gm,) = district["rows"]
    assert gm["scope"] == "Greater Manchester East"  # UNALLOCATED in no district
    assert gm["elements"]["IB"]["due"] == 4
    national = scores(scoring, period="FY2007-08", level="national", basis="measured")
    assert national["rows"][0]["elements"]["IB"]["due"] == 6  # + UNALLOCATED + September

    # No period: the current business month (3 September: nothing counted yet).
    current = scores(scoring, level="jobcentre")
    assert (current["period"], current["as_of"]) == ("2007-09", "2007-09-03")
    assert [row["scope"] for row in current["rows"]] == ["JC0101"]

    for bad in ({"period": "2007-13"}, {"period": "2007-08", "level": "street"}):
        resp = scoring.get("/v1/scores", params=bad)
        assert resp.status_code == 422, resp.text

    metrics = scoring.get("/metrics").text
    assert (
        'idt_score_windows{basis="measured",element="IB",level="district",outcome="MET",'
        'period="fy",scope="Greater Manchester East"} 3.0' in metrics
    )
    assert 'idt_score_target{element="IB"} 0.8' in metrics
    for claim in "ABCDEFGH":
        assert f"{claim}:IB_INITIAL_WFI" not in metrics  # bounded: no window labels


def test_no_default_period_before_the_first_tick(scoring):
    resp = scoring.get("/v1/scores")
    assert resp.status_code == 422 and "no business date yet" in resp.text


def test_guardrails_from_the_bus(scoring, r):
    c = Claim("GR-1", benefit="IB", start="2007-08-01")
    c.cleared("2007-08-28", received="2007-08-24")
    c.conducted("2007-08-29", minutes=20).fta("2007-08-30")
    c2 = Claim("GR-2", benefit="IB", start="2007-08-01", jobcentre="CC01")
    for ev in c.events + c2.events:
        xadd(r, ev)
    xadd(r, outcome("GR-1:IB_INITIAL_WFI:1", "WAIVED", "2007-08-20", "JC0101"))
    xadd(r, outcome("GR-9:IB_INITIAL_WFI:1", "MISSED", "2007-08-30", "JC0101", stage="BDC"))
    streams = [
        f"idt:{t}"
        for t in ("claim-cleared", "interview-conducted", "marker-set", "window-outcome",
                  "interview-failed-to-attend", "claim-registered")
    ]  # fmt: skip
    wait_for(lambda: settled(scoring, r, *streams))
    g = scoring.get("/v1/guardrails", params={"period": "2007-08"}).json()
    assert g["aact_by_bdc"] == {"BDC01": {"claims": 1, "aact": 1.0}}  # over the bank holiday
    assert g["failure_to_attend"] == {"failed": 1, "conducted": 1, "rate": 0.5}
    assert g["interview_minutes"]["p50"] == 20 and g["interview_minutes"]["under_30"] == 1
    assert g["waivers_and_deferrals"]["IB"]["waiver_rate"] == 0.5
    assert g["missed_by_stage"] == {"IB": {"BDC": 1}}
    assert g["marker_errors_by_contact_centre"]["CC01"] == {"claims": 2, "errors": 1, "rate": 0.5}
    xadd(r, make_event(ClockTick, source="/clock", time=at("2007-08-31", 1), data=None))
    wait_for(lambda: settled(scoring, r, "idt:clock-tick"))
    metrics = scoring.get("/metrics").text
    assert 'idt_guardrail_aact_claims{bdc="BDC01"} 1.0' in metrics
    assert 'idt_guardrail_aact_working_days{bdc="BDC01"} 1.0' in metrics
    assert 'idt_guardrail_marker_claims{contact_centre="CC01"} 2.0' in metrics
