"""Input types the services' HTTP APIs share: dates and moments as ISO 8601 text
only (pydantic would read 0 or "86400" as a Unix time), moments that have a
London date, and claim ids that cannot hold an NI number (a 422 that does not
echo it, never a 500 later)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from idt_contract.events import NINO_IN_TEXT, ClaimId
from idt_domain.calendar import london_date

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError(
            "must be ISO 8601 text (YYYY-MM-DD, or a date-time with offset), not a number"
        )
    return value


def _in_london_calendar(value: datetime) -> datetime:
    # Every service takes the London date of an event's time: it must exist.
    try:
        london_date(value)
    except OverflowError:
        raise ValueError("is outside the calendar (years 1 to 9999 in London time)") from None
    return value


def _not_a_nino(value: str) -> str:
    if NINO_IN_TEXT.search(value):
        raise ValueError("claim_id contains a National Insurance number; use a claim reference")
    return value


Day = Annotated[date, BeforeValidator(_not_a_number)]
Moment = Annotated[
    AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_in_london_calendar)
]
SafeClaimId = Annotated[ClaimId, AfterValidator(_not_a_nino)]
