"""The office registry CSV: pure parsing and validation (idt_cli.registry)."""

from __future__ import annotations

import io
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone

import pytest

from idt_cli.offices import DEFAULT_OFFICES, read_registry
from idt_cli.registry import (
    HEADER,
    SOURCE,
    RegistryParse,
    office_event_id,
    parse_offices,
    summarise,
)
from idt_contract import decode, encode
from idt_contract.events import OfficeKind, OfficeRegistered

AS_OF = datetime(2007, 4, 1, 9, 0, tzinfo=UTC)

GOOD = """\
office_id,kind,name,district,region
CC01,CONTACT_CENTRE,Bolton Contact Centre,Contact Centre Directorate,North West
BDC01,BDC,Wigan Benefit Delivery Centre,Benefit Delivery Directorate,North West
JC0101,JOBCENTRE,Bolton Jobcentre,Greater Manchester East,North West
JC0102,JOBCENTRE,Bury Jobcentre,Greater Manchester East,North West
JC1301,JOBCENTRE,Leith Jobcentre,"Edinburgh, Lothian and Borders",Scotland
"""


def parse(text: str, time: datetime = AS_OF) -> RegistryParse:
    return parse_offices(io.StringIO(text, newline=""), time=time)


def problems(result: RegistryParse) -> list[tuple[int, str]]:
    return [(e.line, e.message) for e in result.errors]


def test_good_file_gives_one_event_per_row() -> None:
    result = parse(GOOD)
    assert result.ok and result.errors == []
    assert [e.data.office_id for e in result.events] == [
        "CC01", "BDC01", "JC0101", "JC0102", "JC1301",
    ]  # fmt: skip
    leith = result.events[-1]
    assert isinstance(leith, OfficeRegistered)
    assert leith.type == "office-registered"
    assert leith.source == SOURCE == "/registry"
    assert leith.time == AS_OF
    assert leith.subject is None
    assert leith.data.kind is OfficeKind.JOBCENTRE
    assert leith.data.name == "Leith Jobcentre"
    assert leith.data.district == "Edinburgh, Lothian and Borders"
    assert leith.data.region == "Scotland"
    assert leith.id == office_event_id(leith.data)
    assert re.fullmatch(r"office-[0-9a-f]{64}", leith.id)
    # The events survive the wire codec unchanged.
    for event in result.events:
        assert decode(encode(event), expected_type="office-registered") == event


def test_event_ids_depend_on_the_row_content_only() -> None:
    first = parse(GOOD)
    later = parse(GOOD, time=AS_OF + timedelta(days=30))
    assert [e.id for e in first.events] == [e.id for e in later.events]
    assert len({e.id for e in first.events}) == len(first.events)

    # Column order and padding around cells do not change an id...
    reordered = "region, kind ,office_id,name,district\nNorth West,JOBCENTRE, JC0101 ,Bolton Jobcentre,Greater Manchester East\n"  # noqa: E501
    assert parse(reordered).events[0].id == first.events[2].id
    # ...a changed row does, and only that row's.
    moved = GOOD.replace(
        "Bury Jobcentre,Greater Manchester East", "Bury Jobcentre,Bury and Rochdale"
    )
    changed = parse(moved)
    assert changed.ok
    old_ids = [e.id for e in first.events]
    new_ids = [e.id for e in changed.events]
    assert [o == n for o, n in zip(old_ids, new_ids, strict=True)] == [
        True, True, True, False, True,
    ]  # fmt: skip


def test_every_bad_row_is_reported_with_its_line_number() -> None:
    text = (
        HEADER + "\n"  # line 1
        "JC0101,JOBCENTRE,Bolton Jobcentre,Greater Manchester East,North West\n"  # 2: good
        "JC 01,JOBCENTRE,Space Jobcentre,Greater Manchester East,North West\n"  # 3
        "JC0103,JOBCENTER,Oldham Jobcentre,Greater Manchester East,North West\n"  # 4
        "JC0104,JOBCENTRE,,Greater Manchester East,North West\n"  # 5
        "\n"  # 6: blank lines are skipped but still counted
        "JC0105,JOBCENTRE,Rochdale Jobcentre,Greater Manchester East\n"  # 7
        f"JC0106,JOBCENTRE,{'x' * 201},Greater Manchester East,North West\n"  # 8
        "JC0107,jobcentre,Heywood Jobcentre,,North West\n"  # 9: two problems
    )
    result = parse(text)
    assert not result.ok
    assert problems(result) == [
        (3, "office_id 'JC 01' is not a valid office id (1 to 32 letters, digits, '_' or '-', "
            "starting with a letter or digit)"),
        (4, "kind 'JOBCENTER' is not one of CONTACT_CENTRE, BDC, JOBCENTRE"),
        (5, "name is empty"),
        (7, "4 field(s) where the header has 5 (office_id,kind,name,district,region)"),
        (8, "name is 201 characters long, over the limit of 200"),
        (9, "kind 'jobcentre' is not one of CONTACT_CENTRE, BDC, JOBCENTRE"),
        (9, "district is empty"),
    ]  # fmt: skip
    assert [e.office_id for e in result.errors] == [
        "JC 01", "JC0103", "JC0104", None, "JC0106", "JC0107", "JC0107",
    ]  # fmt: skip
    # Only the good row became an event; the caller must publish nothing.
    assert [e.data.office_id for e in result.events] == ["JC0101"]


