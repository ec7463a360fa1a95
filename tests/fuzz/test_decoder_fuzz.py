"""The contract decoder, fuzzed (issue 5, item 6): any bytes give a dead letter with a
reason, never a crash.

Whatever a stream entry holds, `decode_entry` returns a valid event or raises
`DecodeError` whose message is a readable, non-empty reason fit for the dead letters,
and no other exception. A decoder crash is a poison pill: the consumer can neither
apply, nor dead-letter, nor ack the batch, so the good entries read with it are stuck
too. A reason is written to the dead letters and the logs, so it never carries an NI
number either.

Inputs: arbitrary bytes, arbitrary field dicts, JSON of every shape, and the real
events of tests/samples.py with one thing changed (a field removed, renamed, added or
replaced by a value of another type, an edge-of-calendar time, a raw JSON token no
encoder would write: 5000-digit integers, arrays nested 5000 deep, NaN, lone
surrogates). The last test runs generated garbage interleaved with good events through
a real service on a real Redis.

Reproducibility: under CI (`CI=true`) every test is derandomized (`derandomize=True`:
the examples are a fixed function of the test) with modest example counts, so a red
CI is reproduced exactly by `CI=true python -m pytest tests/fuzz/test_decoder_fuzz.py`.
Locally the examples are random and more numerous (`IDT_FUZZ_SCALE` multiplies them);
Hypothesis prints the failing example and the seed (`--hypothesis-seed`) and keeps
the failure in `.hypothesis/` to replay it first. Inputs that once crashed the decoder
are pinned with `@example`, so every run tries them.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlmodel import Session

from idt_contract import (
    DATA_FIELD,
    DEAD_LETTERS,
    DecodeError,
    Envelope,
    alerts_stream,
    decode,
    decode_entry,
    encode,
    entry_fields,
    stream_for,
)
from idt_contract.codec import MAX_EVENT_BYTES
from idt_contract.events import (
    NINO_IN_TEXT,
)
from idt_runtime.clock import FixedClock
from services.contact_centre.app import ContactCentreSettings, create_app
from services.contact_centre.handlers import APPLIERS as CC_APPLIERS
from services.contact_centre.models import CcClaim
from tests.conftest import wait_for
from tests.fuzz import CI, NINOS, examples
from tests.helpers import TEST_KEY
from tests.integration.test_consumer import claim_registered
from tests.samples import DATA, sample

pytestmark = pytest.mark.fuzz

DATA_B = DATA_FIELD.encode()
TYPES = sorted(DATA)


def fuzz(ci: int, local: int, **kw: Any) -> settings:
    return settings(
        max_examples=examples(ci, local),
        deadline=None,
        derandomize=CI,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kw,
    )


def fresh(event_type: str, **overrides: Any) -> dict[str, Any]:
    """A sample event to change at will (`sample` shares nested dicts with DATA)."""
    return copy.deepcopy(sample(event_type, **overrides))


def home_stream(event_type: str) -> str:
    return alerts_stream("JC0101") if event_type == "window-alert" else stream_for(event_type)


STREAMS = [home_stream(x) for x in TYPES] + [DEAD_LETTERS, "idt:no-such-type", "elsewhere"]


# ---------------------------------------------------------------- the property


def holds(decoder: Callable[[], Envelope]) -> Envelope | None:
    """The decoder's promise: an event, or a DecodeError with a reason; nothing else."""
    try:
        event = decoder()
    except DecodeError as exc:
        reason = str(exc)
        assert reason.strip(), "a DecodeError without a reason"
        return None
    assert isinstance(event, Envelope)
    # What the decoder accepts our own encoder writes back identically.
    assert decode(encode(event), expected_type=event.type) == event
    return event


def no_nino_in_reason(decoder: Callable[[], Envelope]) -> None:
    try:
        decoder()
    except DecodeError as exc:
        leaked = NINO_IN_TEXT.search(str(exc))
        assert leaked is None, f"the reason carries an NI number {leaked.group()!r}: {exc}"


# ---------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=16,
)

