from __future__ import annotations

import pytest

from idt_contract.events import Benefit, OfficeKind
from services.contact_centre import domain
from services.contact_centre.domain import Office, Problem

OFFICES = {
    "CC01": Office("CC01", OfficeKind.CONTACT_CENTRE, "Bolton CC", "CCs", "North West"),
    "BDC01": Office("BDC01", OfficeKind.BDC, "Wigan BDC", "BDCs", "North West"),
    "JC0101": Office("JC0101", OfficeKind.JOBCENTRE, "Bolton", "GM East", "North West"),
}


@pytest.mark.parametrize("raw", ["JT123456C", "jt 12 34 56 c", " AB123456D ", "ce999999a"])
def test_valid_ninos_are_normalised(raw):
    assert domain.normalise_nino(raw) == raw.replace(" ", "").upper()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "9 characters"),
        ("AB12345C", "9 characters"),
        ("AB1234567C", "9 characters"),
        ("GB123456A", "never allocated"),
        ("BG123456A", "never allocated"),
        ("NK123456A", "never allocated"),
        ("KN123456A", "never allocated"),
        ("TN123456A", "never allocated"),
        ("NT123456A", "never allocated"),
        ("ZZ123456A", "never allocated"),
        ("DA123456A", "never used in a prefix"),  # D never first
        ("QQ123456C", "never used in a prefix"),  # HMRC's example prefix
        ("AO123456A", "never used in a prefix"),  # O never second
        ("AB123456E", "end in A, B, C or D"),
        ("A1123456A", "2 letters then 6 digits"),
        ("AB12345XA", "2 letters then 6 digits"),
    ],
)
def test_invalid_ninos_give_a_reason_that_does_not_repeat_the_number(raw, reason):
    with pytest.raises(domain.InvalidNino) as err:
        domain.normalise_nino(raw)
    assert reason in str(err.value)
    if raw.strip():
        assert raw not in str(err.value)


def test_customer_ref_is_keyed_deterministic_and_never_the_number():
    a = domain.customer_ref("JT123456C", b"key-one")
    assert a == domain.customer_ref("jt 123456 c", b"key-one")
    assert a != domain.customer_ref("JT123456C", b"key-two")
    assert a != domain.customer_ref("JT123456D", b"key-one")
    assert "JT123456C" not in a and a.startswith("cr_") and len(a) == 43


def test_jobcentre_marker_must_name_a_registered_jobcentre():
    assert domain.check_jobcentre_marker("JC0101", OFFICES).office_id == "JC0101"
    with pytest.raises(domain.MarkerRefused, match="is a Contact Centre"):
        domain.check_jobcentre_marker("CC01", OFFICES)
    with pytest.raises(domain.MarkerRefused, match="not a Jobcentre"):
        domain.check_jobcentre_marker("BDC01", OFFICES)
    with pytest.raises(domain.MarkerRefused, match="names no registered office"):
        domain.check_jobcentre_marker("JC9999", OFFICES)


@pytest.mark.parametrize(
    ("benefit", "good"),
    [
        (Benefit.IB, "INCAPACITATED_DISABLED"),
        (Benefit.IS_LP, "LONE_PARENT"),
        (Benefit.JSA, "JOBSEEKER"),
    ],
)
def test_primary_benefit_marker_must_agree_with_the_benefit(benefit, good):
    assert domain.check_primary_marker(good, benefit).value == good
    for other in {"INCAPACITATED_DISABLED", "LONE_PARENT", "JOBSEEKER", "OTHER"} - {good}:
        with pytest.raises(domain.MarkerRefused, match="disagrees"):
            domain.check_primary_marker(other, benefit)
    with pytest.raises(domain.MarkerRefused, match="must be one of"):
        domain.check_primary_marker("PENSIONER", benefit)


@pytest.mark.parametrize(
    ("jc", "pb", "expected"),
    [
        ("JC0101", "INCAPACITATED_DISABLED", []),
        (None, "INCAPACITATED_DISABLED", [Problem.JOBCENTRE_UNSET]),
        ("CC01", "INCAPACITATED_DISABLED", [Problem.JOBCENTRE_IS_CONTACT_CENTRE]),
        ("BDC01", "INCAPACITATED_DISABLED", [Problem.JOBCENTRE_NOT_A_JOBCENTRE]),
        ("JC0999", "INCAPACITATED_DISABLED", [Problem.JOBCENTRE_UNKNOWN]),
        ("JC0101", "OTHER", [Problem.PRIMARY_MISMATCH]),
        ("JC0101", None, [Problem.PRIMARY_UNSET]),
        ("CC01", "JOBSEEKER", [Problem.JOBCENTRE_IS_CONTACT_CENTRE, Problem.PRIMARY_MISMATCH]),
    ],
)
def test_marker_problems(jc, pb, expected):
    assert domain.marker_problems(Benefit.IB, jc, pb, OFFICES) == expected


def test_latest_event_time_wins_then_event_id():
    assert domain.supersedes(("2007-06-02", "a"), ("2007-06-01", "z"))
    assert not domain.supersedes(("2007-06-01", "z"), ("2007-06-02", "a"))
    assert domain.supersedes(("2007-06-01", "b"), ("2007-06-01", "a"))
    assert domain.supersedes(("2007-06-01", "a"), None)
