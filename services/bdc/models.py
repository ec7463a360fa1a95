"""The BDC's own store (tables prefixed `bdc_`).

Two kinds of state: what the bus says (offices, registered claims, the
clearance in force per claim, from every system) and what this intake recorded
(receipt, evidence requests, its own clearance decision).
"""

from __future__ import annotations

from datetime import date

from sqlmodel import Field, SQLModel

from idt_runtime.db import runtime_tables

PREFIX = "bdc"


class BdcOffice(SQLModel, table=True):
    """The office registry as seen on the bus (latest `office-registered` per office)."""

    __tablename__ = "bdc_offices"
    office_id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=20)
    name: str = Field(max_length=200)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class BdcRegisteredClaim(SQLModel, table=True):
    """Claims registered on the bus (`claim-registered`), for the REGISTERED stage."""

    __tablename__ = "bdc_registered_claims"
    claim_id: str = Field(primary_key=True, max_length=64)
    benefit: str = Field(max_length=8)
    claim_start_date: date
    contact_centre_id: str = Field(max_length=32)
    registered_date: date
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class BdcClearance(SQLModel, table=True):
    """The `claim-cleared` in force per claim (latest in event time), from any
    system, this service included. AACT is computed from this table only."""

    __tablename__ = "bdc_clearances"
    claim_id: str = Field(primary_key=True, max_length=64)
    bdc_id: str = Field(max_length=32, index=True)
    outcome: str = Field(max_length=12)
    received_date: date
    cleared_date: date = Field(index=True)
    time_key: str = Field(max_length=40)
    event_id: str = Field(max_length=128)


class BdcIntake(SQLModel, table=True):
    """A claim received through this service's intake, and its local clearance
    (set in the request that publishes `claim-cleared`, before the event returns
    from the bus). `version` is bumped by every command on the claim, with a
    conditional UPDATE, so two concurrent commands cannot both succeed."""

    __tablename__ = "bdc_intake"
    claim_id: str = Field(primary_key=True, max_length=64)
    bdc_id: str = Field(max_length=32, index=True)
    received_date: date
    version: int = 1
    cleared_outcome: str | None = Field(default=None, max_length=12)
    cleared_date: date | None = None
    cleared_time_key: str | None = Field(default=None, max_length=40)
    cleared_event_id: str | None = Field(default=None, max_length=128)


class BdcEvidence(SQLModel, table=True):
    """One evidence request of a received claim. The same kind may be asked for
    again once the earlier request was answered: `request_no` counts the requests
    of that kind (1, 2, ...), and the primary key keeps concurrent duplicates out."""

    __tablename__ = "bdc_evidence"
    claim_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=24)
    request_no: int = Field(primary_key=True)
    requested_date: date
    received_date: date | None = None


TABLES = runtime_tables(PREFIX, SQLModel.metadata)
