"""The body of every service's Alembic `env.py` (online mode only, on the
connection the service hands over, or on `sqlalchemy.url` for the CLI)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, engine_from_config, pool


def run(context: Any, metadata: MetaData, prefix: str) -> None:
    config = context.config
    version_table = config.attributes.get("version_table", f"{prefix}_alembic_version")

    def include_object(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
        if type_ == "table":
            return bool(name and name.startswith(prefix + "_"))
        return True

    def configure(connection: Any) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            include_object=include_object,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        configure(conn)
        conn.commit()
