from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idt_contract import EVENT_TYPES, DecodeError, decode, decode_entry, encode, stream_for
from idt_contract.events import ClockTick, make_event
from idt_contract.export import drift, json_schemas
from tests.samples import DATA, sample


def raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_every_type_in_the_spec_has_a_model_and_a_sample():
    spec_types = {
        "office-registered", "claim-registered", "marker-set", "claim-cleared",
        "interview-booked", "interview-conducted", "interview-failed-to-attend",
        "interview-waived", "interview-deferred", "lmi-doubt-raised",
        "lmi-follow-up-conducted", "claim-closed", "clock-tick", "window-alert",
    }  # fmt: skip
    assert spec_types <= set(EVENT_TYPES)
    assert set(DATA) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(DATA))
def test_roundtrip_through_the_wire(event_type):
    ev = decode_entry(stream_for(event_type), {b"__data__": raw(sample(event_type))})
    assert ev.type == event_type
    again = decode_entry(stream_for(event_type), {b"__data__": encode(ev)})
    assert again == ev


@pytest.mark.parametrize("event_type", sorted(DATA))
def test_samples_validate_against_the_exported_json_schema(event_type):
    schema = json_schemas()[event_type]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(sample(event_type), schema)
    bad = sample(event_type, unexpected="x")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_committed_schemas_and_asyncapi_match_the_code():
    assert drift() == [], "run `python -m idt_contract.export` and commit"


def test_window_alert_streams_are_per_office():
    doc = sample("window-alert")
    ev = decode_entry("idt:window-alerts:JC0101", {b"__data__": raw(doc)})
    assert ev.type == "window-alert"


def test_clock_tick_accepts_no_data_or_empty_data():
    assert decode(raw(sample("clock-tick"))).data is None
    assert decode(raw(sample("clock-tick", data={}))).type == "clock-tick"
    with pytest.raises(DecodeError, match="data"):
        decode(raw(sample("clock-tick", data={"x": 1})))


def test_make_event_sets_subject_for_claim_events_only():
    tick = make_event(ClockTick, source="/clock", time=datetime(2007, 1, 1, tzinfo=UTC), data=None)
    assert tick.subject is None


def _data(event_type: str, **changes) -> dict:
    doc = sample(event_type)
    doc["data"] = {**doc["data"], **changes}
    return doc


REJECTIONS = [
    (b"\xff\xfe", "not UTF-8"),
    (b"not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (raw({k: v for k, v in sample("claim-registered").items() if k != "type"}), "no string `type`"),
    (raw(sample("claim-registered", type="claim-exploded")), "unknown event type"),
    (raw(sample("marker-set", type="marker-set")), "on the stream for 'claim-registered'"),
    (raw(sample("claim-registered", specversion="0.3")), "specversion"),
    (raw(sample("claim-registered", time="2007-06-04T10:15:00")), "time"),
    (raw(sample("claim-registered", extension="x")), "extension: Extra inputs"),
    (raw({k: v for k, v in sample("claim-registered").items() if k != "id"}), "id: Field required"),
    (raw(_data("claim-registered", benefit="DLA")), "data.benefit"),
    (raw(_data("claim-registered", claim_start_date="2007-02-30")), "data.claim_start_date"),
    (raw(_data("claim-registered", claim_start_date=20070601)), "data.claim_start_date"),
    (raw(_data("claim-registered", customer_ref="AB123456C")), "raw National Insurance number"),
    (raw(_data("claim-registered", nino="AB123456C")), "data.nino: Extra inputs"),
    (raw({**sample("claim-registered"), "subject": "C2"}), "does not match data.claim_id"),
    (raw(_data("claim-registered", customer_ref="NINO-JT123456C")), "raw National Insurance"),
    (raw(_data("claim-registered", customer_ref="ref_jt_12_34_56_c")), "raw National Insurance"),
    (raw(_data("claim-registered", claim_id="JT123456C") | {"subject": "JT123456C"}),
     "claim_id contains a National Insurance number"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "reason"), REJECTIONS)
def test_bad_events_are_rejected_with_a_readable_reason(payload, reason):
    with pytest.raises(DecodeError) as err:
        decode_entry("idt:claim-registered", {b"__data__": payload})
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (_data("marker-set", marker="PRIMARY_BENEFIT", value="JC0101"), "PRIMARY_BENEFIT marker"),
        (_data("marker-set", value="JC 01"), "not an office id"),
        (_data("marker-set", marker="COLOUR"), "data.marker"),
    ],
)
def test_marker_values_must_fit_the_marker(doc, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_entry("idt:marker-set", {b"__data__": raw(doc)})


def test_interview_duration_is_a_positive_int():
    for bad in (0, -5, "50", 50.5):
        with pytest.raises(DecodeError, match="duration_minutes"):
            decode(raw(_data("interview-conducted", duration_minutes=bad)))


def test_entry_shape_is_checked():
    with pytest.raises(DecodeError, match="no __data__ field"):
        decode_entry("idt:claim-registered", {b"payload": b"{}"})
    with pytest.raises(DecodeError, match="fields besides __data__"):
        decode_entry(
            "idt:claim-registered", {b"__data__": raw(sample("claim-registered")), b"x": b"1"}
        )


def test_oversized_event_is_rejected():
    doc = _data("interview-waived", reason="x" * 70_000)
    with pytest.raises(DecodeError, match="over the"):
        decode(raw(doc))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_an_event_or_a_decode_error(payload):
    try:
        decode_entry("idt:claim-registered", {b"__data__": payload})
    except DecodeError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_json_gives_an_event_or_a_decode_error(doc):
    try:
        decode(json.dumps(doc).encode())
    except DecodeError as exc:
        assert str(exc)


def test_our_own_pseudonyms_are_never_mistaken_for_ni_numbers():
    import hashlib

    for i in range(3000):
        ref = "cr_" + hashlib.sha256(str(i).encode()).hexdigest()[:40]
        decode(raw(_data("claim-registered", customer_ref=ref)))