#: Text a JSON encoder never writes but a parser may be handed.
RAW_TOKENS = [
    "1" * 5000,  # past CPython's 4300-digit int conversion limit
    "-" + "9" * 4301,
    "[" * 5000 + "]" * 5000,  # past the parser's recursion limit
    '{"a":' * 3000 + "1" + "}" * 3000,
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\ud800"',  # a lone surrogate
    '"\\udfff\\ud800"',
    '"\\u0000"',
    "1.0",
    "0.1e1",
    "true",
    "null",
    '""',
    "[]",
    "{}",
]
raw_tokens = st.sampled_from(RAW_TOKENS)

#: Times at the edges of the calendar (with offsets that cross them) and malformed ones.
EDGE_TIMES = [
    "0001-01-01T00:30:00+01:00",  # UTC is year 0
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:30Z",  # London (LMT) is year 0
    "9999-12-31T23:59:59-01:00",  # UTC is year 10000
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59Z",
    "2007-06-04T10:15:00",  # no offset
    "2007-06-04",
    "2007-13-01T00:00:00Z",
    "2007-06-04T24:00:00Z",
    "2007-06-04T10:15:00+24:00",
    "2007-06-04T10:15:00.1234567890+01:00",
    "1000000000",
    "",
]
edge_times = st.sampled_from(EDGE_TIMES) | st.builds(
    lambda y, m, d, h, off: f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:00:00{off}",
    st.sampled_from([1, 2, 1969, 1970, 2007, 9998, 9999]) | st.integers(0, 10000),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.sampled_from(["Z", "+00:00", "+01:00", "-01:00", "+23:59", "-23:59", "", "+14:00"]),
)
edge_dates = st.sampled_from(["0001-01-01", "9999-12-31", "2007-02-29", "2008-02-29", "0", ""])
ninos = st.sampled_from(NINOS)
replacement_values = (
    json_values
    | edge_times
    | edge_dates
    | ninos
    | st.sampled_from(TYPES)
    | st.integers(min_value=2**63 - 2, max_value=2**64)
    | st.text(min_size=100, max_size=400)
)

