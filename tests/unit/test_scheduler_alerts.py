"""Which alerts a claim calls for (services/scheduler/alerts.py), case by case."""

from __future__ import annotations

from collections import Counter

from services.scheduler.alerts import AlertConfig, alerts_for, next_check, previous_working_day
from services.scheduler.domain import ClaimHistory, Stage, attribute, evaluate
from tests.claims import Claim, d

REGISTRY = {"CC01": "CONTACT_CENTRE", "BDC01": "BDC", "JC0101": "JOBCENTRE", "JC0102": "JOBCENTRE"}


def alerts(claim: Claim, as_of: str, registry=REGISTRY, **cfg):
    h = ClaimHistory.from_events(claim.claim_id, claim.events)
    ws = evaluate(h, d(as_of))
    return alerts_for(h, ws, d(as_of), registry, AlertConfig(**cfg))


def kinds(found) -> Counter:
    return Counter(a.kind for a in found)


def test_window_opened_once_eligibility_is_confirmed_with_both_bases():
    c = Claim(benefit="IB", start="2007-01-01")
    assert alerts(c, "2007-01-10") == []
    c.cleared("2007-01-20")
    (a,) = alerts(c, "2007-01-21")
    assert (a.kind, a.office_id, a.bases_conflict) == ("WINDOW_OPENED", "JC0101", False)
    assert a.opens == {"policy": d("2007-02-26"), "measured": d("2007-02-26")}


def test_closing_period_is_configuration():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")  # closes 1 April
    assert kinds(alerts(c, "2007-03-25"))["WINDOW_CLOSING"] == 1  # default 7 days
    assert kinds(alerts(c, "2007-03-24"))["WINDOW_CLOSING"] == 0
    assert kinds(alerts(c, "2007-03-28", closing_days=3))["WINDOW_CLOSING"] == 0
    assert kinds(alerts(c, "2007-03-29", closing_days=3))["WINDOW_CLOSING"] == 1
    c.conducted("2007-03-20")  # something conducted: no closing alert
    assert kinds(alerts(c, "2007-03-29", closing_days=3))["WINDOW_CLOSING"] == 0


def test_a_window_moved_by_a_reset_gets_its_own_closing_and_missed_alerts():
    # A reset on 20 March (day 79) moves the measured window to 15 May..18 Jun; the
    # policy window (26 Feb..1 Apr) is missed first, the measured one later.
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.marker("JOBCENTRE", "JC0102", "2007-03-20")
    missed_policy = alerts(c, "2007-04-02")
    assert kinds(missed_policy)["WINDOW_MISSED"] == 1
    assert "missed on the policy basis" in next(
        a.detail for a in missed_policy if a.kind == "WINDOW_MISSED"
    )
    closing = [a for a in alerts(c, "2007-06-12") if a.kind == "WINDOW_CLOSING"]
    assert len(closing) == 1 and closing[0].bases_conflict is True
    missed = [a for a in alerts(c, "2007-06-19") if a.kind == "WINDOW_MISSED"]
    assert {a.detail.split(";")[0] for a in missed} == {
        "missed on the policy basis",
        "missed on the measured basis",
    }
    assert len({a.key for a in missed}) == 2


def test_the_jobcentre_hears_of_new_dates_when_a_reset_moves_the_window():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    first = {a.key for a in alerts(c, "2007-01-21") if a.kind == "WINDOW_OPENED"}
    c.marker("PRIMARY_BENEFIT", "OTHER", "2007-02-01")
    second = [a for a in alerts(c, "2007-02-02") if a.kind == "WINDOW_OPENED"]
    assert len(second) == 1 and second[0].key not in first and second[0].bases_conflict