@pytest.mark.parametrize(
    "office_id",
    ["-JC01", "_JC01", "JC.01", "JC/01", "JCé01", "J" * 33, "JC01:x"],
)
def test_bad_office_ids(office_id: str) -> None:
    result = parse(f"{HEADER}\n{office_id},BDC,Some BDC,Benefit Delivery Directorate,Wales\n")
    assert len(result.errors) == 1
    assert result.errors[0].line == 2
    assert result.errors[0].message.startswith(f"office_id {office_id!r} is not a valid office id")


@pytest.mark.parametrize("office_id", ["A", "JC0101", "bdc_01", "CC-01", "J" * 32])
def test_good_office_ids(office_id: str) -> None:
    assert parse(f"{HEADER}\n{office_id},BDC,Some BDC,Benefit Delivery Directorate,Wales\n").ok


@pytest.mark.parametrize("kind", ["", "JOB_CENTRE", "CC", "bdc", "Jobcentre"])
def test_unknown_kind(kind: str) -> None:
    result = parse(f"{HEADER}\nX1,{kind},Some office,Some district,Wales\n")
    expected = "kind is empty" if kind == "" else f"kind {kind!r} is not one of"
    assert [e.line for e in result.errors] == [2]
    assert result.errors[0].message.startswith(expected)


def test_duplicate_office_ids_are_errors() -> None:
    text = (
        HEADER + "\n"
        "JC0101,JOBCENTRE,Bolton Jobcentre,Greater Manchester East,North West\n"
        "JC0102,JOBCENTRE,Bury Jobcentre,Greater Manchester East,North West\n"
        "JC0101,JOBCENTRE,Bolton Jobcentre,Greater Manchester East,North West\n"
        "jc0102,JOBCENTRE,Bury Jobcentre (again),Greater Manchester East,North West\n"
    )
    result = parse(text)
    assert problems(result) == [
        (4, "duplicate office_id 'JC0101' (first on line 2)"),
        (5, "office_id 'jc0102' differs only in case from 'JC0102' on line 3"),
    ]


def test_a_duplicate_is_reported_beside_the_row_s_other_problems() -> None:
    text = (
        HEADER + "\n"
        "BDC01,BDC,Wigan Benefit Delivery Centre,Benefit Delivery Directorate,North West\n"
        "BDC01,BDCX,Leeds Benefit Delivery Centre,Benefit Delivery Directorate,Yorkshire\n"
    )
    assert problems(parse(text)) == [
        (3, "duplicate office_id 'BDC01' (first on line 2)"),
        (3, "kind 'BDCX' is not one of CONTACT_CENTRE, BDC, JOBCENTRE"),
    ]


def test_a_district_belongs_to_one_region() -> None:
    text = (
        HEADER + "\n"
        "JC0101,JOBCENTRE,Bolton Jobcentre,Greater Manchester East,North West\n"
        "JC0102,JOBCENTRE,Leeds Jobcentre,Greater Manchester East,Yorkshire and the Humber\n"
        # Contact Centres share their directorate 'district' across regions: allowed.
        "CC01,CONTACT_CENTRE,Bolton Contact Centre,Contact Centre Directorate,North West\n"
        "CC02,CONTACT_CENTRE,Glasgow Contact Centre,Contact Centre Directorate,Scotland\n"
    )
    assert problems(parse(text)) == [
        (3, "district 'Greater Manchester East' is in region 'North West' (line 2), not "
            "'Yorkshire and the Humber': a district belongs to one region"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "office_id,kind,name,district",
            "missing column(s) 'region'; the header must be office_id,kind,name,district,region",
        ),
        (
            "office_id,type,name,district,region",
            "missing column(s) 'kind'; the header must be office_id,kind,name,district,region",
        ),
        (
            "office_id,kind,name,district,region,phone",
            "unknown column(s) 'phone'; the header must be office_id,kind,name,district,region",
        ),
        (
            "office_id,kind,name,district,region,name",
            "column(s) 'name' appear more than once",
        ),
    ],
)
def test_header_problems_stop_the_parse(header: str, message: str) -> None:
    result = parse(f"{header}\nJC0101,JOBCENTRE,Bolton Jobcentre,GM East,North West\n")
    assert message in [m for _, m in problems(result)]
    assert all(e.line == 1 for e in result.errors)
    assert result.events == []


def test_missing_column_and_unknown_column_together() -> None:
    result = parse("office_id,kind,name,distrct,region\nX1,BDC,A BDC,D,Wales\n")
    assert problems(result) == [
        (1, "missing column(s) 'district'; the header must be office_id,kind,name,district,region"),
        (1, "unknown column(s) 'distrct'; the header must be office_id,kind,name,district,region"),
    ]


