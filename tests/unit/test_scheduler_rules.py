"""The IDT rules (spec §3-§4), row by row."""

from __future__ import annotations

from datetime import date

import pytest

from services.scheduler.domain import (
    LMI,
    ClaimHistory,
    RulesConfig,
    Stage,
    Status,
    Window,
    attribute,
    decide,
    evaluate,
)
from tests.claims import Claim, d


def windows(claim: Claim, as_of: str | None, **cfg) -> list[Window]:
    h = ClaimHistory.from_events(claim.claim_id, claim.events)
    return evaluate(h, d(as_of) if as_of else None, RulesConfig(**cfg))


def one(claim: Claim, as_of: str | None, intervention: str, basis: str, seq: int = 1) -> Window:
    (w,) = [
        w
        for w in windows(claim, as_of)
        if w.intervention == intervention and w.basis == basis and w.seq == seq
    ]
    return w


# ------------------------------------------------------------------ existence


def test_no_windows_before_eligibility_or_when_disallowed():
    c = Claim(benefit="IB", start="2007-01-01")
    assert windows(c, "2007-06-01") == []
    c.cleared("2007-01-20", "DISALLOWED")
    assert windows(c, "2007-06-01") == []
    c.cleared("2007-02-01", "ELIGIBLE")  # the latest clearance decides
    assert {w.basis for w in windows(c, "2007-06-01")} == {"policy", "measured"}


# ------------------------------------------------------------------ IB


def test_ib_policy_window_is_claim_days_57_to_91():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    w = one(c, "2007-01-21", "IB_INITIAL_WFI", "policy")
    assert (w.opens, w.closes) == (d("2007-02-26"), d("2007-04-01"))  # day 57, day 91
    assert w.status is Status.UPCOMING
    assert one(c, "2007-02-26", "IB_INITIAL_WFI", "policy").status is Status.OPEN


@pytest.mark.parametrize(
    ("day", "status"),
    [
        ("2007-02-25", Status.MISSED),  # day 56: before the window, does not count
        ("2007-02-26", Status.MET),  # day 57
        ("2007-04-01", Status.MET),  # day 91
        ("2007-04-02", Status.MISSED),  # day 92: late
    ],
)
def test_ib_interview_counts_only_inside_the_window(day, status):
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20").conducted(day)
    w = one(c, "2007-05-01", "IB_INITIAL_WFI", "policy")
    assert w.status is status
    if status is Status.MET:
        assert w.outcome_date == d(day)
    else:
        assert w.outcome_date == d("2007-04-01")  # the close date


def test_an_early_interview_does_not_close_the_window_and_is_reported():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20").conducted("2007-02-20")
    w = one(c, "2007-03-01", "IB_INITIAL_WFI", "policy")
    assert w.status is Status.OPEN and w.early_interviews == (d("2007-02-20"),)
    c.conducted("2007-03-05")  # repeated inside the window
    assert one(c, "2007-03-06", "IB_INITIAL_WFI", "policy").status is Status.MET


def test_a_late_interview_is_recorded_and_the_outcome_stays_missed():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20").conducted("2007-04-10")
    w = one(c, "2007-05-01", "IB_INITIAL_WFI", "policy")
    assert (w.status, w.late_interview) == (Status.MISSED, d("2007-04-10"))


def test_missed_only_once_business_time_passes_the_close_date():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    assert one(c, "2007-04-01", "IB_INITIAL_WFI", "policy").status is Status.OPEN
    assert one(c, "2007-04-02", "IB_INITIAL_WFI", "policy").status is Status.MISSED
    assert one(c, None, "IB_INITIAL_WFI", "policy").status is Status.UPCOMING


def test_eligibility_confirmed_after_the_close_date_is_missed_at_the_close_date():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-04-20")
    w = one(c, "2007-04-20", "IB_INITIAL_WFI", "policy")
    assert (w.status, w.outcome_date) == (Status.MISSED, d("2007-04-01"))


