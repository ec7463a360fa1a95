"""outbox pending rows indexed apart

The outbox's waiting rows get an index of their own (`ix_sch_outbox_pending`,
on `seq`, partial), and the index on `published_at` holds only published rows:
on PostgreSQL the relay's query for its next batch walked an index entry for
every row's unpublished version not yet vacuumed (0.7 s a batch after a 1M
replay). idt_runtime/db.py, runtime_tables.

Revision ID: 4ec3db8de0f7
Revises: a99be6998a94
Create Date: 2026-11-24 23:40:00.000000
"""

from collections.abc import Sequence

from idt_runtime.migration_ops import index_outbox_pending, unindex_outbox_pending


revision: str = '4ec3db8de0f7'
down_revision: str | None = 'a99be6998a94'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    index_outbox_pending('sch_outbox')


def downgrade() -> None:
    unindex_outbox_pending('sch_outbox')
