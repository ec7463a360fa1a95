"""IDT scores (spec §1, §5) as pure functions: counts, roll-ups, rates, intervals.

No I/O, no clock, no framework imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

ELEMENTS = ("IB", "LP", "JSA", "LMI")
COUNTED = ("MET", "MISSED", "WAIVED", "DEFERRED")
UNALLOCATED = "UNALLOCATED"
Level = Literal["jobcentre", "district", "region", "national"]
LEVELS: tuple[Level, ...] = ("jobcentre", "district", "region", "national")
Basis = Literal["policy", "measured"]

# --------------------------------------------------------------------------- periods


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def financial_year_of(day: date) -> str:
    """April to March: 15 May 2007 and 10 Feb 2008 are both in FY2007-08."""
    start = day.year if day.month >= 4 else day.year - 1
    return f"FY{start:04d}-{(start + 1) % 100:02d}"


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_FY = re.compile(r"^FY(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Period:
    text: str
    first: date
    last: date

    @property
    def is_month(self) -> bool:
        return not self.text.startswith("FY")


def parse_period(text: str) -> Period:
    """`YYYY-MM` or `FYyyyy-yy`; ValueError with a clear message otherwise."""
    import calendar

    m = _MONTH.match(text)
    if m:
        y, mo = int(m.group(1)), int(m.group(2))
        if not 1 <= mo <= 12:
            raise ValueError(f"month {mo:02d} does not exist in period {text!r}")
        return Period(text, date(y, mo, 1), date(y, mo, calendar.monthrange(y, mo)[1]))
    m = _FY.match(text)
    if m:
        y, yy = int(m.group(1)), int(m.group(2))
        if (y + 1) % 100 != yy:
            raise ValueError(f"financial year {text!r} must span two consecutive years")
        return Period(text, date(y, 4, 1), date(y + 1, 3, 31))
    raise ValueError(f"period must be YYYY-MM or FYyyyy-yy (e.g. 2007-08, FY2007-08), not {text!r}")


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """The current (highest-revision) outcome of one window on one basis."""

    window_id: str
    basis: str
    element: str
    outcome: str  # MET, MISSED, WAIVED, DEFERRED (others count nowhere)
    outcome_date: date
    jobcentre_id: str | None
    stage: str | None = None


@dataclass(frozen=True)
class Office:
    office_id: str
    kind: str
    district: str
    region: str


def scope_of(jobcentre_id: str | None, offices: Mapping[str, Office]) -> str:
    """The jobcentre an outcome counts for: UNALLOCATED when the marker names no
    registered Jobcentre (spec §5)."""
    office = offices.get(jobcentre_id) if jobcentre_id else None
    if office is None or office.kind != "JOBCENTRE":
        return UNALLOCATED
    return office.office_id


# --------------------------------------------------------------------------- counts


@dataclass
class Counts:
    met: int = 0
    missed: int = 0
    waived: int = 0
    deferred: int = 0

    def add(self, outcome: str, n: int = 1) -> None:
        setattr(self, outcome.lower(), getattr(self, outcome.lower()) + n)

    def merge(self, other: Counts) -> None:
        self.met += other.met
        self.missed += other.missed
        self.waived += other.waived
        self.deferred += other.deferred

    def due(self, basis: str) -> int:
        """The denominator: measured counts waivers and deferrals, policy does not."""
        if basis == "measured":
            return self.met + self.missed + self.waived + self.deferred
        return self.met + self.missed

    @property
    def total(self) -> int:
        return self.met + self.missed + self.waived + self.deferred


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """The 95% Wilson score interval for a proportion; None when n is 0."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exactly 0 (1) when none (all) succeeded, not a rounding error away from it.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def rate(c: Counts, basis: str) -> float | None:
    due = c.due(basis)
    return c.met / due if due else None


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    element: str  # IB, LP, JSA, LMI or OVERALL
    value: float
    effective_from: date


DEFAULT_TARGETS: tuple[Target, ...] = (
    Target("IB", 0.80, date(2000, 1, 1)),
    Target("LP", 0.85, date(2000, 1, 1)),
    Target("JSA", 0.85, date(2000, 1, 1)),
    Target("LMI", 0.90, date(2000, 1, 1)),
    Target("OVERALL", 0.85, date(2000, 1, 1)),
)