@pytest.mark.parametrize(
    ("facts", "status", "day"),
    [
        ([("waived", "2007-03-01")], Status.WAIVED, "2007-03-01"),
        ([("waived", "2007-02-01")], Status.WAIVED, "2007-02-01"),  # before opening counts
        ([("deferred", "2007-03-01")], Status.DEFERRED, "2007-03-01"),
        ([("closed", "2007-03-01")], Status.CANCELLED, "2007-03-01"),
        ([("waived", "2007-04-02")], Status.MISSED, "2007-04-01"),  # after close: too late
        ([("conducted", "2007-03-10"), ("waived", "2007-03-01")], Status.WAIVED, "2007-03-01"),
        ([("conducted", "2007-03-01"), ("waived", "2007-03-10")], Status.MET, "2007-03-01"),
        # One date: MET > WAIVED > DEFERRED > CANCELLED.
        ([("waived", "2007-03-01"), ("conducted", "2007-03-01")], Status.MET, "2007-03-01"),
        ([("deferred", "2007-03-01"), ("waived", "2007-03-01")], Status.WAIVED, "2007-03-01"),
        ([("closed", "2007-03-01"), ("deferred", "2007-03-01")], Status.DEFERRED, "2007-03-01"),
        ([("closed", "2007-03-01"), ("conducted", "2007-03-01")], Status.MET, "2007-03-01"),
        ([("closed", "2007-02-27"), ("conducted", "2007-03-01")], Status.CANCELLED, "2007-02-27"),
        ([("closed", "2007-04-02")], Status.MISSED, "2007-04-01"),  # closed after the close
    ],
)
def test_outcome_precedence(facts, status, day):
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    for kind, when in facts:
        getattr(c, kind)(when)
    w = one(c, "2007-06-01", "IB_INITIAL_WFI", "policy")
    assert (w.status, w.outcome_date) == (status, d(day))


def test_other_interventions_do_not_decide_the_window():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.conducted("2007-03-01", iv="JSA_13_WEEK").waived("2007-03-01", iv="LP_WFI_REVIEW")
    assert one(c, "2007-06-01", "IB_INITIAL_WFI", "policy").status is Status.MISSED


# ------------------------------------------------------------------ IB measurement clock


def test_setting_markers_on_the_registration_day_is_not_a_reset():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-01-01", hour=15)
    w = one(c, "2007-01-21", "IB_INITIAL_WFI", "measured")
    assert (w.opens, w.clock_start) == (d("2007-02-26"), d("2007-01-01"))


def test_a_marker_reset_restarts_the_measured_window_only():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-02-10")  # a reset on day 41
    m = one(c, "2007-02-11", "IB_INITIAL_WFI", "measured")
    p = one(c, "2007-02-11", "IB_INITIAL_WFI", "policy")
    assert (m.clock_start, m.opens, m.closes) == (d("2007-02-10"), d("2007-04-07"), d("2007-05-11"))
    assert (p.opens, p.closes) == (d("2007-02-26"), d("2007-04-01"))
    # An interview on policy day 60 is MET on policy but early on measured.
    c.conducted("2007-03-01")
    assert one(c, "2007-06-01", "IB_INITIAL_WFI", "policy").status is Status.MET
    m = one(c, "2007-06-01", "IB_INITIAL_WFI", "measured")
    assert m.status is Status.MISSED and m.early_interviews == (d("2007-03-01"),)


def test_either_marker_resets_and_setting_the_same_value_does_not():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0101", "2007-02-05")  # same value: not a reset
    assert one(c, "2007-02-06", "IB_INITIAL_WFI", "measured").clock_start == d("2007-01-01")
    c.marker("PRIMARY_BENEFIT", "OTHER", "2007-02-07")
    assert one(c, "2007-02-08", "IB_INITIAL_WFI", "measured").clock_start == d("2007-02-07")


def test_a_reset_after_the_measured_outcome_is_final_changes_nothing():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20").conducted("2007-03-01")
    c.marker("JOBCENTRE", "JC0102", "2007-03-05")  # after the MET interview
    m = one(c, "2007-06-01", "IB_INITIAL_WFI", "measured")
    assert (m.status, m.clock_start) == (Status.MET, d("2007-01-01"))


