"""Dates in business terms (spec §2): London calendar dates and working days.

Working days exclude Saturdays, Sundays and England-and-Wales bank holidays, taken
from the maintained `holidays` package (subdivision ENG; Wales shares England's
bank holidays), never a hand-typed list.
"""

from __future__ import annotations

import calendar as _cal
from datetime import UTC as _UTC
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")


def london_date(moment: datetime) -> date:
    """The calendar date of an aware `moment` in Europe/London."""
    if moment.tzinfo is None:
        raise ValueError("business dates need an aware datetime (RFC 3339 with offset)")
    return moment.astimezone(LONDON).date()


@lru_cache(maxsize=64)
def _bank_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year).keys())


def is_bank_holiday(day: date) -> bool:
    return day in _bank_holidays(day.year)


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and not is_bank_holiday(day)


def working_days_between(start_exclusive: date, end_inclusive: date) -> int:
    """Working days in (start, end]; 0 when end is not after start."""
    if end_inclusive <= start_exclusive:
        return 0
    count = 0
    day = start_exclusive + timedelta(days=1)
    # Whole weeks first (5 weekdays each), then correct for bank holidays.
    span = (end_inclusive - start_exclusive).days
    weeks, rest = divmod(span, 7)
    count = weeks * 5
    for i in range(rest):
        d = day + timedelta(days=weeks * 7 + i)
        if d.weekday() < 5:
            count += 1
    for year in range(start_exclusive.year, end_inclusive.year + 1):
        for hol in _bank_holidays(year):
            if start_exclusive < hol <= end_inclusive and hol.weekday() < 5:
                count -= 1
    return count


def add_working_days(start: date, n: int) -> date:
    """The n-th working day after `start` (n >= 0; n == 0 gives `start`)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    day = start
    while n:
        day += timedelta(days=1)
        if is_working_day(day):
            n -= 1
    return day


def add_months(day: date, months: int) -> date:
    """Calendar months, keeping the day of month clamped to the month's end
    (31 Aug 2007 + 6 months = 29 Feb 2008)."""
    month0 = day.month - 1 + months
    year = day.year + month0 // 12
    month = month0 % 12 + 1
    last = _cal.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


def month_end(day: date) -> date:
    return date(day.year, day.month, _cal.monthrange(day.year, day.month)[1])


def period_of(day: date) -> str:
    """The calendar-month period `YYYY-MM` of a date."""
    return f"{day.year:04d}-{day.month:02d}"


def parse_period(period: str) -> tuple[date, date]:
    """First and last day of a `YYYY-MM` period; ValueError with a clear message otherwise."""
    import re

    m = re.fullmatch(r"(\d{4})-(\d{2})", period)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    return first, month_end(first)


def utc_key(moment: datetime) -> str:
    """A sortable, fixed-width UTC text form of an aware datetime (for event-time ordering)."""
    if moment.tzinfo is None:
        raise ValueError("event times are aware datetimes")
    u = moment.astimezone(_UTC)
    if u.year < 1000:  # isoformat pads the year, strftime("%Y") does not
        return u.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return u.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
