"""The Contact Centre's own store (tables prefixed `cc_`)."""

from __future__ import annotations

from datetime import date

from sqlmodel import Field, SQLModel

from idt_runtime.db import runtime_tables

PREFIX = "cc"


class CcOffice(SQLModel, table=True):
    """The office registry as seen on the bus (latest `office-registered` per office)."""

    __tablename__ = "cc_offices"
    office_id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=20)
    name: str = Field(max_length=200)
    district: str = Field(max_length=200)
    region: str = Field(max_length=200)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class CcClaim(SQLModel, table=True):
    """Every claim registered on the bus, from this intake or any legacy system."""

    __tablename__ = "cc_claims"
    claim_id: str = Field(primary_key=True, max_length=64)
    customer_ref: str = Field(max_length=80)
    benefit: str = Field(max_length=8)
    claim_start_date: date
    contact_centre_id: str = Field(max_length=32, index=True)
    registered_date: date
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class CcMarker(SQLModel, table=True):
    """The marker in force: the latest `marker-set` in event time."""

    __tablename__ = "cc_markers"
    claim_id: str = Field(primary_key=True, max_length=64)
    marker: str = Field(primary_key=True, max_length=20)
    value: str = Field(max_length=32)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class CcClearance(SQLModel, table=True):
    """The latest `claim-cleared` of a claim in event time."""

    __tablename__ = "cc_clearances"
    claim_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=12)
    bdc_id: str = Field(max_length=32)
    cleared_date: date
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class CcIntake(SQLModel, table=True):
    """Claims registered through this service's HTTP intake (no NI number is stored)."""

    __tablename__ = "cc_intake"
    claim_id: str = Field(primary_key=True, max_length=64)
    customer_ref: str = Field(max_length=80)
    benefit: str = Field(max_length=8)
    claim_start_date: date
    contact_centre_id: str = Field(max_length=32)


TABLES = runtime_tables(PREFIX, SQLModel.metadata)
