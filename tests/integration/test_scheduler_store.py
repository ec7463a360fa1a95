"""The scheduler's store as migrated: the sweep's finds go by index, and the indexes
no query used (each written at every event) are gone."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import event, inspect
from sqlmodel import Session, select

from idt_runtime.db import make_engine, migrate
from services.scheduler.app import SPEC
from services.scheduler.handlers import NEVER_EVALUATED, REACHED, open_windows_by_district
from services.scheduler.models import SchClock, SchOffice, SchWindow


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


def test_a_scrape_counts_open_windows_from_an_index_alone(tmp_path):  # type: ignore[no-untyped-def]
    """`idt_windows_open` / `idt_windows_at_risk` are read at every scrape. Counted
    through rows, a scrape read every open window's row: 2.3 GB from a cold page
    cache after a 10M replay (743k open windows), pushing through the page cache
    what the claim events need. The plan must not touch the table."""
    engine = make_engine(f"sqlite:///{tmp_path}/sch.db")
    migrate(engine, SPEC.migrations, "sch_alembic_version")
    statements: list[tuple[str, object]] = []

    def note(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if "sch_windows" in statement:
            statements.append((statement, parameters))

    try:
        with Session(engine) as s, s.begin():
            s.add(SchClock(id=1, time_key="t", as_of=date(2026, 11, 24)))
            s.add(SchOffice(office_id="JC1", kind="JOBCENTRE", name="JC 1", district="North",
                            time_key="t", event_id="e"))  # fmt: skip
            for i, (status, closes, booking) in enumerate(
                [("OPEN", date(2026, 11, 30), None), ("OPEN", date(2027, 1, 30), None),
                 ("UPCOMING", date(2026, 11, 26), "BOOKED"), ("MET", date(2026, 11, 1), None)]
            ):  # fmt: skip
                s.add(SchWindow(window_id=f"W{i}", basis="policy", claim_id=f"C{i}",
                                element="IB", intervention="WFI", seq=1, opens=date(2026, 11, 1),
                                closes=closes, status=status, jobcentre_id="JC1",
                                booking_state=booking))  # fmt: skip
        event.listen(engine, "before_cursor_execute", note)
        with Session(engine) as s:  # the scrape reads through `reading`: the same SQL
            opened, at_risk = open_windows_by_district(s, 14)
        event.remove(engine, "before_cursor_execute", note)
        assert opened == {("IB", "North"): 3} and at_risk == {("IB", "North"): 1}
        (statement, parameters), *_ = statements
        with engine.connect() as c:
            plan = " | ".join(
                r[-1] for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
        assert "USING COVERING INDEX ix_sch_windows_open" in plan, plan
        names = {i["name"] for i in inspect(engine).get_indexes("sch_windows")}
        assert "ix_sch_windows_status" not in names, names  # the new index leads with it
    finally:
        engine.dispose()


def test_claim_events_are_stored_as_read_from_the_stream(tmp_path):  # type: ignore[no-untyped-def]
    """Through the consumer's batch commit the scheduler keeps each claim event's
    bytes as they came off the stream (validated from them), not encoded again;
    applied by anything else, the event is encoded."""
    import json

    from idt_contract import decode_entry, encode, stream_for
    from idt_contract.streams import DATA_FIELD_B
    from idt_runtime.consumer import EventConsumer, RawEntry
    from services.scheduler.handlers import Scheduler
    from services.scheduler.models import SchEvent
    from tests.samples import sample

    engine = make_engine(f"sqlite:///{tmp_path}/sch.db")
    migrate(engine, SPEC.migrations, "sch_alembic_version")
    try:
        scheduler = Scheduler()
        consumer = EventConsumer(
            service="scheduler", group="g", consumer="c", engine=engine, tables=SPEC.tables,
            appliers=scheduler.appliers(), redis=None, metrics=None,  # type: ignore[arg-type]
        )  # fmt: skip
        stream = stream_for("claim-registered")
        # Spaced, keys in another order: valid, but not how `encode` writes it.
        wire = json.dumps(sample("claim-registered"), indent=2, sort_keys=True).encode()
        entry = RawEntry(stream, "1-0", {DATA_FIELD_B: wire})
        event = decode_entry(stream, entry.fields)
        assert encode(event) != wire
        consumer._commit_batches([(stream, [(entry, event)])])

        other = decode_entry(
            stream, {DATA_FIELD_B: json.dumps(sample("claim-registered", id="direct")).encode()}
        )
        with Session(engine) as s, s.begin():
            scheduler.apply_claim_events(s, [other])

        with Session(engine) as s:
            stored = dict(s.exec(select(SchEvent.event_id, SchEvent.payload)).all())
        assert bytes(stored[event.id]) == wire
        assert bytes(stored["direct"]) == encode(other)
    finally:
        engine.dispose()
