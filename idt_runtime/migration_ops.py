"""Operations several services' migrations share. A migration that calls one
keeps calling it as it is: change what these do only by adding a new one."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

#: What an unnamed UNIQUE constraint on `event_id` is called while SQLite's copy of
#: the table is rebuilt (Alembic's batch mode names it by this convention).
_SQLITE_UQ = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def drop_outbox_event_id_unique(table: str) -> None:
    """Drop the UNIQUE constraint the initial schemas put, unnamed, on the outbox's
    `event_id` (and with it its index). SQLite cannot drop a constraint: the table
    is copied into a new one without it (the outbox holds at most an hour of rows
    once pruned, so this takes seconds at most). PostgreSQL named it itself."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(table, recreate="always", naming_convention=_SQLITE_UQ) as b:
            b.drop_constraint(f"uq_{table}_event_id", type_="unique")
        return
    for uc in sa.inspect(bind).get_unique_constraints(table):
        if uc["column_names"] == ["event_id"] and uc["name"]:
            op.drop_constraint(uc["name"], table, type_="unique")


def restore_outbox_event_id_unique(table: str) -> None:
    """Undo `drop_outbox_event_id_unique` (fails if an event id is queued twice)."""
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(table, recreate="always") as b:
            b.create_unique_constraint(f"uq_{table}_event_id", ["event_id"])
        return
    op.create_unique_constraint(f"{table}_event_id_key", table, ["event_id"])


def index_outbox_pending(table: str) -> None:
    """Index the outbox's waiting rows apart (`ix_<table>_pending`, on `seq`, of
    the rows not yet published) and the published ones by when (the index on
    `published_at` becomes partial: only published rows). The relay's query for
    its next batch then reads only waiting rows; with the one index on
    `published_at`, PostgreSQL walked an entry for every row's unpublished
    version not yet vacuumed (idt_runtime/db.py, runtime_tables). The outbox
    holds at most an hour of rows once pruned: seconds at most."""
    pending, published = sa.text("published_at IS NULL"), sa.text("published_at IS NOT NULL")
    op.drop_index(f"ix_{table}_published_at", table_name=table)
    op.create_index(
        f"ix_{table}_published_at",
        table,
        ["published_at"],
        sqlite_where=published,
        postgresql_where=published,
    )
    op.create_index(
        f"ix_{table}_pending", table, ["seq"], sqlite_where=pending, postgresql_where=pending
    )


def unindex_outbox_pending(table: str) -> None:
    """Undo `index_outbox_pending`: one index on `published_at`, every row in it."""
    op.drop_index(f"ix_{table}_pending", table_name=table)
    op.drop_index(f"ix_{table}_published_at", table_name=table)
    op.create_index(f"ix_{table}_published_at", table, ["published_at"])
