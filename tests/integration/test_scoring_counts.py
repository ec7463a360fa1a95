"""The scoring store's counts (`sco_counts`) against its outcomes, on SQLite and
PostgreSQL: kept through revisions in any order, filled by the migration from
outcomes stored before it, and the marker guard-rail over a national month."""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import event, func, select
from sqlmodel import Session

from idt_runtime.bulk import bulk_insert
from idt_runtime.db import make_engine, migrate
from services.scoring import domain, handlers
from services.scoring.app import SPEC
from services.scoring.models import ScoClaim, ScoCount, ScoMarker, ScoOffice, ScoOutcome
from tests.integration.test_scoring import outcome

OUTCOMES = ["MET", "MISSED", "WAIVED", "DEFERRED", "PENDING", "WITHDRAWN"]
JOBCENTRES = ["JC0101", "JC0102", None]


def _engine(database_url, tmp_path):
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/scoring.db")
    migrate(engine, SPEC.migrations, f"{SPEC.prefix}_alembic_version")
    return engine


def _revision(rng: random.Random, window: str, basis: str, revision: int):
    kind = rng.choice(OUTCOMES)
    dated = kind not in ("PENDING", "WITHDRAWN") or rng.random() < 0.3
    # Across a month's end, so that a revision moves a window between months.
    day = date(2007, 8, 25) + timedelta(rng.randrange(14)) if dated else None
    return outcome(
        window, kind, day.isoformat() if day else None, rng.choice(JOBCENTRES),
        revision=revision, basis=basis,
        stage=rng.choice(["BDC", "JOBCENTRE"]) if kind == "MISSED" else None,
    )  # fmt: skip


def _recount(session: Session) -> dict[tuple[str, ...], int]:
    """`sco_counts` as a recount of the stored outcomes gives it."""
    out: dict[tuple[str, ...], int] = {}
    t = ScoOutcome.__table__  # type: ignore[attr-defined]
    for row in session.execute(select(t)).mappings():
        key = handlers.count_key(row)
        if key is not None:
            out[key] = out.get(key, 0) + 1
    return out


def _counts(session: Session) -> dict[tuple[str, ...], int]:
    t = ScoCount.__table__  # type: ignore[attr-defined]
    cols = ("basis", "month", "jobcentre_id", "element", "outcome", "stage")
    return {
        tuple(r[c] for c in cols): r["n"]
        for r in session.execute(select(t)).mappings()
        if r["n"] != 0
    }


def test_counts_follow_every_revision_in_any_order_and_in_any_batches(database_url, tmp_path):
    rng = random.Random(7)
    windows = [f"C{i}:IB_INITIAL_WFI:1" for i in range(40)]
    events = [
        _revision(rng, w, basis, rev)
        for w in windows
        for basis in ("policy", "measured")
        for rev in range(1, rng.randrange(2, 6))
    ]
    events += rng.sample(events, 30)  # redelivered
    rng.shuffle(events)  # late revisions arrive after newer ones
    engine = _engine(database_url, tmp_path)
    try:
        start = 0
        while start < len(events):
            size = rng.randrange(1, 25)
            with Session(engine) as s, s.begin():
                handlers.apply_outcomes(s, events[start : start + size])
            start += size
        with Session(engine) as s:
            expected = _recount(s)
            assert _counts(s) == expected
            assert sum(expected.values()) > 40  # the test counts something
            # Revisions moved windows between months and Jobcentres.
            assert len({k[1] for k in expected}) == 2 and len({k[2] for k in expected}) == 3
            # The scores read the counts: the month's measured counts of JC0101.
            registry = {"JC0101": domain.Office("JC0101", "JOBCENTRE", "D1", "R1")}
            by_jc = handlers.jobcentre_counts(
                s, "measured", domain.parse_period("2007-08"), registry
            )
            met = sum(
                n for k, n in expected.items()
                if k[:3] == ("measured", "2007-08", "JC0101") and k[4] == "MET"
            )  # fmt: skip
            assert (by_jc["JC0101"]["IB"].met if "JC0101" in by_jc else 0) == met
    finally:
        engine.dispose()


def test_the_migration_counts_the_outcomes_stored_before_it(database_url, tmp_path):
    """A store from before the counts (initial schema, outcomes in it) upgraded:
    the counts are those of its outcomes."""
    engine = make_engine(database_url or f"sqlite:///{tmp_path}/old.db")
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(SPEC.migrations))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = f"{SPEC.prefix}_alembic_version"
            command.upgrade(cfg, "5da60bf56a7b")  # the initial schema
        rows = [
            {"window_id": f"W{i}", "basis": "measured", "claim_id": f"C{i}", "element": "IB",
             "outcome": "MISSED" if i % 3 else "MET", "revision": 1,
             "outcome_date": date(2007, 8, 30) + timedelta(i % 4) if i % 5 else None,
             "jobcentre_id": "JC0101" if i % 2 else None, "stage": "BDC" if i % 3 else None}
            for i in range(30)
        ]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(ScoOutcome.__table__.insert(), rows)  # type: ignore[attr-defined]
        migrate(engine, SPEC.migrations, f"{SPEC.prefix}_alembic_version")
        with Session(engine) as s:
            expected = _recount(s)
            assert _counts(s) == expected
            assert sum(expected.values()) == 24  # the six without a date count nowhere
            assert {k[1] for k in expected} == {"2007-08", "2007-09"}
    finally:
        engine.dispose()


def test_marker_errors_over_more_claims_than_a_statement_takes_parameters(database_url, tmp_path):
    """A national month registers some 400,000 claims: more than one statement can
    name. SQLite's own limit is 32,766 parameters (Debian's build raises it to
    250,000), PostgreSQL's 65,535; here SQLite's is set to its default."""
    engine = _engine(database_url, tmp_path)
    if database_url is None:

        @event.listens_for(engine, "connect")
        def _sqlite_default_limit(dbapi_conn, _record):
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)

        engine.dispose()  # connections from here on have the limit
    n = 40_000
    try:
        with Session(engine) as s, s.begin():
            s.add(ScoOffice(office_id="JC0101", kind="JOBCENTRE", name="JC", district="D1",
                            region="R1", time_key="2007-01-01", event_id="o1"))  # fmt: skip
            bulk_insert(s, ScoClaim.__table__, [  # type: ignore[attr-defined]
                {"claim_id": f"C{i}", "contact_centre_id": "CC01", "benefit": "IB",
                 "registered_date": date(2007, 8, 1 + i % 28), "time_key": "k",
                 "event_id": f"e{i}"}
                for i in range(n)
            ])  # fmt: skip
            bulk_insert(s, ScoMarker.__table__, [  # type: ignore[attr-defined]
                {"claim_id": f"C{i}", "marker": "JOBCENTRE",
                 "value": "JC0101" if i % 4 else "CC01", "time_key": "k", "event_id": f"m{i}"}
                for i in range(0, n, 2)  # half have a marker; half of those name a CC
            ])  # fmt: skip
        with Session(engine) as s:
            found = handlers.marker_errors(s, domain.parse_period("2007-08"))
            total = s.execute(select(func.count()).select_from(ScoClaim)).scalar_one()
            assert total == n
        # No marker (the odd half) or one naming no Jobcentre (a quarter): errors.
        assert found == {"CC01": {"claims": n, "errors": n // 2 + n // 4, "rate": 0.75}}
    finally:
        engine.dispose()
