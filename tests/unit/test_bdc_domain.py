"""The BDC's pure rules: working days across bank holidays, AACT, stages, checks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idt_contract.events import ClearanceOutcome, OfficeKind
from services.bdc import domain
from services.bdc.domain import (
    AactRow,
    Clearance,
    ClearedClaim,
    Evidence,
    EvidenceKind,
    Refused,
    Stage,
    aact_rows,
    derive_stage,
    latest_clearance,
    outstanding_evidence,
    working_days_elapsed,
)

D = date.fromisoformat


# ---------------------------------------------------------------- working days


@pytest.mark.parametrize(
    ("received", "cleared", "days", "why"),
    [
        # Fri -> Tue over the Summer bank holiday (Mon 27 Aug 2007): Sat, Sun and
        # the holiday do not count; only Tue 28 does.
        ("2007-08-24", "2007-08-28", 1, "summer bank holiday"),
        # Cleared on the bank holiday itself: nothing working in (Fri 24, Mon 27].
        ("2007-08-24", "2007-08-27", 0, "cleared on a bank holiday"),
        # Received on a Saturday: Sun, Mon (holiday), Tue -> 1.
        ("2007-08-25", "2007-08-28", 1, "received at a weekend"),
        # Christmas 2007 (Tue 25, Wed 26) and New Year 2008 (Tue 1 Jan): working days
        # are Mon 24, Thu 27, Fri 28, Mon 31 Dec and Wed 2 Jan.
        ("2007-12-21", "2008-01-02", 5, "Christmas and New Year"),
        # Christmas 2010 fell at a weekend: substitute days Mon 27 and Tue 28 Dec.
        ("2010-12-24", "2010-12-29", 1, "Christmas substitute days"),
        # New Year 2011 was a Saturday: substitute day Mon 3 Jan.
        ("2010-12-31", "2011-01-04", 1, "New Year substitute day"),
        # Easter 2007: Good Friday 6 Apr and Easter Monday 9 Apr.
        ("2007-04-05", "2007-04-10", 1, "Easter"),
        # No holiday: Thu 2, Fri 3, then three whole weeks minus the last four days
        # (6-10, 13-17 Aug and Mon 20) = 2 + 5 + 5 + 1.
        ("2007-08-01", "2007-08-20", 13, "plain weeks"),
        ("2007-08-28", "2007-08-28", 0, "same-day clearance"),
    ],
)
def test_working_days_elapsed_when_cleared(received, cleared, days, why):
    # as_of is ignored once the claim is cleared.
    assert working_days_elapsed(D(received), D(cleared), D("2030-01-01")) == days, why


def test_working_days_elapsed_uses_as_of_until_cleared():
    received = D("2007-08-24")
    assert working_days_elapsed(received, None, D("2007-08-24")) == 0
    assert working_days_elapsed(received, None, D("2007-08-27")) == 0
    assert working_days_elapsed(received, None, D("2007-08-28")) == 1
    assert working_days_elapsed(received, None, D("2007-08-31")) == 4
    # Asking about a day before receipt gives 0, never a negative count.
    assert working_days_elapsed(received, None, D("2007-08-01")) == 0


# ---------------------------------------------------------------- AACT


def cc(claim: str, bdc: str, received: str, cleared: str) -> ClearedClaim:
    return ClearedClaim(claim, bdc, D(received), D(cleared))


AUG = (D("2007-08-01"), D("2007-08-31"))


def test_aact_across_the_summer_bank_holiday():
    rows = aact_rows([cc("C1", "BDC01", "2007-08-24", "2007-08-28")], *AUG)
    assert rows == [AactRow("BDC01", 1, 1.0)]


def test_aact_is_the_mean_per_bdc_sorted_by_bdc():
    rows = aact_rows(
        [
            cc("C1", "BDC02", "2007-08-01", "2007-08-20"),  # 13
            cc("C2", "BDC01", "2007-08-24", "2007-08-28"),  # 1
            cc("C3", "BDC01", "2007-08-20", "2007-08-24"),  # 4
            cc("C4", "BDC02", "2007-08-28", "2007-08-28"),  # 0, same day
        ],
        *AUG,
    )
    assert rows == [AactRow("BDC01", 2, 2.5), AactRow("BDC02", 2, 6.5)]


def test_aact_rounds_to_two_decimals():
    rows = aact_rows(
        [
            cc("C1", "BDC01", "2007-08-06", "2007-08-07"),  # 1
            cc("C2", "BDC01", "2007-08-06", "2007-08-07"),  # 1
            cc("C3", "BDC01", "2007-08-06", "2007-08-08"),  # 2
        ],
        *AUG,
    )
    assert rows == [AactRow("BDC01", 3, 1.33)]
    rows = aact_rows(
        [
            cc("C1", "BDC01", "2007-08-06", "2007-08-08"),  # 2
            cc("C2", "BDC01", "2007-08-06", "2007-08-08"),  # 2
            cc("C3", "BDC01", "2007-08-06", "2007-08-07"),  # 1
        ],
        *AUG,
    )
    assert rows == [AactRow("BDC01", 3, 1.67)]


def test_aact_counts_claims_in_the_month_they_were_cleared():
    claims = [
        cc("C1", "BDC01", "2007-08-24", "2007-08-31"),  # Aug: Tue 28 .. Fri 31 = 4
        cc("C2", "BDC01", "2007-08-24", "2007-09-03"),  # Sep: 4 + Mon 3 Sep = 5
        cc("C3", "BDC01", "2007-07-30", "2007-07-31"),  # July
    ]
    assert aact_rows(claims, *AUG) == [AactRow("BDC01", 1, 4.0)]
    assert aact_rows(claims, D("2007-09-01"), D("2007-09-30")) == [AactRow("BDC01", 1, 5.0)]
    assert aact_rows(claims, D("2007-10-01"), D("2007-10-31")) == []


def test_aact_across_christmas_and_new_year_counts_in_january():
    claims = [cc("C1", "BDC01", "2007-12-21", "2008-01-02")]
    assert aact_rows(claims, D("2007-12-01"), D("2007-12-31")) == []
    assert aact_rows(claims, D("2008-01-01"), D("2008-01-31")) == [AactRow("BDC01", 1, 5.0)]


def test_aact_refuses_a_claim_passed_twice():
    with pytest.raises(ValueError, match="one clearance per claim"):
        aact_rows(
            [
                cc("C1", "BDC01", "2007-08-24", "2007-08-28"),
                cc("C1", "BDC01", "2007-08-24", "2007-08-29"),
            ],
            *AUG,
        )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["BDC01", "BDC02", "BDC03"]),
            st.integers(min_value=0, max_value=90),
            st.integers(min_value=0, max_value=40),
        ),
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_aact_does_not_depend_on_order_and_is_the_mean(items, rnd):
    start = D("2007-06-01")
    claims = [
        ClearedClaim(f"C{i}", bdc, start + timedelta(days=r), start + timedelta(days=r + span))
        for i, (bdc, r, span) in enumerate(items)
    ]
    first, last = D("2007-08-01"), D("2007-08-31")
    rows = aact_rows(claims, first, last)
    shuffled = list(claims)
    rnd.shuffle(shuffled)
    assert aact_rows(shuffled, first, last) == rows
    for row in rows:
        mine = [
            working_days_elapsed(c.received_date, c.cleared_date, last)
            for c in claims
            if c.bdc_id == row.bdc_id and first <= c.cleared_date <= last
        ]
        assert row.claims == len(mine)
        assert row.aact == round(sum(mine) / len(mine), 2)
    assert [r.bdc_id for r in rows] == sorted(r.bdc_id for r in rows)


# ---------------------------------------------------------------- stages and evidence


@pytest.mark.parametrize(
    ("registered", "received", "outstanding", "clearance", "stage"),
    [
        (False, False, [], None, None),
        (True, False, [], None, Stage.REGISTERED),
        (True, True, [], None, Stage.RECEIVED),
        (False, True, [], None, Stage.RECEIVED),
        (True, True, [EvidenceKind.SSP1], None, Stage.AWAITING_EVIDENCE),
        (True, True, [], ClearanceOutcome.ELIGIBLE, Stage.CLEARED_ELIGIBLE),
        (True, True, [EvidenceKind.SSP1], ClearanceOutcome.DISALLOWED, Stage.CLEARED_DISALLOWED),
        # Cleared by another system: never registered or received here.
        (False, False, [], ClearanceOutcome.ELIGIBLE, Stage.CLEARED_ELIGIBLE),
        (False, False, [], ClearanceOutcome.DISALLOWED, Stage.CLEARED_DISALLOWED),
    ],
)
def test_derive_stage(registered, received, outstanding, clearance, stage):
    assert (
        derive_stage(
            registered=registered, received=received, outstanding=outstanding, clearance=clearance
        )
        is stage
    )


def test_outstanding_evidence_in_request_order_and_reopened_kinds():
    ev = [
        Evidence(EvidenceKind.MEDICAL_EVIDENCE, D("2007-08-24"), D("2007-08-28")),
        Evidence(EvidenceKind.SSP1, D("2007-08-24"), None),
        Evidence(EvidenceKind.NI_ACCOUNT_PROBLEM, D("2007-08-25"), None),
        # Asked again after the first answer: outstanding once more.
        Evidence(EvidenceKind.MEDICAL_EVIDENCE, D("2007-08-29"), None),
    ]
    assert outstanding_evidence(ev) == [
        EvidenceKind.SSP1,
        EvidenceKind.NI_ACCOUNT_PROBLEM,
        EvidenceKind.MEDICAL_EVIDENCE,
    ]
    assert outstanding_evidence(ev[:1]) == []
    assert outstanding_evidence([]) == []


def test_eligible_refused_while_evidence_outstanding_names_the_kinds():
    with pytest.raises(Refused, match=r"outstanding: SSP1, EMPLOYMENT_DETAILS"):
        domain.check_eligible_allowed(
            ClearanceOutcome.ELIGIBLE, [EvidenceKind.SSP1, EvidenceKind.EMPLOYMENT_DETAILS]
        )
    domain.check_eligible_allowed(ClearanceOutcome.DISALLOWED, [EvidenceKind.SSP1])
    domain.check_eligible_allowed(ClearanceOutcome.ELIGIBLE, [])


def test_clearance_cannot_precede_receipt():
    domain.check_clearance_dates(D("2007-08-24"), D("2007-08-24"))
    with pytest.raises(Refused, match="2007-08-23 is before the claim's received_date 2007-08-24"):
        domain.check_clearance_dates(D("2007-08-24"), D("2007-08-23"))


def test_check_bdc():
    offices = {
        "BDC01": (OfficeKind.BDC, "Wigan Benefit Delivery Centre"),
        "JC0101": (OfficeKind.JOBCENTRE, "Bolton Jobcentre"),
    }
    domain.check_bdc("BDC01", offices)
    with pytest.raises(Refused, match="'BDC99' names no registered office"):
        domain.check_bdc("BDC99", offices)
    with pytest.raises(Refused, match=r"'JC0101' is a JOBCENTRE \(Bolton Jobcentre\), not a"):
        domain.check_bdc("JC0101", offices)


# ---------------------------------------------------------------- clearance in force


def clr(time_key: str, event_id: str, outcome=ClearanceOutcome.ELIGIBLE) -> Clearance:
    return Clearance("BDC01", outcome, D("2007-08-24"), D(time_key[:10]), time_key, event_id)


def test_latest_clearance_in_event_time_with_id_tie_break():
    early = clr("2007-08-28T10:00:00.000000Z", "b")
    late = clr("2007-09-03T10:00:00.000000Z", "a", ClearanceOutcome.DISALLOWED)
    same_time_higher_id = clr("2007-08-28T10:00:00.000000Z", "c")
    assert latest_clearance(None, None) is None
    assert latest_clearance(early, None) is early
    assert latest_clearance(early, late) is late
    assert latest_clearance(late, early) is late
    assert latest_clearance(early, same_time_higher_id) is same_time_higher_id
    assert latest_clearance(same_time_higher_id, early) is same_time_higher_id
    assert latest_clearance(early, early) is early


def test_commands_cannot_happen_in_the_future():
    now = datetime(2007, 9, 3, 9, tzinfo=UTC)
    skew = timedelta(minutes=5)
    domain.check_not_future("occurred_at", now + skew, now, skew)
    domain.check_not_future("occurred_at", datetime(2007, 8, 1, tzinfo=UTC), now, skew)
    with pytest.raises(Refused, match=r"occurred_at 2007-09-03T09:05:01\+00:00 is in the future"):
        domain.check_not_future("occurred_at", now + skew + timedelta(seconds=1), now, skew)
