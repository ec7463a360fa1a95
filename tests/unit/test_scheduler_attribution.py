"""Stage attribution (spec §7) computed from runs of marker values agrees with the
rule read literally: the JOBCENTRE marker's value at the end of each day of the
window, one day at a time."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.scheduler.domain import (
    Attribution,
    ClaimHistory,
    Marker,
    Stage,
    Status,
    Window,
    attribute,
)

JOBCENTRES = frozenset({"JC1", "JC2"})
OPENS = date(2026, 3, 1)


def day_by_day(
    h: ClaimHistory, w: Window, jobcentres: frozenset[str], min_booking_lead_days: int
) -> Attribution:
    """The rule of docs/stage-attribution.md, evaluated for every day of the window."""
    elig = h.eligibility()
    confirmed, received = elig if elig else (w.opens, w.opens)
    bdc_days = max(0, (confirmed - received).days)
    in_jc: list[bool] = []
    day = w.opens
    while day <= w.closes:
        value = None
        for m in h.markers:
            if m.marker == "JOBCENTRE" and m.day <= day:
                value = m.value
        in_jc.append(value in jobcentres)
        day += timedelta(days=1)
    allocated_from: date | None = None
    for offset, ok in enumerate(in_jc):
        if not ok:
            allocated_from = None
        elif allocated_from is None:
            allocated_from = w.opens + timedelta(days=offset)
    usable_from = max(confirmed, w.opens)
    if (w.closes - usable_from).days + 1 < min_booking_lead_days:
        stage = Stage.BDC
    else:
        start = max(usable_from, allocated_from) if allocated_from else None
        cc_left = (w.closes - start).days + 1 if start else 0
        stage = Stage.CONTACT_CENTRE if cc_left < min_booking_lead_days else Stage.JOBCENTRE
    first = (usable_from - w.opens).days
    return Attribution(stage, in_jc.count(False), bdc_days, in_jc[first:].count(True))


markers = st.lists(
    st.tuples(
        st.integers(-5, 20),  # day, relative to the window's opening (often the same)
        st.sampled_from(["JOBCENTRE", "PRIMARY_BENEFIT"]),
        st.sampled_from(["JC1", "JC2", "CC1", "BDC1", "NOWHERE"]),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@example(  # two changes on one day inside the window: the later one holds
    markers=[(3, "JOBCENTRE", "CC1"), (3, "JOBCENTRE", "JC1")],
    length=10,
    confirmed=0,
    received_before=0,
    lead=5,
)
@given(
    markers=markers,
    length=st.integers(-2, 25),
    confirmed=st.integers(-30, 50),
    received_before=st.integers(0, 20),
    lead=st.integers(0, 10),
)
def test_runs_agree_with_the_rule_day_by_day(markers, length, confirmed, received_before, lead):
    ms = tuple(
        sorted(
            (
                Marker(OPENS + timedelta(days=d), (f"{d:04d}-{i:02d}", f"e{i}"), name, value)
                for i, (d, name, value) in enumerate(markers)
            ),
            key=lambda m: (m.day, m.order),
        )
    )
    cleared = OPENS + timedelta(days=confirmed)
    h = ClaimHistory(
        claim_id="c1",
        benefit="IB",
        claim_start_date=OPENS - timedelta(days=56),
        markers=ms,
        clearances=(
            (cleared, ("k", "e-clear"), "ELIGIBLE", cleared - timedelta(days=received_before)),
        ),
    )
    w = Window(
        claim_id="c1",
        intervention="IB_INITIAL_WFI",
        seq=1,
        basis="policy",
        opens=OPENS,
        closes=OPENS + timedelta(days=length),
        status=Status.MISSED,
        outcome_date=OPENS + timedelta(days=length),
        jobcentre_id=None,
    )
    assert attribute(h, w, JOBCENTRES, min_booking_lead_days=lead) == day_by_day(
        h, w, JOBCENTRES, lead
    )
