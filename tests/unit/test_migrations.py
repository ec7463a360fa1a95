"""Schemas come from migrations: each service's migrations build exactly its models."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from idt_runtime.db import make_engine, migrate

SERVICES = ["contact_centre", "bdc", "scheduler", "scoring"]


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_the_models(service, tmp_path):
    spec = importlib.import_module(f"services.{service}.app").SPEC
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")
    migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")  # idempotent

    def mine(obj, name, type_, *_):
        return type_ != "table" or bool(name and name.startswith(spec.prefix + "_"))

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_object": mine,
                "compare_type": True,
                "version_table": f"{spec.prefix}_alembic_version",
            },
        )
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], f"models and migrations of {service} differ; run idt_runtime.revision"