def test_bookings_before_the_window_and_pre_calls_across_a_bank_holiday():
    # Window 27 Jul..30 Aug 2007. Slot Tue 28 Aug: Mon 27 Aug is a bank holiday,
    # so the pre-call is due on Fri 24 Aug.
    c = Claim(benefit="IB", start="2007-06-01").cleared("2007-06-10")
    c.booked("2007-06-15", slot="2007-07-20", jc="JC0102")
    c.booked("2007-08-01", slot="2007-08-28")
    outside = [a for a in alerts(c, "2007-06-16") if a.kind == "BOOKING_OUTSIDE_WINDOW"]
    assert [(a.office_id, a.slot_date) for a in outside] == [("JC0102", d("2007-07-20"))]
    assert "policy and measured windows" in outside[0].detail
    assert previous_working_day(d("2007-08-28")) == d("2007-08-24")
    assert kinds(alerts(c, "2007-08-23"))["PRE_CALL_DUE"] == 0
    assert kinds(alerts(c, "2007-08-24"))["PRE_CALL_DUE"] == 1
    assert kinds(alerts(c, "2007-08-27"))["PRE_CALL_DUE"] == 1
    assert kinds(alerts(c, "2007-08-28"))["PRE_CALL_DUE"] == 0


def test_rebook_needed_after_a_failure_to_attend_until_the_window_is_decided():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    c.booked("2007-02-20", slot="2007-03-05").fta("2007-03-05")
    assert kinds(alerts(c, "2007-03-06"))["REBOOK_NEEDED"] == 1
    assert kinds(alerts(c, "2007-03-06"))["PRE_CALL_DUE"] == 0
    c.conducted("2007-03-12")
    assert kinds(alerts(c, "2007-03-13"))["REBOOK_NEEDED"] == 0


def test_an_lp_chain_does_not_replay_old_bookings_against_the_next_review():
    c = Claim(benefit="IS_LP", start="2007-01-15").cleared("2007-01-20")
    c.booked("2007-07-01", slot="2007-07-20", iv="LP_WFI_REVIEW").fta("2007-07-20", "LP_WFI_REVIEW")
    c.booked("2007-07-21", slot="2007-07-27", iv="LP_WFI_REVIEW")
    c.conducted("2007-07-27", iv="LP_WFI_REVIEW")
    # Review 2 is due 27 Jan 2008: nothing from the first review concerns it.
    found = alerts(c, "2008-01-10")
    assert kinds(found) == Counter({"WINDOW_OPENED": 1})
    assert found[0].window_id == "C1:LP_WFI_REVIEW:2"


def test_marker_unallocated_only_when_the_registry_can_tell():
    c = Claim(benefit="IB", start="2007-01-01", jobcentre="JC0101").cleared("2007-01-20")
    # The registry has not arrived yet: JC0101 is unknown, nobody can tell.
    assert alerts(c, "2007-01-21", registry={}) == []
    # The Contact Centre default: alert the Contact Centre.
    cc = Claim("C2", benefit="IB", start="2007-01-01", jobcentre="CC01").cleared("2007-01-20")
    (a,) = alerts(cc, "2007-01-21")
    assert (a.kind, a.office_id) == ("MARKER_UNALLOCATED", "CC01")
    # An office the full registry does not know is an error too.
    typo = Claim("C3", benefit="IB", start="2007-01-01", jobcentre="JC9999").cleared("2007-01-20")
    assert kinds(alerts(typo, "2007-01-21"))["MARKER_UNALLOCATED"] == 1
    # Unset.
    unset = Claim("C4", benefit="IB", start="2007-01-01", jobcentre=None).cleared("2007-01-20")
    assert "'unset'" in alerts(unset, "2007-01-21")[0].detail


def test_next_check_includes_the_opening_day():
    c = Claim(benefit="IB", start="2007-01-01").cleared("2007-01-20")
    h = ClaimHistory.from_events("C1", c.events)
    ws = evaluate(h, d("2007-01-21"))
    assert next_check(h, ws, d("2007-01-21"), AlertConfig()) == d("2007-02-26")


def test_a_missed_lmi_case_is_never_blamed_on_the_bdc():
    c = Claim(benefit="JSA", start="2007-01-01").cleared("2007-03-01", received="2007-01-03")
    c.lmi("2007-01-20")
    h = ClaimHistory.from_events("C1", c.events)
    (w, _) = [w for w in evaluate(h, d("2007-03-10")) if w.intervention == "LMI_FOLLOW_UP"]
    a = attribute(h, w, frozenset({"JC0101"}))
    assert (a.stage, a.bdc_days) == (Stage.JOBCENTRE, 0)
