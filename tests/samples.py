"""One valid example of every event type, as plain CloudEvent dicts."""

from __future__ import annotations

from typing import Any

BASE = {"specversion": "1.0", "source": "/offices/CC01", "time": "2007-06-04T10:15:00+01:00"}

DATA: dict[str, dict[str, Any] | None] = {
    "office-registered": {
        "office_id": "JC0101", "kind": "JOBCENTRE", "name": "Bolton Jobcentre",
        "district": "Greater Manchester East", "region": "North West",
    },
    "claim-registered": {
        "claim_id": "C1", "customer_ref": "cr_0123456789abcdef", "benefit": "IB",
        "claim_start_date": "2007-06-01", "contact_centre_id": "CC01",
    },
    "marker-set": {"claim_id": "C1", "marker": "JOBCENTRE", "value": "JC0101"},
    "claim-cleared": {
        "claim_id": "C1", "bdc_id": "BDC01", "outcome": "ELIGIBLE", "received_date": "2007-06-02",
    },
    "interview-booked": {
        "claim_id": "C1", "intervention": "IB_INITIAL_WFI", "slot_date": "2007-07-30",
        "jobcentre_id": "JC0101",
    },
    "interview-conducted": {
        "claim_id": "C1", "intervention": "IB_INITIAL_WFI", "jobcentre_id": "JC0101",
        "mode": "FACE_TO_FACE", "duration_minutes": 50,
    },
    "interview-failed-to-attend": {
        "claim_id": "C1", "intervention": "IB_INITIAL_WFI", "slot_date": "2007-07-30",
    },
    "interview-waived": {
        "claim_id": "C1", "intervention": "IB_INITIAL_WFI", "reason": "in hospital",
    },
    "interview-deferred": {
        "claim_id": "C1", "intervention": "LP_WFI_REVIEW", "deferred_to": "2007-09-01",
        "reason": "caring responsibilities",
    },
    "lmi-doubt-raised": {"claim_id": "C1", "doubt_id": "D1", "kind": "REFUSED_WORK"},
    "lmi-follow-up-conducted": {"claim_id": "C1", "doubt_id": "D1", "action": "referred to DM"},
    "claim-closed": {"claim_id": "C1", "reason": "JOB_OUTCOME"},
    "clock-tick": None,
    "window-alert": {
        "claim_id": "C1", "kind": "WINDOW_OPENED", "intervention": "IB_INITIAL_WFI",
        "opens": {"policy": "2007-07-27", "measured": "2007-07-27"},
        "closes": {"policy": "2007-08-30", "measured": "2007-08-30"},
        "office_id": "JC0101",
    },
    "window-outcome": {
        "claim_id": "C1", "window_id": "C1:IB_INITIAL_WFI:1", "element": "IB",
        "intervention": "IB_INITIAL_WFI", "basis": "measured", "outcome": "MISSED",
        "outcome_date": "2007-08-30", "opens": "2007-07-27", "closes": "2007-08-30",
        "jobcentre_id": "JC0101", "revision": 1, "stage": "BDC",
        "stage_days": {"CONTACT_CENTRE": 0, "BDC": 40, "JOBCENTRE": 3},
    },
}  # fmt: skip


def sample(event_type: str, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {**BASE, "id": f"sample-{event_type}", "type": event_type}
    data = DATA[event_type]
    if data is not None:
        doc["data"] = dict(data)
        if "claim_id" in data:
            doc["subject"] = data["claim_id"]
    doc.update(overrides)
    return doc
