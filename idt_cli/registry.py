"""The office registry file: CSV rows in, `office-registered` events and errors out.

Pure: no I/O, no clock. The caller reads the file, supplies the event time and
publishes the events, and only when there are no errors at all.

The file has the header `office_id,kind,name,district,region` (columns in any
order) and one office per row. Every row is validated by the contract's own
`OfficeRegisteredData`, exactly as a consumer will see it on the wire. On top of
that the file as a whole must be consistent: an office id appears once (ignoring
case, since ids that differ only in case are two offices nobody can tell apart),
and a district belongs to one region (scores roll Jobcentres up to districts and
districts up to regions, so a district split across regions would be counted in
both). Contact Centres and BDCs share their directorate districts across regions,
so the district rule applies to Jobcentres only.

Each event's id is `office-` + the SHA-256 of the row's canonical JSON: loading
the same file again publishes the same ids, which consumers deduplicate, while a
changed row gets a new id and supersedes the old one.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from idt_contract import stream_for
from idt_contract.events import OfficeKind, OfficeRegistered, OfficeRegisteredData, make_event

COLUMNS: tuple[str, ...] = tuple(OfficeRegisteredData.model_fields)
HEADER = ",".join(COLUMNS)
SOURCE = "/registry"
STREAM = stream_for(OfficeRegistered.event_type())

_KINDS = ", ".join(k.value for k in OfficeKind)
_OFFICE_ID_RULE = "1 to 32 letters, digits, '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class RowError:
    """One problem with the file; `line` is 1-based (the header is line 1)."""

    line: int
    message: str
    office_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class RegistryParse:
    """The events of the valid rows and every problem found. Publish the events
    only when `errors` is empty."""

    events: list[OfficeRegistered] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RegistrySummary:
    by_kind: dict[OfficeKind, int]
    districts: int
    regions: int

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def office_event_id(data: OfficeRegisteredData) -> str:
    """`office-<sha256 of the row's canonical JSON>`: same row, same id."""
    canonical = json.dumps(
        data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "office-" + hashlib.sha256(canonical.encode()).hexdigest()


def parse_offices(lines: Iterable[str], *, time: datetime) -> RegistryParse:
    """Validate a registry CSV (an iterable of text lines, e.g. an open file with
    `newline=""`) and build one `office-registered` event per row at `time`."""
    if time.tzinfo is None or time.utcoffset() is None:
        raise ValueError("the event time of the registry must be timezone-aware")
    reader = csv.reader(lines, strict=True)
    errors: list[RowError] = []
    events: list[OfficeRegistered] = []
    header: list[str] | None = None
    seen_ids: dict[str, tuple[str, int]] = {}
    district_regions: dict[str, tuple[str, int]] = {}
    last_line = 0
    rows = 0
    try:
        for record in reader:
            line = last_line + 1  # where this record starts (a quoted field may span lines)
            last_line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() for cell in record]
                if header:
                    header[0] = header[0].removeprefix("\ufeff")
                header_errors = _check_header(header, line)
                if header_errors:
                    return RegistryParse(errors=header_errors)
                continue
            rows += 1
            row_errors, event = _parse_row(record, header, line, seen_ids, district_regions, time)
            errors += row_errors
            if event is not None and not row_errors:
                events.append(event)
    except csv.Error as exc:
        errors.append(
            RowError(reader.line_num, f"malformed CSV ({exc}); the rest of the file was not read")
        )
        return RegistryParse(events=[], errors=errors)
    if header is None:
        return RegistryParse(
            errors=[RowError(1, f"the file is empty; expected the header {HEADER}")]
        )
    if rows == 0:
        errors.append(RowError(max(last_line, 1), "the file has a header but no offices"))
    return RegistryParse(events=events, errors=errors)


def summarise(events: Sequence[OfficeRegistered]) -> RegistrySummary:
    """Offices by kind, and how many districts and regions the Jobcentres span."""
    counts = Counter(ev.data.kind for ev in events)
    jobcentres = [ev.data for ev in events if ev.data.kind is OfficeKind.JOBCENTRE]
    return RegistrySummary(
        by_kind={kind: counts.get(kind, 0) for kind in OfficeKind},
        districts=len({d.district for d in jobcentres}),
        regions=len({d.region for d in jobcentres}),
    )


# ---------------------------------------------------------------- internals


def _check_header(header: list[str], line: int) -> list[RowError]:
    errors: list[RowError] = []
    counts = Counter(header)
    twice = sorted(name for name, n in counts.items() if n > 1)
    missing = [c for c in COLUMNS if c not in counts]
    unknown = [c for c in header if c not in COLUMNS]
    expected = f"the header must be {HEADER}"
    if missing:
        errors.append(RowError(line, f"missing column(s) {_names(missing)}; {expected}"))
    if unknown:
        errors.append(RowError(line, f"unknown column(s) {_names(unknown)}; {expected}"))
    if twice:
        errors.append(RowError(line, f"column(s) {_names(twice)} appear more than once"))
    return errors


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _parse_row(
    record: list[str],
    header: list[str],
    line: int,
    seen_ids: dict[str, tuple[str, int]],
    district_regions: dict[str, tuple[str, int]],
    time: datetime,
) -> tuple[list[RowError], OfficeRegistered | None]:
    if len(record) != len(header):
        return [
            RowError(
                line,
                f"{len(record)} field(s) where the header has {len(header)} ({','.join(header)})",
            )
        ], None
    values = {name: cell.strip() for name, cell in zip(header, record, strict=True)}
    office_id = values["office_id"] or None
    errors: list[RowError] = []

    # Consistency checks first, so a row with a bad field still reports a duplicate.
    if office_id is not None:
        key = office_id.casefold()
        if key in seen_ids:
            first, first_line = seen_ids[key]
            if first == office_id:
                msg = f"duplicate office_id {office_id!r} (first on line {first_line})"
            else:
                msg = (
                    f"office_id {office_id!r} differs only in case from {first!r} "
                    f"on line {first_line}"
                )
            errors.append(RowError(line, msg, office_id))
        else:
            seen_ids[key] = (office_id, line)
    district, region = values["district"], values["region"]
    if values["kind"] == OfficeKind.JOBCENTRE.value and district and region:
        if district in district_regions:
            known, known_line = district_regions[district]
            if known != region:
                errors.append(
                    RowError(
                        line,
                        f"district {district!r} is in region {known!r} (line {known_line}), "
                        f"not {region!r}: a district belongs to one region",
                        office_id,
                    )
                )
        else:
            district_regions[district] = (region, line)

    try:
        # JSON, as on the wire: the strict contract takes `kind` as its string value.
        data = OfficeRegisteredData.model_validate_json(json.dumps(values))
    except ValidationError as exc:
        errors += [RowError(line, _describe(e, values), office_id) for e in exc.errors()]
        return errors, None
    event = make_event(
        OfficeRegistered, source=SOURCE, time=time, data=data, id=office_event_id(data)
    )
    assert isinstance(event, OfficeRegistered)
    return errors, event


def _describe(error: ErrorDetails, values: dict[str, str]) -> str:
    """A readable reason for one pydantic error on one column."""
    loc = error["loc"]
    column = str(loc[0]) if loc else "row"
    value = values.get(column)
    kind = error["type"]
    if value == "":
        return f"{column} is empty"
    if column == "office_id" and kind == "string_pattern_mismatch":
        return f"office_id {value!r} is not a valid office id ({_OFFICE_ID_RULE})"
    if column == "kind" and kind == "enum":
        return f"kind {value!r} is not one of {_KINDS}"
    if kind == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        return f"{column} is {len(value or '')} characters long, over the limit of {limit}"
    return f"{column}: {error['msg']}"