def test_a_reset_after_the_close_date_changes_nothing():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-04-05")  # measured window closed on 1 April
    m = one(c, "2007-06-01", "IB_INITIAL_WFI", "measured")
    assert (m.status, m.outcome_date, m.clock_start) == (
        Status.MISSED,
        d("2007-04-01"),
        d("2007-01-01"),
    )


def test_a_reset_on_the_day_of_the_deciding_event_changes_nothing():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20").waived("2007-02-10")
    c.marker("JOBCENTRE", "JC0102", "2007-02-10")
    assert one(c, "2007-06-01", "IB_INITIAL_WFI", "measured").clock_start == d("2007-01-01")


def test_successive_resets_move_the_clock_each_time_until_final():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-02-01").marker("JOBCENTRE", "JC0101", "2007-03-01")
    m = one(c, "2007-03-02", "IB_INITIAL_WFI", "measured")
    assert m.clock_start == d("2007-03-01")
    c.conducted("2007-04-30")  # day 61 of the clock started 1 March
    assert one(c, "2007-06-01", "IB_INITIAL_WFI", "measured").status is Status.MET


# ------------------------------------------------------------------ LP


def lp(start: str) -> Claim:
    return Claim(benefit="IS_LP", start=start).cleared(start)


def test_lp_first_window_policy_and_measured():
    c = lp("2007-01-15")
    p = one(c, "2007-07-16", "LP_WFI_REVIEW", "policy")
    m = one(c, "2007-07-16", "LP_WFI_REVIEW", "measured")
    assert (p.opens, p.closes) == (d("2007-07-15"), d("2007-10-15"))
    assert (m.opens, m.closes) == (d("2007-07-15"), d("2007-09-30"))


@pytest.mark.parametrize(
    ("start", "due", "policy_close", "measured_close"),
    [
        ("2007-08-31", "2008-02-29", "2008-05-29", "2008-04-30"),  # leap year clamp
        ("2006-08-31", "2007-02-28", "2007-05-28", "2007-04-30"),
        ("2007-07-31", "2008-01-31", "2008-04-30", "2008-03-31"),  # month end: ~9 weeks measured
        ("2007-05-31", "2007-11-30", "2008-02-29", "2008-01-31"),  # into a leap February
        ("2007-06-30", "2007-12-30", "2008-03-30", "2008-02-29"),
    ],
)
def test_lp_due_dates_at_month_ends_and_in_leap_years(start, due, policy_close, measured_close):
    c = lp(start)
    p = one(c, due, "LP_WFI_REVIEW", "policy")
    m = one(c, due, "LP_WFI_REVIEW", "measured")
    assert (p.opens, p.closes) == (d(due), d(policy_close))
    assert (m.opens, m.closes) == (d(due), d(measured_close))


def test_lp_chain_after_met_runs_from_the_conducted_date():
    c = lp("2007-01-15").conducted("2007-08-01", iv="LP_WFI_REVIEW")
    ws = [w for w in windows(c, "2008-02-02") if w.basis == "policy"]
    assert [(w.seq, w.status) for w in ws] == [(1, Status.MET), (2, Status.OPEN)]
    assert ws[1].opens == d("2008-02-01")


def test_lp_chain_after_missed_runs_from_the_previous_due_date():
    c = lp("2007-01-15")
    ws = [w for w in windows(c, "2007-10-16") if w.basis == "policy"]
    assert [(w.seq, w.status, w.opens) for w in ws] == [
        (1, Status.MISSED, d("2007-07-15")),
        (2, Status.UPCOMING, d("2008-01-15")),
    ]
    # Measured: closes at the end of September, so its chain is ahead.
    ms = [w for w in windows(c, "2007-10-16") if w.basis == "measured"]
    assert [(w.seq, w.status) for w in ms] == [(1, Status.MISSED), (2, Status.UPCOMING)]


def test_lp_waiver_or_deferral_moves_the_chain_by_the_due_date():
    c = lp("2007-01-15").waived("2007-07-20", iv="LP_WFI_REVIEW")
    ws = [w for w in windows(c, "2007-07-21") if w.basis == "policy"]
    assert [(w.status, w.opens) for w in ws] == [
        (Status.WAIVED, d("2007-07-15")),
        (Status.UPCOMING, d("2008-01-15")),
    ]