def target_for(element: str, period: Period, targets: Sequence[Target]) -> float | None:
    """The target in force for a period: the latest effective on or before the
    period's first day, so a later change of target never rewrites a past period."""
    chosen: Target | None = None
    for t in targets:
        applies = t.element == element and t.effective_from <= period.first
        if applies and (chosen is None or t.effective_from > chosen.effective_from):
            chosen = t
    return chosen.value if chosen else None


# --------------------------------------------------------------------------- scores


@dataclass
class ScopeCounts:
    """Counts per element for one scope (a jobcentre, district, region or nation)."""

    scope: str
    elements: dict[str, Counts] = field(default_factory=dict)

    def counts(self, element: str) -> Counts:
        return self.elements.setdefault(element, Counts())


def roll_up(
    by_jobcentre: Mapping[str, Mapping[str, Counts]],
    level: Level,
    offices: Mapping[str, Office],
) -> dict[str, dict[str, Counts]]:
    """Sum jobcentre counts up to `level` (rates are never averaged). UNALLOCATED
    appears at jobcentre level and counts nationally, in no district or region."""
    out: dict[str, dict[str, Counts]] = {}
    for jc, elements in by_jobcentre.items():
        if level == "jobcentre":
            scope: str | None = jc
        elif level == "national":
            scope = "national"
        elif jc == UNALLOCATED or jc not in offices:
            scope = None
        else:
            scope = offices[jc].district if level == "district" else offices[jc].region
        if scope is None:
            continue
        target = out.setdefault(scope, {})
        for element, c in elements.items():
            target.setdefault(element, Counts()).merge(c)
    return out


def count_outcomes(
    outcomes: Iterable[Outcome], basis: str, period: Period, offices: Mapping[str, Office]
) -> dict[str, dict[str, Counts]]:
    """Jobcentre → element → counts for the outcomes dated inside the period."""
    out: dict[str, dict[str, Counts]] = {}
    for o in outcomes:
        if o.basis != basis or o.outcome not in COUNTED:
            continue
        if not period.first <= o.outcome_date <= period.last:
            continue
        jc = scope_of(o.jobcentre_id, offices)
        out.setdefault(jc, {}).setdefault(o.element, Counts()).add(o.outcome)
    return out


def score_rows(
    counts: Mapping[str, Mapping[str, Counts]],
    basis: str,
    period: Period,
    targets: Sequence[Target],
) -> list[dict[str, object]]:
    """The rows of the scores API (elements with no windows are omitted)."""
    rows: list[dict[str, object]] = []
    for scope in sorted(counts):
        elements: dict[str, object] = {}
        rates: list[float] = []
        included: list[str] = []
        for element in ELEMENTS:
            c = counts[scope].get(element)
            if c is None or c.total == 0:
                continue
            due = c.due(basis)
            r = rate(c, basis)
            ci = wilson(c.met, due)
            elements[element] = {
                "met": c.met,
                "missed": c.missed,
                "waived": c.waived,
                "deferred": c.deferred,
                "due": due,
                "rate": r,
                "ci95": list(ci) if ci else None,
                "target": target_for(element, period, targets),
            }
            if r is not None:
                rates.append(r)
                included.append(element)
        if not elements:
            continue
        rows.append(
            {
                "scope": scope,
                "elements": elements,
                "overall": {
                    "rate": sum(rates) / len(rates) if rates else None,
                    "elements": included,
                    "target": target_for("OVERALL", period, targets),
                },
            }
        )
    return rows


def distribution(counts: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """Count, mean, p10/p50/p90 and how many under 30 of the values given as
    (value, how many) pairs: the database counts a month's interviews by their
    minutes (a few hundred rows) instead of sending every interview. A percentile
    is the value at index min(n - 1, int(p * n)) of all values sorted."""
    pairs = sorted((v, k) for v, k in counts if k > 0)
    n = sum(k for _, k in pairs)
    if not n:
        return {"count": 0}

    def pct(p: float) -> int:
        index = min(n - 1, int(p * n))
        seen = 0
        for value, k in pairs:
            seen += k
            if index < seen:
                return value
        raise AssertionError("unreachable: index < n")

    return {
        "count": n,
        "mean": round(sum(v * k for v, k in pairs) / n, 1),
        "p10": pct(0.10),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "under_30": sum(k for v, k in pairs if v < 30),
    }
