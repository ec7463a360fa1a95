"""idt_runtime.bulk (the hot paths' inserts and updates) and the scheduler's
database-side window counts, on SQLite and PostgreSQL: what is written must read
back exactly as SQLAlchemy's own statements would have written it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    insert,
    select,
)
from sqlmodel import Session

from idt_runtime.bulk import bulk_insert, bulk_update_by_pk
from idt_runtime.db import make_engine, migrate
from services.scheduler.app import SPEC
from services.scheduler.handlers import open_windows_by_district
from services.scheduler.models import SchClock, SchOffice, SchWindow


@pytest.fixture
def engine(database_url, tmp_path):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/bulk.db")
    yield engine
    engine.dispose()


def naive(moment: Any) -> datetime | None:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment else None


def sample_table() -> Table:
    return Table(
        "bulk_sample",
        MetaData(),
        Column("k1", String(20), primary_key=True),
        Column("k2", Integer, primary_key=True),
        Column("day", Date, nullable=True),
        Column("at", DateTime(timezone=True), nullable=True),
        Column("flag", Boolean, nullable=False),
        Column("blob", LargeBinary, nullable=True),
        Column("text", String(50), nullable=True),
    )


def test_bulk_rows_read_back_as_sqlalchemy_writes_them(engine) -> None:  # type: ignore[no-untyped-def]
    t = sample_table()
    t.metadata.create_all(engine)
    at = datetime(2007, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    rows = [
        {"k1": "a", "k2": 1, "day": date(2007, 1, 2), "at": at, "flag": True,
         "blob": b"\x00\xff", "text": "x"},
        {"k1": "a", "k2": 2, "day": None, "at": None, "flag": False, "blob": None,
         "text": None},
    ]  # fmt: skip
    # A row with fewer keys goes in its own statement (defaults for the rest).
    partial = [{"k1": "b", "k2": 1, "flag": True}]
    with Session(engine) as s, s.begin():
        bulk_insert(s, t, rows + partial)
        s.execute(insert(t), [{**r, "k1": "ref"} for r in rows])  # SQLAlchemy's own
    with Session(engine) as s:
        got = {(r.k1, r.k2): r._asdict() for r in s.execute(select(t))}
    for r in rows:
        mine, ref = got[("a", r["k2"])], got[("ref", r["k2"])]
        assert {**mine, "k1": "ref"} == ref
        # (SQLite gives back naive datetimes, whoever wrote them: SQLAlchemy's own.)
        assert {**mine, "at": naive(mine["at"])} == {**r, "at": naive(r["at"])}
    assert got[("b", 1)]["day"] is None and got[("b", 1)]["flag"] is True

    with Session(engine) as s, s.begin():
        bulk_update_by_pk(s, t, [
            {"k1": "a", "k2": 1, "day": None, "flag": False, "text": "changed"},
            {"k1": "a", "k2": 2, "day": date(2008, 2, 29), "flag": True, "text": None},
        ])  # fmt: skip
    with Session(engine) as s:
        got = {(r.k1, r.k2): r._asdict() for r in s.execute(select(t))}
    got = {k: {**v, "at": naive(v["at"])} for k, v in got.items()}
    first = {**rows[0], "at": naive(at)}
    assert got[("a", 1)] == {**first, "day": None, "flag": False, "text": "changed"}
    assert got[("a", 2)] == {**rows[1], "day": date(2008, 2, 29), "flag": True}
    assert got[("ref", 1)] == {**first, "k1": "ref"}  # the key chose the row

    with Session(engine) as s, s.begin(), pytest.raises(ValueError, match="key columns"):
        bulk_update_by_pk(s, t, [{"k1": "a", "flag": True}])


def test_open_and_at_risk_windows_are_counted_by_the_database(engine) -> None:  # type: ignore[no-untyped-def]
    migrate(engine, SPEC.migrations, "sch_alembic_version")
    as_of = date(2007, 3, 1)

    def window(n: int, *, element: str = "IB", jc: str | None = "JC1", closes_in: int = 30,
               booking: str | None = None, status: str = "OPEN", basis: str = "policy",
               exists: bool = True) -> dict[str, Any]:  # fmt: skip
        return {
            "window_id": f"W{n}", "basis": basis, "claim_id": f"C{n}", "element": element,
            "intervention": "IB_INITIAL_WFI", "seq": 1, "opens": as_of - timedelta(days=5),
            "closes": as_of + timedelta(days=closes_in), "status": status,
            "jobcentre_id": jc, "booking_state": booking, "revision": 0, "exists_now": exists,
        }  # fmt: skip

    rows = [
        window(1),  # open, not at risk
        window(2, closes_in=7),  # at risk: closes within 7 days, nothing booked
        window(3, closes_in=7, booking="BOOKED"),  # booked: not at risk
        window(4, closes_in=0, booking="OUTSIDE_WINDOW"),  # a booking outside: at risk
        window(5, closes_in=8),  # just outside the alert period
        window(6, jc="CC1", closes_in=3),  # a Contact Centre marker: UNALLOCATED
        window(7, jc=None, element="JSA", status="UPCOMING", closes_in=60),
        window(8, status="MET"),  # decided: not counted
        window(9, basis="measured"),  # the policy basis only
        window(10, exists=False),  # withdrawn
        window(11, jc="JC2", closes_in=1, booking="CONDUCTED"),
    ]
    with Session(engine) as s, s.begin():
        s.add(SchClock(id=1, time_key="2007-03-01T01:00:00.000000Z", as_of=as_of))
        for oid, kind, district in [("JC1", "JOBCENTRE", "North"), ("JC2", "JOBCENTRE", "South"),
                                    ("CC1", "CONTACT_CENTRE", "North")]:  # fmt: skip
            s.add(SchOffice(office_id=oid, kind=kind, name=oid, district=district,
                            time_key="t", event_id=oid))  # fmt: skip
        s.flush()
        bulk_insert(s, SchWindow.__table__, rows)  # type: ignore[attr-defined]
    with Session(engine) as s:
        opened, at_risk = open_windows_by_district(s, closing_days=7)
    assert opened == {("IB", "North"): 5, ("IB", "UNALLOCATED"): 1, ("JSA", "UNALLOCATED"): 1,
                      ("IB", "South"): 1}  # fmt: skip
    assert at_risk == {("IB", "North"): 2, ("IB", "UNALLOCATED"): 1}