def test_lp_facts_on_or_before_the_previous_outcome_belong_to_it():
    # Two interviews: the first decides window 1; the second (same day) must not
    # also decide window 2; one after does, if inside window 2.
    c = lp("2007-01-15").conducted("2007-08-01", iv="LP_WFI_REVIEW")
    c.waived("2007-08-01", iv="LP_WFI_REVIEW")  # same date as window 1's outcome
    ws = [w for w in windows(c, "2008-02-02") if w.basis == "policy"]
    assert ws[1].status is Status.OPEN
    c.waived("2007-09-01", iv="LP_WFI_REVIEW")  # after window 1: waives window 2
    ws = [w for w in windows(c, "2008-02-02") if w.basis == "policy"]
    assert (ws[1].status, ws[1].outcome_date) == (Status.WAIVED, d("2007-09-01"))


def test_lp_cancelled_window_ends_the_chain():
    c = lp("2007-01-15").closed("2007-08-01")
    ws = [w for w in windows(c, "2009-01-01") if w.basis == "policy"]
    assert [(w.seq, w.status) for w in ws] == [(1, Status.CANCELLED)]


def test_lp_bases_keep_their_own_chains():
    # Conducted 5 Oct 2007: inside the policy window (to 15 Oct), after the
    # measured close (30 Sep): policy MET -> next due 5 Apr 2008; measured
    # MISSED -> next due 15 Jan 2008.
    c = lp("2007-01-15").conducted("2007-10-05", iv="LP_WFI_REVIEW")
    p = [w for w in windows(c, "2008-01-20") if w.basis == "policy"]
    m = [w for w in windows(c, "2008-01-20") if w.basis == "measured"]
    assert [(w.status, w.opens) for w in p] == [
        (Status.MET, d("2007-07-15")),
        (Status.UPCOMING, d("2008-04-05")),
    ]
    assert [(w.status, w.opens) for w in m] == [
        (Status.MISSED, d("2007-07-15")),
        (Status.OPEN, d("2008-01-15")),
    ]


def test_lp_review_interval_is_configuration():
    c = lp("2007-01-15")
    h = ClaimHistory.from_events(c.claim_id, c.events)
    (p, _m) = evaluate(h, d("2007-01-16"), RulesConfig(lp_review_months=3))
    assert p.opens == d("2007-04-15")


# ------------------------------------------------------------------ JSA


def test_jsa_13_and_26_week_windows():
    c = Claim(benefit="JSA", start="2007-01-01").cleared("2007-01-10")
    ws = {(w.intervention, w.basis): w for w in windows(c, "2007-01-11")}
    w13, w26 = ws[("JSA_13_WEEK", "policy")], ws[("JSA_26_WEEK", "policy")]
    assert (w13.opens, w13.closes) == (d("2007-04-02"), d("2007-05-14"))
    assert (w26.opens, w26.closes) == (d("2007-07-02"), d("2007-08-13"))
    m13 = ws[("JSA_13_WEEK", "measured")]
    assert (m13.opens, m13.closes) == (w13.opens, w13.closes)


def test_jsa_outcomes_per_intervention():
    c = Claim(benefit="JSA", start="2007-01-01").cleared("2007-01-10")
    c.conducted("2007-05-14", iv="JSA_13_WEEK").waived("2007-07-01", iv="JSA_26_WEEK")
    ws = {w.intervention: w for w in windows(c, "2007-12-01") if w.basis == "policy"}
    assert ws["JSA_13_WEEK"].status is Status.MET
    assert ws["JSA_26_WEEK"].status is Status.WAIVED


# ------------------------------------------------------------------ LMI


