"""`python -m bench.pg_waits` on a real PostgreSQL: a transaction holding the
scheduler's business-time lock shows as idle in transaction, one waiting for it
as waiting on that lock by name, and other databases are left out."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
from sqlalchemy.engine import make_url

from bench.pg_waits import conninfo, lock_names, main, render, sample_once
from idt_runtime.db import advisory_key
from services.scheduler.handlers import STATE_SCOPE


def test_a_backend_waiting_for_a_services_lock_is_named(pg_url, capsys) -> None:  # type: ignore[no-untyped-def]
    database = make_url(pg_url).database
    key = advisory_key(STATE_SCOPE)
    holder = psycopg.connect(conninfo(pg_url))
    waiter = psycopg.connect(conninfo(pg_url))
    looker = psycopg.connect(conninfo(pg_url), autocommit=True)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))  # held: idle in transaction
    waiting = threading.Thread(
        target=lambda: waiter.execute("SELECT pg_advisory_xact_lock_shared(%s)", (key,))
    )
    waiting.start()
    try:
        seen: list[tuple[str, str]] = []
        for _ in range(100):  # until the waiter's statement has reached the lock
            seen = sample_once(looker, database, lock_names())
            if any(what.startswith("waiting") for what, _ in seen):
                break
            threading.Event().wait(0.05)
        assert any(
            w == f"waiting: advisory lock {STATE_SCOPE}" and "pg_advisory_xact_lock_shared" in q
            for w, q in seen
        ), seen
        assert any(
            w.startswith("idle in transaction") and "pg_advisory_xact_lock(" in q for w, q in seen
        ), seen
        # Another database's backends are not counted.
        assert sample_once(looker, database + "_not", lock_names()) == []
    finally:
        holder.rollback()
        waiting.join(10)
        waiter.rollback()
        for c in (holder, waiter, looker):
            c.close()
    assert not waiting.is_alive()
    # The command runs end to end and prints its table.
    assert main([pg_url, "--seconds", "0.3", "--interval", "0.1", "--databases", database]) == 0
    out = capsys.readouterr().out
    assert "looks; backends not idle" in out and "| samples | per look |" in out
    assert "| 2 | 0.50 | running | `SELECT 1` |" in render(4, Counter({("running", "SELECT 1"): 2}))
