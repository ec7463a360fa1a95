"""The scoring service's own store (tables prefixed `sco_`)."""

from __future__ import annotations

from datetime import date

from sqlmodel import Field, SQLModel

from idt_runtime.db import runtime_tables

PREFIX = "sco"


class ScoOutcome(SQLModel, table=True):
    """The current outcome of a window on a basis: its highest revision."""

    __tablename__ = "sco_outcomes"
    window_id: str = Field(primary_key=True, max_length=160)
    basis: str = Field(primary_key=True, max_length=10)
    claim_id: str = Field(max_length=64)
    element: str = Field(max_length=4)
    outcome: str = Field(max_length=12)
    outcome_date: date | None = Field(default=None, index=True)
    jobcentre_id: str | None = Field(default=None, max_length=32)
    stage: str | None = Field(default=None, max_length=16)
    revision: int


class ScoCount(SQLModel, table=True):
    """Current outcomes (`sco_outcomes`) counted by basis, month of the outcome
    date, Jobcentre, element, outcome and stage, kept with every revision: scores
    and guard-rails add up at most a year of months, not every outcome of the year
    (a national year is millions). Outcomes without a date count nowhere."""

    __tablename__ = "sco_counts"
    basis: str = Field(primary_key=True, max_length=10)
    month: str = Field(primary_key=True, max_length=7)  # YYYY-MM
    jobcentre_id: str = Field(primary_key=True, max_length=32)  # "" when none
    element: str = Field(primary_key=True, max_length=4)
    outcome: str = Field(primary_key=True, max_length=12)
    stage: str = Field(primary_key=True, max_length=16)  # "" when none
    n: int


class ScoOffice(SQLModel, table=True):
    __tablename__ = "sco_offices"
    office_id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=20)
    name: str = Field(max_length=200)
    district: str = Field(max_length=200)
    region: str = Field(max_length=200)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class ScoClock(SQLModel, table=True):
    __tablename__ = "sco_clock"
    id: int = Field(default=1, primary_key=True)
    time_key: str = Field(max_length=40)
    as_of: date


class ScoInterview(SQLModel, table=True):
    """Interviews conducted (guard-rails: durations, failures to attend)."""

    __tablename__ = "sco_interviews"
    event_id: str = Field(primary_key=True, max_length=128)
    day: date = Field(index=True)
    intervention: str = Field(max_length=20)
    jobcentre_id: str = Field(max_length=32)
    minutes: int


class ScoFailedToAttend(SQLModel, table=True):
    __tablename__ = "sco_failed_to_attend"
    event_id: str = Field(primary_key=True, max_length=128)
    day: date = Field(index=True)
    intervention: str = Field(max_length=20)


class ScoClaim(SQLModel, table=True):
    """Claims by Contact Centre (guard-rail: marker errors)."""

    __tablename__ = "sco_claims"
    claim_id: str = Field(primary_key=True, max_length=64)
    contact_centre_id: str = Field(max_length=32, index=True)
    benefit: str = Field(max_length=8)
    registered_date: date = Field(index=True)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class ScoMarker(SQLModel, table=True):
    __tablename__ = "sco_markers"
    claim_id: str = Field(primary_key=True, max_length=64)
    marker: str = Field(primary_key=True, max_length=20)
    value: str = Field(max_length=32)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class ScoClearance(SQLModel, table=True):
    """The clearance in force per claim (guard-rail: AACT per BDC)."""

    __tablename__ = "sco_clearances"
    claim_id: str = Field(primary_key=True, max_length=64)
    bdc_id: str = Field(max_length=32, index=True)
    received_date: date
    cleared_date: date = Field(index=True)
    working_days: int
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


TABLES = runtime_tables(PREFIX, SQLModel.metadata)
