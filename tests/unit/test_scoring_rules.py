"""Scores (spec §1, §5) as pure rules."""

from __future__ import annotations

from datetime import date

import pytest

from services.scoring import domain
from services.scoring.domain import Counts, Office, Outcome, Target

OFFICES = {
    "JC1": Office("JC1", "JOBCENTRE", "District A", "Region X"),
    "JC2": Office("JC2", "JOBCENTRE", "District A", "Region X"),
    "JC3": Office("JC3", "JOBCENTRE", "District B", "Region Y"),
    "CC1": Office("CC1", "CONTACT_CENTRE", "CC Directorate", "Region X"),
}


def o(window: str, outcome: str, day: str, jc: str | None, element: str = "IB", basis="measured"):
    return Outcome(window, basis, element, outcome, date.fromisoformat(day), jc)


@pytest.mark.parametrize(
    ("day", "month", "fy"),
    [
        ("2007-04-01", "2007-04", "FY2007-08"),
        ("2008-03-31", "2008-03", "FY2007-08"),
        ("2008-04-01", "2008-04", "FY2008-09"),
        ("1999-12-31", "1999-12", "FY1999-00"),
    ],
)
def test_periods(day, month, fy):
    d = date.fromisoformat(day)
    assert domain.month_of(d) == month and domain.financial_year_of(d) == fy
    p = domain.parse_period(fy)
    assert p.first <= d <= p.last


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2007-13", "does not exist"),
        ("FY2007-09", "two consecutive years"),
        ("2007/08", "YYYY-MM or FYyyyy-yy"),
        ("FY07-08", "YYYY-MM or FYyyyy-yy"),
    ],
)
def test_bad_periods_are_refused_clearly(text, reason):
    with pytest.raises(ValueError, match=reason):
        domain.parse_period(text)


def test_the_denominator_differs_by_basis():
    c = Counts(met=8, missed=1, waived=2, deferred=1)
    assert c.due("measured") == 12 and c.due("policy") == 9
    assert domain.rate(c, "measured") == pytest.approx(8 / 12)
    assert domain.rate(c, "policy") == pytest.approx(8 / 9)
    assert domain.rate(Counts(waived=3), "policy") is None  # zero denominator: no rate


def test_wilson_interval():
    lo, hi = domain.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert domain.wilson(0, 0) is None
    lo, hi = domain.wilson(0, 3)
    assert lo == 0.0 and 0.5 < hi < 0.6
    lo, hi = domain.wilson(800, 1000)  # a big office: a narrow interval
    assert hi - lo < 0.05


def test_outcomes_count_in_the_month_of_their_date_for_their_jobcentre():
    outcomes = [
        o("w1", "MET", "2007-08-31", "JC1"),
        o("w2", "MISSED", "2007-09-01", "JC1"),
        o("w3", "MET", "2007-08-15", "CC1"),  # a Contact Centre marker: UNALLOCATED
        o("w4", "MET", "2007-08-15", None),
        o("w5", "CANCELLED", "2007-08-15", "JC1"),  # counts nowhere
        o("w6", "MET", "2007-08-15", "JC9"),  # unknown office: UNALLOCATED
        o("w7", "MET", "2007-08-15", "JC1", basis="policy"),
    ]
    counts = domain.count_outcomes(outcomes, "measured", domain.parse_period("2007-08"), OFFICES)
    assert counts["JC1"]["IB"] == Counts(met=1)
    assert counts["UNALLOCATED"]["IB"] == Counts(met=3)
    assert set(counts) == {"JC1", "UNALLOCATED"}


def test_roll_up_sums_counts_and_unallocated_counts_only_nationally():
    by_jc = {
        "JC1": {"IB": Counts(met=3, missed=1)},
        "JC2": {"IB": Counts(met=1, missed=3), "LP": Counts(met=2)},
        "JC3": {"IB": Counts(met=5)},
        "UNALLOCATED": {"IB": Counts(missed=4)},
    }
    district = domain.roll_up(by_jc, "district", OFFICES)
    assert district["District A"]["IB"] == Counts(met=4, missed=4)  # summed, not averaged
    assert "UNALLOCATED" not in district
    region = domain.roll_up(by_jc, "region", OFFICES)
    assert region["Region Y"]["IB"] == Counts(met=5)
    national = domain.roll_up(by_jc, "national", OFFICES)
    assert national["national"]["IB"] == Counts(met=9, missed=8)
    assert set(domain.roll_up(by_jc, "jobcentre", OFFICES)) == {"JC1", "JC2", "JC3", "UNALLOCATED"}


def test_score_rows_shape_targets_and_overall():
    counts = {"District A": {"IB": Counts(met=4, missed=4), "LP": Counts(met=2)}}
    (row,) = domain.score_rows(
        counts, "measured", domain.parse_period("2007-08"), domain.DEFAULT_TARGETS
    )
    assert row["scope"] == "District A"
    ib = row["elements"]["IB"]
    assert (ib["met"], ib["missed"], ib["due"], ib["rate"], ib["target"]) == (4, 4, 8, 0.5, 0.8)
    assert ib["ci95"][0] < 0.5 < ib["ci95"][1]
    assert set(row["elements"]) == {"IB", "LP"}  # elements with no windows are omitted
    assert row["overall"] == {"rate": 0.75, "elements": ["IB", "LP"], "target": 0.85}


def test_a_target_change_never_rewrites_a_past_period():
    targets = (*domain.DEFAULT_TARGETS, Target("IB", 0.9, date(2008, 1, 1)))
    assert domain.target_for("IB", domain.parse_period("2007-12"), targets) == 0.8
    assert domain.target_for("IB", domain.parse_period("2008-01"), targets) == 0.9
    # A financial year takes the target in force on its first day.
    assert domain.target_for("IB", domain.parse_period("FY2007-08"), targets) == 0.8


def _distribution_of_all(values: list[int]) -> dict[str, object]:
    """The straightforward way: every value, sorted, indexed."""
    if not values:
        return {"count": 0}
    v = sorted(values)

    def pct(p: float) -> int:
        return v[min(len(v) - 1, int(p * len(v)))]

    return {
        "count": len(v),
        "mean": round(sum(v) / len(v), 1),
        "p10": pct(0.10),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "under_30": sum(1 for x in v if x < 30),
    }


@pytest.mark.parametrize("seed", range(40))
def test_the_distribution_from_counts_equals_the_one_from_every_value(seed):
    import random
    from collections import Counter

    rng = random.Random(seed)
    values = [rng.choice([5, 15, 29, 30, 31, 45, 60, 90, 120]) for _ in range(rng.randint(0, 60))]
    counts = list(Counter(values).items())
    rng.shuffle(counts)
    assert domain.distribution(counts) == _distribution_of_all(values)


def test_the_distribution_ignores_empty_counts():
    assert domain.distribution([]) == {"count": 0}
    assert domain.distribution([(40, 0)]) == {"count": 0}
    d = domain.distribution([(40, 0), (20, 1), (50, 3)])
    assert d == {"count": 4, "mean": 42.5, "p10": 20, "p50": 50, "p90": 50, "under_30": 1}
