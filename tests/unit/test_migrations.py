"""Schemas come from migrations: each service's migrations build exactly its models."""

from __future__ import annotations

import importlib
import multiprocessing
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from idt_runtime.db import make_engine, migrate

SERVICES = ["contact_centre", "bdc", "scheduler", "scoring"]


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_the_models(service, tmp_path, database_url):
    spec = importlib.import_module(f"services.{service}.app").SPEC
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/m.db")
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


def _replica(url: str, service: str, start: Any, results: Any) -> None:
    """One replica process starting: migrate its service once all are ready."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    engine = make_engine(url)
    start.wait(60)
    try:
        migrate(engine, spec.migrations, f"{spec.prefix}_alembic_version")
        results.put("ok")
    except Exception as exc:
        results.put(f"{service}: {exc!r}")
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_in_turn(tmp_path, database_url):
    """Two replicas of every service start at once, as separate processes, against
    one database (as in deploy/compose.yaml): each migration runs once, none fails."""
    url = database_url or f"sqlite:///{tmp_path}/shared.db"
    jobs = [s for s in SERVICES for _replica_no in range(2)]
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_replica, args=(url, s, start, results)) for s in jobs]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in jobs]
    for p in procs:
        p.join(30)
    assert outcomes == ["ok"] * len(jobs)
    engine = make_engine(url)
    with engine.connect() as conn:
        for service in SERVICES:
            spec = importlib.import_module(f"services.{service}.app").SPEC
            versions = conn.exec_driver_sql(
                f"SELECT version_num FROM {spec.prefix}_alembic_version"
            ).all()
            assert len(versions) == 1, (service, versions)
    engine.dispose()
