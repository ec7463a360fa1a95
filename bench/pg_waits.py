"""What PostgreSQL's backends are doing, sampled: run beside a bench on PostgreSQL.

    python -m bench --postgres postgresql://postgres@127.0.0.1/postgres --replicas 2 &
    python -m bench.pg_waits postgresql://postgres@127.0.0.1/postgres --seconds 420

Every `--interval` seconds it reads `pg_stat_activity` for the backends of the
databases named like `--databases` (the bench's own are `idt_bench_...`) that are
not idle, and tallies what each was doing: running or waiting (the wait event;
for an advisory lock, which of the services' locks), or idle inside a transaction
(its client working between two statements), with the statement's first words.
Nothing is written to the databases. Found with it: two scheduler replicas wait
for each other's row locks on the same claims (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url

from idt_runtime.db import advisory_key
from idt_runtime.outbox import relay_lock
from services.bdc.models import TABLES as BDC
from services.contact_centre.models import TABLES as CONTACT_CENTRE
from services.scheduler.handlers import STATE_SCOPE
from services.scheduler.models import TABLES as SCHEDULER
from services.scoring.models import TABLES as SCORING

#: The advisory locks the services take (idt_runtime.db.lock_scope), by name.
LOCKS = (
    STATE_SCOPE,
    *(relay_lock(t.outbox) for t in (CONTACT_CENTRE, BDC, SCHEDULER, SCORING)),
)

_ACTIVITY = """
SELECT a.state, a.wait_event_type, a.wait_event,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), %(width)s),
       (SELECT l.objid FROM pg_locks l
         WHERE l.pid = a.pid AND NOT l.granted AND l.locktype = 'advisory' LIMIT 1)
  FROM pg_stat_activity a
 WHERE a.datname LIKE %(databases)s AND a.state <> 'idle' AND a.pid <> pg_backend_pid()
"""


def lock_names() -> dict[int, str]:
    """The services' advisory locks by the `objid` pg_locks shows (the key's low 32
    bits)."""
    return {advisory_key(name) & 0xFFFFFFFF: name for name in LOCKS}


def conninfo(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (`postgresql+psycopg://...` works too)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sample_once(
    conn: Any, databases: str, names: dict[int, str], width: int = 70
) -> list[tuple[str, str]]:
    """One look: (what the backend was doing, the statement) for each backend not
    idle. A backend waiting for an advisory lock is shown by the lock's name."""
    rows = conn.execute(_ACTIVITY, {"databases": databases, "width": width}).fetchall()
    out = []
    for state, wait_type, wait_event, query, objid in rows:
        if state == "idle in transaction":
            what = "idle in transaction (its client working)"
        elif wait_type is None:
            what = "running"
        elif wait_type == "Lock" and objid is not None:
            what = f"waiting: advisory lock {names.get(int(objid), objid)}"
        else:
            what = f"waiting: {wait_type} {wait_event}"
        out.append((what, query or ""))
    return out


def sample(url: str, seconds: float, interval: float, databases: str) -> tuple[int, Counter[Any]]:
    """Sample for `seconds`; (looks taken, tally of (what, statement))."""
    import psycopg

    names = lock_names()
    tally: Counter[tuple[str, str]] = Counter()
    looks = 0
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tally.update(sample_once(conn, databases, names))
            looks += 1
            time.sleep(interval)
    return looks, tally


def render(looks: int, tally: Counter[Any], top: int = 30) -> str:
    lines = [
        f"{looks:,} looks; backends not idle, by what they were doing (samples, share of looks):",
        "",
        "| samples | per look | doing | statement |",
        "| ---: | ---: | --- | --- |",
    ]
    for (what, query), n in tally.most_common(top):
        lines.append(f"| {n:,} | {n / max(looks, 1):.2f} | {what} | `{query}` |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_waits", description=__doc__)
    parser.add_argument("url", help="the PostgreSQL server (any database on it)")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument(
        "--databases", default="idt_bench_%", help="LIKE pattern of the databases sampled"
    )
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    looks, tally = sample(args.url, args.seconds, args.interval, args.databases)
    print(render(looks, tally, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
