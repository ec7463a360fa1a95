"""The services' stores: a PostgreSQL database of the bench's own, and what every
store holds after a replay (rows per table, bytes on disk)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from .report import Store

SERVICE_PREFIXES = {"cc": "contact_centre", "bdc": "bdc", "sch": "scheduler", "sco": "scoring"}


def psycopg_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class PostgresDatabase:
    """`CREATE DATABASE idt_bench_<random>` on the server of `server_url`, dropped
    (WITH (FORCE)) by `drop`."""

    def __init__(self, server_url: str) -> None:
        self.server_url = psycopg_url(server_url)
        self.name = f"idt_bench_{uuid.uuid4().hex[:12]}"
        self.created = False

    @property
    def url(self) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)
        )

    def _admin_exec(self, sql: str) -> None:
        import sqlalchemy

        admin = sqlalchemy.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(sql)
        finally:
            admin.dispose()

    def create(self) -> str:
        self._admin_exec(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self.url

    def drop(self) -> None:
        if self.created:
            self._admin_exec(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False


def postgres_version(server_url: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(psycopg_url(server_url))
    try:
        with engine.connect() as c:
            return str(c.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


def sqlite_stores(var_dir: Path) -> list[Store]:
    """Every SQLite file under the services' var dir: tables' rows, bytes with WAL."""
    out: list[Store] = []
    for db in sorted(var_dir.glob("*.db")):
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            tables = tuple(
                (name, int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]))  # noqa: S608
                for name in names
            )
        finally:
            conn.close()
        out.append(Store(db.stem, size, tables))
    return out


def postgres_stores(database_url: str) -> list[Store]:
    """The bench database's tables, grouped by service prefix (`cc_`, `sch_`, ...)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(psycopg_url(database_url))
    groups: dict[str, list[tuple[str, int, int]]] = {}
    try:
        with engine.connect() as c:
            names = [
                str(row[0])
                for row in c.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                )
            ]
            for name in names:
                rows = int(c.exec_driver_sql(f'SELECT count(*) FROM "{name}"').scalar() or 0)  # noqa: S608
                size = int(
                    c.exec_driver_sql(
                        "SELECT pg_total_relation_size(%(t)s::regclass)", {"t": f'"{name}"'}
                    ).scalar()
                    or 0
                )
                service = SERVICE_PREFIXES.get(name.split("_", 1)[0], "other")
                groups.setdefault(service, []).append((name, rows, size))
    finally:
        engine.dispose()
    return [
        Store(f"{service} (PostgreSQL)", sum(s for _, _, s in t), tuple((a, b) for a, b, _ in t))
        for service, t in sorted(groups.items())
    ]
