"""The scheduler's store as migrated: the sweep's finds go by index, and the indexes
no query used (each written at every event) are gone."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import inspect

from idt_runtime.db import make_engine, migrate
from services.scheduler.app import SPEC
from services.scheduler.handlers import NEVER_EVALUATED, REACHED


@pytest.mark.parametrize(
    ("query", "index"),
    [(NEVER_EVALUATED, "ix_sch_claims_never_evaluated"), (REACHED, "ix_sch_claims_due")],
)
def test_the_sweep_finds_due_claims_by_index(query, index, tmp_path):  # type: ignore[no-untyped-def]
    """The sweeper asks before every chunk of 25 claims, under the write lock: a
    scan of `sch_claims` (a row per claim, with its facts) would cost more than
    the chunk."""
    engine = make_engine(f"sqlite:///{tmp_path}/sch.db")
    migrate(engine, SPEC.migrations, "sch_alembic_version")
    try:
        bound = query.params(as_of=date(2026, 11, 24), limit=25)
        sql = bound.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as c:
            plan = " | ".join(r[-1] for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert index in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # already in order: stops at the limit
    finally:
        engine.dispose()


def test_the_indexes_no_query_used_are_gone(tmp_path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path}/sch.db")
    migrate(engine, SPEC.migrations, "sch_alembic_version")
    try:
        names = {
            i["name"]
            for t in ("sch_claims", "sch_windows", "sch_alerts", "sch_outbox")
            for i in inspect(engine).get_indexes(t)
        }
        gone = {
            "ix_sch_claims_evaluated_as_of",
            "ix_sch_claims_next_check",
            "ix_sch_windows_closes",
            "ix_sch_alerts_office_id",
        }
        assert names.isdisjoint(gone), names
        assert {"ix_sch_claims_never_evaluated", "ix_sch_claims_due"} <= names
    finally:
        engine.dispose()
