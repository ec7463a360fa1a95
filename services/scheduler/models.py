"""The scheduler's own store (tables prefixed `sch_`)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Column, Index, LargeBinary, Text, column
from sqlmodel import Field, SQLModel

from idt_runtime.db import runtime_tables

PREFIX = "sch"


class SchEvent(SQLModel, table=True):
    """Every claim event, kept whole: the claim's timeline (`claim_view`), and the
    facts of a claim stored before facts were kept (`sch_claims.facts`)."""

    __tablename__ = "sch_events"
    # Rows are appended in the order applied (`seq`, SQLite's rowid) and found by
    # claim. The event id is neither a key nor indexed: the consumer stores an
    # event only if its id is not in `sch_processed_events`, and records it there
    # in the same transaction, so a second index of random ids, a page written for
    # nearly every event, only repeated that check (10M entries after a 10M replay).
    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=128)
    claim_id: str = Field(index=True, max_length=64)
    type: str = Field(max_length=40)
    time_key: str = Field(max_length=40)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SchClaim(SQLModel, table=True):
    """One row per claim: the lock that serialises its recomputation, and when to
    look at it again."""

    __tablename__ = "sch_claims"
    # The sweep's two finds (`due_claims`), in the order it takes claims, so that
    # each reads no more entries than it returns: claims never evaluated with a
    # business date (partial, so that an evaluation moving `evaluated_as_of` from
    # one date to the next writes no index page: a full index on it did, for 4% of
    # the WAL), and claims by `next_check`.
    __table_args__ = (
        Index(
            "ix_sch_claims_never_evaluated",
            "claim_id",
            sqlite_where=column("evaluated_as_of").is_(None),
            postgresql_where=column("evaluated_as_of").is_(None),
        ),
        Index("ix_sch_claims_due", "next_check", "claim_id"),
    )
    claim_id: str = Field(primary_key=True, max_length=64)
    next_check: date | None = None
    jobcentre_marker: str | None = Field(default=None, index=True, max_length=32)
    evaluated_as_of: date | None = None
    #: What the rules need of each of the claim's events (`domain.fact_of`), a JSON
    #: list; NULL for a claim stored before facts were kept (read from its events).
    facts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SchOffice(SQLModel, table=True):
    __tablename__ = "sch_offices"
    office_id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=20)
    name: str = Field(max_length=200)
    district: str = Field(default="", max_length=200)
    region: str = Field(default="", max_length=200)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class SchClock(SQLModel, table=True):
    """Business time: the latest `clock-tick` (ticks only move it forward)."""

    __tablename__ = "sch_clock"
    id: int = Field(default=1, primary_key=True)
    time_key: str = Field(max_length=40)
    as_of: date


class SchWindow(SQLModel, table=True):
    """A window on one basis as last evaluated, and the last outcome published."""

    __tablename__ = "sch_windows"
    # What the scrape counts (`open_windows_by_district`: windows open or upcoming,
    # by element and Jobcentre, and those closing unbooked) read from this index
    # alone. Counting through an index on `status` read every open window's row:
    # after a 10M replay (743k open of 4.3M windows) a scrape read 2.3 GB from a
    # cold page cache (5.1 s), and every scrape pushed that much of the table
    # through the page cache the claim events need; from this index, 53 MB (0.6
    # s). It leads with `status`, so it serves the finds by status as well.
    # Within an element and Jobcentre entries go by `closes`, so new windows land
    # near the end and the windows closing near the start: few pages are written.
    __table_args__ = (
        Index(
            "ix_sch_windows_open",
            "status",
            "basis",
            "exists_now",
            "element",
            "jobcentre_id",
            "closes",
            "booking_state",
        ),
    )
    window_id: str = Field(primary_key=True, max_length=160)
    basis: str = Field(primary_key=True, max_length=10)
    claim_id: str = Field(index=True, max_length=64)
    element: str = Field(max_length=4)
    intervention: str = Field(max_length=20)
    seq: int
    opens: date
    closes: date
    status: str = Field(max_length=12)
    outcome_date: date | None = None
    jobcentre_id: str | None = Field(default=None, index=True, max_length=32)
    stage: str | None = Field(default=None, max_length=16)
    stage_days: str | None = Field(default=None, max_length=200)
    clock_start: date | None = None
    early_interviews: str | None = Field(default=None, max_length=400)
    late_interview: date | None = None
    booking_slot: date | None = None
    booking_state: str | None = Field(default=None, max_length=20)
    revision: int = 0
    published: str | None = Field(default=None, max_length=200)
    exists_now: bool = True


class SchAlert(SQLModel, table=True):
    """Alerts published, by key: an alert is never published twice."""

    __tablename__ = "sch_alerts"
    key: str = Field(primary_key=True, max_length=240)
    kind: str = Field(max_length=30)
    office_id: str = Field(max_length=32)
    claim_id: str = Field(max_length=64, index=True)
    event_id: str = Field(max_length=128)


TABLES = runtime_tables(PREFIX, SQLModel.metadata)
