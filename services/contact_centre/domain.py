"""Contact Centre rules as pure functions: NI numbers, pseudonyms, JP markers.

No I/O, no clock, no framework imports.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from idt_contract.events import Benefit, OfficeKind, PrimaryBenefit
from idt_domain.ordering import supersedes

__all__ = ["supersedes"]  # re-exported: the ordering rule the appliers follow

# HMRC NIM39110: two prefix letters, six digits, suffix A-D. The first letter is
# not D, F, I, Q, U or V; the second not D, F, I, O, Q, U or V; and the prefixes
# BG, GB, KN, NK, NT, TN and ZZ are never allocated.
_NINO = re.compile(r"^([A-CEGHJ-PR-TW-Z])([A-CEGHJ-NPR-TW-Z])(\d{6})([A-D])$")
_DISALLOWED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


class InvalidNino(ValueError):
    """The reason never repeats the number itself (it is personal data)."""


def normalise_nino(raw: str) -> str:
    """Upper-case, spaces removed, validated; raises InvalidNino with a reason."""
    if not isinstance(raw, str):
        raise InvalidNino("national insurance number must be a string")
    nino = re.sub(r"\s+", "", raw).upper()
    if len(nino) != 9:
        raise InvalidNino(
            "national insurance number must be 2 letters, 6 digits and a letter A-D "
            f"(9 characters without spaces; got {len(nino)})"
        )
    if nino[:2] in _DISALLOWED_PREFIXES:
        raise InvalidNino("national insurance number has a prefix that is never allocated")
    if not _NINO.match(nino):
        if not nino[:2].isalpha() or not nino[2:8].isdigit():
            raise InvalidNino("national insurance number must be 2 letters then 6 digits")
        if nino[8] not in "ABCD":
            raise InvalidNino("national insurance number must end in A, B, C or D")
        raise InvalidNino("national insurance number has letters that are never used in a prefix")
    return nino


def customer_ref(nino: str, key: bytes) -> str:
    """The pseudonymous customer reference: a keyed HMAC-SHA256 of the normalised NI
    number. Only this reaches the bus; without the key it cannot be reversed."""
    digest = hmac.new(key, normalise_nino(nino).encode(), hashlib.sha256).hexdigest()
    return "cr_" + digest[:40]


#: The PRIMARY_BENEFIT marker that agrees with each benefit.
EXPECTED_PRIMARY: Mapping[Benefit, PrimaryBenefit] = {
    Benefit.IB: PrimaryBenefit.INCAPACITATED_DISABLED,
    Benefit.IS_LP: PrimaryBenefit.LONE_PARENT,
    Benefit.JSA: PrimaryBenefit.JOBSEEKER,
}


@dataclass(frozen=True)
class Office:
    office_id: str
    kind: OfficeKind
    name: str
    district: str
    region: str


class MarkerRefused(ValueError):
    """A marker value the intake must not accept; the message says why."""


def check_jobcentre_marker(value: str, offices: Mapping[str, Office]) -> Office:
    """The JOBCENTRE marker must name a registered Jobcentre (report §5.2.3: the
    Contact Centre default is what left customers unallocated)."""
    office = offices.get(value)
    if office is None:
        raise MarkerRefused(
            f"JOBCENTRE marker {value!r} names no registered office; "
            "choose the Jobcentre that owns the customer"
        )
    if office.kind is OfficeKind.CONTACT_CENTRE:
        raise MarkerRefused(
            f"JOBCENTRE marker {value!r} is a Contact Centre ({office.name}); the marker must "
            "name the Jobcentre that owns the customer, not the Contact Centre default"
        )
    if office.kind is not OfficeKind.JOBCENTRE:
        raise MarkerRefused(
            f"JOBCENTRE marker {value!r} is a {office.kind.value} ({office.name}), not a Jobcentre"
        )
    return office


def check_primary_marker(value: str, benefit: Benefit) -> PrimaryBenefit:
    try:
        primary = PrimaryBenefit(value)
    except ValueError:
        raise MarkerRefused(
            f"PRIMARY_BENEFIT marker must be one of {[p.value for p in PrimaryBenefit]}"
        ) from None
    expected = EXPECTED_PRIMARY[benefit]
    if primary is not expected:
        raise MarkerRefused(
            f"PRIMARY_BENEFIT marker {primary.value} disagrees with the {benefit.value} claim; "
            f"it must be {expected.value}"
        )
    return primary


# ---------------------------------------------------------------- JP process report


class Problem:
    JOBCENTRE_UNSET = "JOBCENTRE_MARKER_UNSET"
    JOBCENTRE_IS_CONTACT_CENTRE = "JOBCENTRE_MARKER_IS_CONTACT_CENTRE"
    JOBCENTRE_NOT_A_JOBCENTRE = "JOBCENTRE_MARKER_NOT_A_JOBCENTRE"
    JOBCENTRE_UNKNOWN = "JOBCENTRE_MARKER_UNKNOWN_OFFICE"
    PRIMARY_UNSET = "PRIMARY_BENEFIT_MARKER_UNSET"
    PRIMARY_MISMATCH = "PRIMARY_BENEFIT_MARKER_MISMATCH"


def marker_problems(
    benefit: Benefit,
    jobcentre_marker: str | None,
    primary_marker: str | None,
    offices: Mapping[str, Office],
) -> list[str]:
    """What is wrong with a claim's markers, given the registry as it stands."""
    problems: list[str] = []
    if jobcentre_marker is None:
        problems.append(Problem.JOBCENTRE_UNSET)
    else:
        office = offices.get(jobcentre_marker)
        if office is None:
            problems.append(Problem.JOBCENTRE_UNKNOWN)
        elif office.kind is OfficeKind.CONTACT_CENTRE:
            problems.append(Problem.JOBCENTRE_IS_CONTACT_CENTRE)
        elif office.kind is not OfficeKind.JOBCENTRE:
            problems.append(Problem.JOBCENTRE_NOT_A_JOBCENTRE)
    if primary_marker is None:
        problems.append(Problem.PRIMARY_UNSET)
    elif primary_marker != EXPECTED_PRIMARY[benefit].value:
        problems.append(Problem.PRIMARY_MISMATCH)
    return problems


def age_days(registered: date, as_of: date) -> int:
    return max(0, (as_of - registered).days)