def test_lmi_deadline_is_ten_working_days_across_bank_holidays():
    # Raised Thu 20 Dec 2007: 25, 26 Dec and 1 Jan are bank holidays.
    c = Claim(benefit="JSA", start="2007-10-01").lmi("2007-12-20")
    (w,) = [w for w in windows(c, "2007-12-21") if w.basis == "policy"]
    assert w.intervention == LMI and w.element == "LMI"
    assert (w.opens, w.closes) == (d("2007-12-20"), d("2008-01-08"))
    assert w.window_id == "C1:LMI_FOLLOW_UP:D1"


def test_lmi_cases_exist_without_eligibility_and_ignore_waivers():
    c = Claim(benefit="JSA", start="2007-10-01").lmi("2007-11-01")
    c.waived("2007-11-02", iv="JSA_13_WEEK")
    (w,) = [w for w in windows(c, "2007-12-01") if w.basis == "measured"]
    assert (w.status, w.outcome_date) == (Status.MISSED, d("2007-11-15"))


@pytest.mark.parametrize(
    ("done", "status"),
    [("2007-11-15", Status.MET), ("2007-11-16", Status.MISSED), (None, Status.MISSED)],
)
def test_lmi_follow_up_by_the_deadline(done, status):
    c = Claim(benefit="JSA", start="2007-10-01").lmi("2007-11-01", doubt="D9")
    c.lmi("2007-11-05", doubt="D10")
    if done:
        c.lmi_done(done, doubt="D9")
    ws = {w.ref: w for w in windows(c, "2007-12-01") if w.basis == "policy"}
    assert ws["D9"].status is status
    assert ws["D10"].status is Status.MISSED


def test_lmi_deadline_is_configurable_and_closure_cancels():
    c = Claim(benefit="JSA", start="2007-10-01").lmi("2007-11-01").closed("2007-11-02")
    h = ClaimHistory.from_events(c.claim_id, c.events)
    (w, _) = evaluate(h, d("2007-12-01"), RulesConfig(lmi_deadline_working_days=5))
    assert (w.closes, w.status) == (d("2007-11-08"), Status.CANCELLED)


# ------------------------------------------------------------------ attribution


def test_jobcentre_in_the_marker_at_the_outcome_date():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-03-10").conducted("2007-03-05")
    w = one(c, "2007-06-01", "IB_INITIAL_WFI", "policy")
    assert w.jobcentre_id == "JC0101"
    c2 = Claim(claim_id="C2", benefit="IB", start="2007-01-01", jobcentre="CC01")
    c2.cleared("2007-01-20")
    assert one(c2, "2007-06-01", "IB_INITIAL_WFI", "policy").jobcentre_id == "CC01"


JCS = frozenset({"JC0101", "JC0102"})


def test_stage_bdc_when_eligibility_came_too_late_to_book():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-03-30", received="2007-01-05")
    h = ClaimHistory.from_events("C1", c.events)
    w = one(c, "2007-06-01", "IB_INITIAL_WFI", "policy")
    a = attribute(h, w, JCS, min_booking_lead_days=5)
    assert a.stage is Stage.BDC and a.bdc_days == (d("2007-03-30") - d("2007-01-05")).days


def test_stage_contact_centre_when_the_marker_named_no_jobcentre():
    c = Claim(benefit="IB", start="2007-01-01", jobcentre="CC01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0101", "2007-03-31")  # fixed 3 days before the close
    h = ClaimHistory.from_events("C1", c.events)
    w = one(c, "2007-06-01", "IB_INITIAL_WFI", "policy")
    a = attribute(h, w, JCS, min_booking_lead_days=5)
    assert a.stage is Stage.CONTACT_CENTRE
    assert a.contact_centre_days == (d("2007-03-31") - d("2007-02-26")).days


def test_stage_jobcentre_when_it_had_the_time():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    h = ClaimHistory.from_events("C1", c.events)
    w = one(c, "2007-06-01", "IB_INITIAL_WFI", "policy")
    a = attribute(h, w, JCS, min_booking_lead_days=5)
    assert (a.stage, a.contact_centre_days, a.jobcentre_days) == (Stage.JOBCENTRE, 0, 35)


def test_decide_is_total():
    r = decide(date(2007, 1, 10), date(2007, 1, 20), conducted=[], as_of=None)
    assert r.status is Status.UPCOMING and r.day is None
