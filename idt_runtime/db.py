"""Storage: one engine per service, SQLite by default, PostgreSQL by URL.

Every service's tables carry its prefix (`cc_`, `bdc_`, ...), so all services can
share one PostgreSQL database. Schemas are created by Alembic migrations
(`services/<name>/migrations`), never by `create_all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
)
from sqlalchemy.engine import Engine
from sqlmodel import create_engine


def make_engine(url: str) -> Engine:
    """An engine; for SQLite: WAL, a busy timeout and the file's folder created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class RuntimeTables:
    """The tables every consuming/publishing service keeps beside its own."""

    processed: Table
    outbox: Table


def runtime_tables(prefix: str, metadata: MetaData) -> RuntimeTables:
    processed = Table(
        f"{prefix}_processed_events",
        metadata,
        Column("event_id", String(128), primary_key=True),
        Column("stream", String(200), nullable=False),
        Column("entry_id", String(40), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )
    outbox = Table(
        f"{prefix}_outbox",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(128), nullable=False, unique=True),
        Column("stream", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )
    return RuntimeTables(processed=processed, outbox=outbox)


def migrate(engine: Engine, script_location: Path, version_table: str) -> None:
    """Bring the service's schema to the newest migration."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = version_table
        command.upgrade(cfg, "head")
