"""events keyed by arrival, not by event id

`sch_events` loses its primary key on `event_id` (and with it SQLite's index of
random ids, a page written for nearly every event) and is keyed by `seq`, the
order events were stored in (SQLite's rowid). Nothing looked events up by id but
the applier, repeating the consumer's check in `sch_processed_events`; the claim
view reads them by claim (`ix_sch_events_claim_id`, kept).

SQLite cannot change a primary key: the table is copied into a new one, in the
order it was written (about a minute and the table's size again on disk per 10M
events: docs/deployment.md). PostgreSQL alters it in place (a rewrite to add `seq`).

Revision ID: a99be6998a94
Revises: 741cd2a64e54
Create Date: 2026-11-24 20:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = 'a99be6998a94'
down_revision: str | None = '741cd2a64e54'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("event_id", "claim_id", "type", "time_key", "payload")


def _event_columns() -> list[sa.Column]:
    return [
        sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('claim_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('time_key', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=False),
    ]


def _sqlite_copy(*key: sa.Column | sa.PrimaryKeyConstraint) -> None:
    """Copy sch_events, in the order its rows were written, into a new table with
    `key` as its primary key, and put it in the old one's place."""
    op.create_table('sch_events_copy', *key, *_event_columns())
    cols = ", ".join(_COLUMNS)
    op.execute(f"INSERT INTO sch_events_copy ({cols}) SELECT {cols} FROM sch_events ORDER BY rowid")
    op.drop_table('sch_events')  # and its index
    op.rename_table('sch_events_copy', 'sch_events')
    op.create_index('ix_sch_events_claim_id', 'sch_events', ['claim_id'], unique=False)


def _primary_key_name() -> str:
    name = sa.inspect(op.get_bind()).get_pk_constraint('sch_events')['name']
    return name or 'sch_events_pkey'


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(sa.Column('seq', sa.Integer(), primary_key=True))
        return
    op.drop_constraint(_primary_key_name(), 'sch_events', type_='primary')
    op.execute("ALTER TABLE sch_events ADD COLUMN seq SERIAL PRIMARY KEY")


def downgrade() -> None:
    # Fails if an event was stored twice (the consumer stores an id once).
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(sa.PrimaryKeyConstraint('event_id'))
        return
    op.drop_constraint(_primary_key_name(), 'sch_events', type_='primary')
    op.drop_column('sch_events', 'seq')
    op.create_primary_key('sch_events_pkey', 'sch_events', ['event_id'])