def test_empty_file_and_header_only() -> None:
    assert problems(parse("")) == [
        (1, "the file is empty; expected the header office_id,kind,name,district,region")
    ]
    assert problems(parse("\n\n")) == problems(parse(""))
    assert problems(parse(HEADER + "\n")) == [(1, "the file has a header but no offices")]
    assert problems(parse(HEADER + "\n\n\n")) == [(3, "the file has a header but no offices")]


def test_line_numbers_follow_quoted_fields_that_span_lines() -> None:
    text = (
        HEADER + "\n"
        'JC0101,JOBCENTRE,"Bolton\nJobcentre",Greater Manchester East,North West\n'  # lines 2-3
        "JC0102,JOBCENTRE,Bury Jobcentre,Greater Manchester East\n"  # line 4
    )
    result = parse(text)
    assert problems(result) == [
        (4, "4 field(s) where the header has 5 (office_id,kind,name,district,region)")
    ]
    assert result.events[0].data.name == "Bolton\nJobcentre"


def test_malformed_csv_is_an_error_with_its_line() -> None:
    unterminated = HEADER + '\nJC0101,JOBCENTRE,Bolton Jobcentre,GM East,North West\nX,"Bury\n'
    assert problems(parse(unterminated)) == [
        (3, "malformed CSV (unexpected end of data); the rest of the file was not read")
    ]
    stray_quote = (
        HEADER + "\n"
        'JC0101,JOBCENTRE,"Bolton" Jobcentre,GM East,North West\n'
        "JC0102,JOBCENTRE,Bury Jobcentre,GM East,North West\n"
    )
    result = parse(stray_quote)
    assert problems(result) == [
        (2, "malformed CSV (',' expected after '\"'); the rest of the file was not read")
    ]
    assert result.events == []


def test_byte_order_mark_and_crlf_are_accepted() -> None:
    text = "\ufeff" + GOOD.replace("\n", "\r\n")
    result = parse(text)
    assert result.ok
    assert [e.id for e in result.events] == [e.id for e in parse(GOOD).events]


def test_event_time_must_be_aware_and_keeps_its_offset() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse(GOOD, time=datetime(2007, 4, 1, 9, 0))
    bst = timezone(timedelta(hours=1))
    result = parse(GOOD, time=datetime(2007, 6, 4, 10, 15, tzinfo=bst))
    assert result.events[0].time.utcoffset() == timedelta(hours=1)


def test_summary_counts_offices_by_kind() -> None:
    summary = summarise(parse(GOOD).events)
    assert summary.by_kind == {
        OfficeKind.CONTACT_CENTRE: 1,
        OfficeKind.BDC: 1,
        OfficeKind.JOBCENTRE: 3,
    }
    assert summary.total == 5
    assert (summary.districts, summary.regions) == (2, 2)


def test_the_shipped_registry_is_valid_and_realistic() -> None:
    result = read_registry(DEFAULT_OFFICES, time=AS_OF)
    assert result.errors == []
    offices = [e.data for e in result.events]
    by_kind: dict[OfficeKind, list[str]] = defaultdict(list)
    for o in offices:
        by_kind[o.kind].append(o.office_id)
    jobcentres = [o for o in offices if o.kind is OfficeKind.JOBCENTRE]

    assert 30 <= len(jobcentres) <= 60
    assert all(re.fullmatch(r"JC\d{4}", o.office_id) for o in jobcentres)
    assert all(o.name.endswith(" Jobcentre") for o in jobcentres)
    assert 4 <= len(by_kind[OfficeKind.CONTACT_CENTRE]) <= 6
    assert all(re.fullmatch(r"CC\d{2}", i) for i in by_kind[OfficeKind.CONTACT_CENTRE])
    assert 4 <= len(by_kind[OfficeKind.BDC]) <= 6
    assert all(re.fullmatch(r"BDC\d{2}", i) for i in by_kind[OfficeKind.BDC])
    for o in offices:
        if o.kind is OfficeKind.CONTACT_CENTRE:
            assert o.district == "Contact Centre Directorate"
        if o.kind is OfficeKind.BDC:
            assert o.district == "Benefit Delivery Directorate"

    districts_by_region: dict[str, set[str]] = defaultdict(set)
    for o in jobcentres:
        districts_by_region[o.region].add(o.district)
    assert len(districts_by_region) >= 5
    assert all(len(d) >= 2 for d in districts_by_region.values()), districts_by_region
    assert {"London", "North West", "Scotland", "Wales"} <= set(districts_by_region)
    # Contact Centres and BDCs sit in regions that have Jobcentres.
    assert {o.region for o in offices} == set(districts_by_region)
    # The ids the other tests and the samples rely on.
    names = {o.office_id: o.name for o in offices}
    assert names["CC01"] == "Bolton Contact Centre"
    assert names["BDC01"] == "Wigan Benefit Delivery Centre"
    assert names["JC0101"] == "Bolton Jobcentre"
    assert len({e.id for e in result.events}) == len(offices)
