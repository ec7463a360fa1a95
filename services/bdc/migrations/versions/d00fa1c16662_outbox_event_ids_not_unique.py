"""outbox event ids not unique

The outbox's event ids stop being unique, and lose their index: nothing looks an
outbox row up by event id, and being random they made every queued event write an
index page of its own (idt_runtime/db.py, runtime_tables).

Revision ID: d00fa1c16662
Revises: 47eb45cd8312
Create Date: 2026-11-24 03:25:13.818356
"""

from collections.abc import Sequence

from idt_runtime.migration_ops import (
    drop_outbox_event_id_unique,
    restore_outbox_event_id_unique,
)


revision: str = 'd00fa1c16662'
down_revision: str | None = '47eb45cd8312'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    drop_outbox_event_id_unique('bdc_outbox')


def downgrade() -> None:
    restore_outbox_event_id_unique('bdc_outbox')