PLACEHOLDER = "\x00fuzz-raw-token\x00"


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in doc.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real event of tests/samples.py with one thing changed, and its stream."""
    etype = draw(st.sampled_from(TYPES))
    doc = fresh(etype)
    path = draw(st.sampled_from(_paths(doc)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    token = None
    action = draw(st.sampled_from(["delete", "rename", "add", "replace", "raw"]))
    if action == "delete":
        del parent[key]
    elif action == "rename":
        parent[draw(st.text(max_size=12) | ninos)] = parent.pop(key)
    elif action == "add":
        parent[draw(st.text(max_size=12) | ninos)] = draw(json_scalars)
    elif action == "replace":
        parent[key] = draw(replacement_values)
    else:
        parent[key] = PLACEHOLDER
        token = draw(raw_tokens)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if token is not None:
        text = text.replace(json.dumps(PLACEHOLDER), token)
    stream = draw(st.just(home_stream(etype)) | st.sampled_from(STREAMS))
    return stream, text.encode("utf-8", "surrogatepass")


def with_time(etype: str, time: str) -> bytes:
    return json.dumps(fresh(etype, time=time)).encode()


def with_raw(etype: str, field: str, token: str) -> bytes:
    doc = fresh(etype)
    doc["data"][field] = PLACEHOLDER
    return json.dumps(doc).replace(json.dumps(PLACEHOLDER), token).encode()


field_names = st.binary(max_size=16) | st.just(DATA_B) | ninos.map(str.encode)
field_values = (
    st.binary(max_size=300)
    | st.sampled_from(TYPES).map(lambda x: json.dumps(fresh(x)).encode())
    | mutated_events().map(lambda s: s[1])
)


# ---------------------------------------------------------------- decoder properties


@fuzz(ci=150, local=1000)
@given(stream=st.sampled_from(STREAMS), payload=st.binary(max_size=2000))
def test_any_bytes_on_any_stream(stream, payload):
    holds(lambda: decode_entry(stream, {DATA_B: payload}))


@fuzz(ci=100, local=600)
@given(
    stream=st.sampled_from(STREAMS),
    fields=st.dictionaries(field_names, field_values, max_size=4),
)
def test_any_entry_fields(stream, fields):
    holds(lambda: decode_entry(stream, fields))


@fuzz(ci=100, local=600)
@given(
    doc=json_values
    | st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES) | st.text(max_size=12)},
        optional={
            k: json_values for k in ("specversion", "id", "source", "time", "subject", "data")
        },
    )
)
def test_json_of_any_shape(doc):
    holds(lambda: decode(json.dumps(doc).encode()))


@fuzz(ci=200, local=1500)
@given(entry=mutated_events())
@example(entry=("idt:claim-cleared", with_time("claim-cleared", "0001-01-01T00:30:00+01:00")))
@example(entry=("idt:claim-cleared", with_time("claim-cleared", "9999-12-31T23:59:59-01:00")))
@example(entry=("idt:marker-set", with_raw("marker-set", "value", "1" * 5000)))
@example(entry=("idt:marker-set", with_raw("marker-set", "value", "[" * 5000 + "]" * 5000)))
def test_a_real_event_with_one_thing_changed(entry):
    stream, payload = entry
    holds(lambda: decode_entry(stream, {DATA_B: payload}))


@fuzz(ci=100, local=500)
@given(etype=st.sampled_from(TYPES), time=edge_times)
@example(etype="claim-cleared", time="0001-01-01T00:30:00+01:00")
@example(etype="claim-cleared", time="9999-12-31T23:59:59-01:00")
def test_event_times_at_the_edges_of_the_calendar(etype, time):
    holds(lambda: decode_entry(home_stream(etype), {DATA_B: with_time(etype, time)}))


@fuzz(ci=60, local=300)
@given(etype=st.sampled_from(TYPES), token=raw_tokens, where=st.sampled_from(["top", "field"]))
@example(etype="claim-registered", token="1" * 5000, where="top")
@example(etype="claim-registered", token="[" * 5000 + "]" * 5000, where="top")
@example(etype="claim-registered", token='{"a":' * 3000 + "1" + "}" * 3000, where="field")
def test_json_no_encoder_would_write(etype, token, where):
    if where == "top" or DATA[etype] is None:
        payload = token.encode()
    else:
        payload = with_raw(etype, next(iter(DATA[etype] or {})), token)
    holds(lambda: decode_entry(home_stream(etype), {DATA_B: payload}))


@fuzz(ci=50, local=200)
@given(text=st.text(st.characters(codec=None, categories=["Cs", "Lu", "Nd", "Po"]), max_size=40))
@example(text="\ud800")
def test_text_that_cannot_be_utf8(text):
    # `decode` takes str as well as bytes; a lone surrogate has no UTF-8 form.
    holds(lambda: decode(text))


@fuzz(ci=60, local=200)
@given(etype=st.sampled_from(TYPES), over=st.integers(-64, 64))
def test_the_size_limit_is_exact(etype, over):
    body = json.dumps(fresh(etype)).encode()
    padded = body[:-1] + b" " * (MAX_EVENT_BYTES + over - len(body)) + b"}"
    assert len(padded) == MAX_EVENT_BYTES + over
    event = holds(lambda: decode_entry(home_stream(etype), {DATA_B: padded}))
    assert (event is not None) == (over <= 0)


@fuzz(ci=100, local=500)
@given(entry=mutated_events(), nino=ninos)
@example(entry=("idt:marker-set", b"{}"), nino="JT123456C")
@example(entry=("idt:marker-set", b"{}"), nino="JT 12 34 56 C")
def test_a_reason_never_carries_an_ni_number(entry, nino):
    stream, payload = entry
    # A real event changed (the names and values it gets include NI numbers).
    no_nino_in_reason(lambda: decode_entry(stream, {DATA_B: payload}))
    # The number as the type, the subject, a marker's value.
    marker = fresh("marker-set")
    marker["data"]["value"] = nino
    for where, doc in (
        (stream, {"type": nino}),
        ("idt:marker-set", fresh("marker-set", subject=nino)),
        ("idt:marker-set", marker),
    ):
        no_nino_in_reason(lambda w=where, d=doc: decode_entry(w, {DATA_B: json.dumps(d).encode()}))
    # The number as the name of an entry's field.
    no_nino_in_reason(lambda: decode_entry(stream, {DATA_B: payload, nino.encode(): b"x"}))
    no_nino_in_reason(lambda: decode_entry(stream, {nino.encode(): payload}))


# ---------------------------------------------------------------- through a live consumer

CC_STREAMS = sorted(CC_APPLIERS)
_batches = itertools.count(1)


def _undecodable(entry: tuple[str, dict[bytes, bytes]]) -> bool:
    stream, fields = entry
    try:
        decode_entry(stream, fields)
    except Exception:  # a DecodeError, or a decoder crash the consumer must survive
        return True
    return False


garbage_entries = st.tuples(
    st.sampled_from(CC_STREAMS),
    st.one_of(
        st.dictionaries(field_names, st.binary(max_size=200), min_size=1, max_size=3),
        st.binary(max_size=300).map(lambda b: {DATA_B: b}),
        mutated_events().map(lambda s: {DATA_B: s[1]}),
        st.builds(
            lambda etype, time: {DATA_B: with_time(etype, time)},
            st.sampled_from(["claim-registered", "marker-set", "claim-cleared"]),
            edge_times,
        ),
        st.just({DATA_B: b" " * (MAX_EVENT_BYTES + 1)}),
    ),
).filter(_undecodable)


@pytest.fixture
def cc(redis_url, var_dir):
    settings_ = ContactCentreSettings(
        redis_url=redis_url,
        var_dir=var_dir,
        environment="test",
        customer_ref_key=TEST_KEY,
        block_ms=50,
    )
    app = create_app(settings_, FixedClock(datetime(2007, 6, 10, 9, tzinfo=UTC)))
    with TestClient(app) as client:
        yield client


def claims_applied(client: TestClient, ids: list[str]) -> int:
    with Session(client.app.state.runtime.engine) as s:
        return len(s.execute(select(CcClaim.claim_id).where(CcClaim.claim_id.in_(ids))).all())


@pytest.mark.integration
@settings(
    max_examples=examples(ci=4, local=12),
    deadline=None,
    derandomize=CI,
    # The service runs across examples on purpose: each batch has its own claim ids
    # and is checked by its own entry ids. A failure waits out timeouts: no shrinking.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(
    garbage=st.lists(garbage_entries, min_size=1, max_size=12),
    good=st.integers(1, 4),
    order=st.randoms(use_true_random=False),
)
@example(  # each of these once crashed the decoder and stalled the whole batch
    garbage=[
        ("idt:claim-cleared", {DATA_B: with_time("claim-cleared", "0001-01-01T00:30:00+01:00")}),
        ("idt:marker-set", {DATA_B: b"[" * 5000}),
        ("idt:claim-registered", {DATA_B: b'{"type": ' + b"1" * 5000 + b"}"}),
        ("idt:marker-set", {b"JT123456C": b"x"}),
    ],
    good=2,
    order=random.Random(0),
)
def test_garbage_through_a_live_consumer_is_dead_lettered_and_good_events_flow(
    cc, r, garbage, good, order
):
    batch = next(_batches)
    good_ids = [f"FZ-{batch}-{i}" for i in range(good)]
    items: list[tuple[str, dict[Any, Any], bool]] = [(s, f, False) for s, f in garbage]
    items += [
        (stream_for("claim-registered"), entry_fields(claim_registered(c)), True) for c in good_ids
    ]
    order.shuffle(items)
    pipe = r.pipeline(transaction=True)
    for stream, fields, _ in items:
        pipe.xadd(stream, fields)
    # Entry ids are per stream (one MULTI gives the same id on two streams).
    keys = [(s, i.decode()) for (s, _, _), i in zip(items, pipe.execute(), strict=True)]
    garbage_keys = {k for k, (_, _, ok) in zip(keys, items, strict=True) if not ok}

    def letters_of_batch() -> dict[tuple[str, str], dict[bytes, bytes]] | None:
        letters = {
            (f[b"source_stream"].decode(), f[b"entry_id"].decode()): f
            for _, f in r.xrange(DEAD_LETTERS)
        }
        mine = {k: f for k, f in letters.items() if k in set(keys)}
        return mine if set(mine) == garbage_keys else None

    letters = wait_for(letters_of_batch, timeout=15)
    wait_for(lambda: claims_applied(cc, good_ids) == good, timeout=15)
    for key in garbage_keys:
        letter = letters[key]
        assert letter[b"reason"].strip(), letter
        # Personal data does not go to the dead letters: neither field names nor
        # values nor the reason keep an NI number.
        for name, value in letter.items():
            for part in (name, value):
                text = part.decode("utf-8", "replace")
                assert not NINO_IN_TEXT.search(text), f"NI number in a dead letter: {letter}"
    for stream in {s for s, _ in keys}:
        wait_for(lambda s=stream: r.xpending(s, "contact_centre")["pending"] == 0)
