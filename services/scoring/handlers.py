"""Scoring handlers: keep the current outcome of every window (its highest
revision) and the facts behind the guard-rails; answer scores by aggregating."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import and_, bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from idt_contract import Envelope, stream_for
from idt_contract.events import (
    ClaimCleared,
    ClaimRegistered,
    InterviewConducted,
    InterviewFailedToAttend,
    MarkerSet,
    OfficeRegistered,
    WindowOutcome,
)
from idt_domain.calendar import london_date, working_days_between
from idt_runtime.bulk import bulk_insert, bulk_update_by_pk, ids_in
from idt_runtime.consumer import Applier
from idt_runtime.db import is_postgresql
from idt_runtime.latest import advance_clock, upsert_latest_many
from idt_runtime.latest import all_of as _all

from . import domain
from .models import (
    ScoClaim,
    ScoClearance,
    ScoClock,
    ScoCount,
    ScoFailedToAttend,
    ScoInterview,
    ScoMarker,
    ScoOffice,
    ScoOutcome,
)

# --------------------------------------------------------------------------- appliers


def apply_outcomes(session: Session, events: Sequence[Envelope]) -> None:
    """Each window and basis keeps its highest revision, in any arrival order; the
    counts (`sco_counts`) move with it, from the revision replaced to the new."""
    latest: dict[tuple[str, str], WindowOutcome] = {}
    for ev in _all(events, WindowOutcome):
        key: tuple[str, str] = (ev.data.window_id, str(ev.data.basis))
        held = latest.get(key)
        if held is None or ev.data.revision > held.data.revision:
            latest[key] = ev
    if not latest:
        return
    found = session.execute(_LOCK_OUTCOMES, {"ids": sorted({k[0] for k in latest})}).all()
    held_rows = {(r[0], r[1]): dict(zip(_OUTCOME_COLUMNS, r, strict=True)) for r in found}
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    counts: Counter[tuple[str, ...]] = Counter()
    for window, ev in latest.items():
        d = ev.data
        old = held_rows.get(window)
        if old is not None and old["revision"] >= d.revision:
            continue  # an older revision arriving late changes nothing
        row = {
            "window_id": d.window_id, "basis": d.basis, "claim_id": d.claim_id,
            "element": d.element.value, "outcome": d.outcome.value, "revision": d.revision,
            "outcome_date": d.outcome_date, "jobcentre_id": d.jobcentre_id,
            "stage": d.stage.value if d.stage else None,
        }  # fmt: skip
        (updates if old is not None else inserts).append(row)
        if old is not None and (was := count_key(old)) is not None:
            counts[was] -= 1
        if (now := count_key(row)) is not None:
            counts[now] += 1
    bulk_insert(session, _OUTCOMES, inserts)
    bulk_update_by_pk(session, _OUTCOMES, updates)
    add_counts(session, counts)


_OUTCOME_COLUMNS = (
    "window_id", "basis", "revision", "element", "outcome", "outcome_date", "jobcentre_id",
    "stage",
)  # fmt: skip
_COUNT_KEY = ("basis", "month", "jobcentre_id", "element", "outcome", "stage")
_OUTCOMES = ScoOutcome.__table__  # type: ignore[attr-defined]
#: Built once, its IN list bound at execution (idt_runtime/bulk.py).
_LOCK_OUTCOMES = (
    select(*(_OUTCOMES.c[c] for c in _OUTCOME_COLUMNS))
    .where(_OUTCOMES.c.window_id.in_(bindparam("ids", expanding=True)))
    .order_by(_OUTCOMES.c.window_id, _OUTCOMES.c.basis)
    .with_for_update()
)


def count_key(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The `sco_counts` row an outcome row counts in (None: no outcome date)."""
    day = row["outcome_date"]
    if day is None:
        return None
    return (
        str(row["basis"]),
        day.isoformat()[:7],
        row["jobcentre_id"] or "",
        str(row["element"]),
        str(row["outcome"]),
        row["stage"] or "",
    )


def add_counts(session: Session, counts: Mapping[tuple[str, ...], int]) -> None:
    """Add each delta to its `sco_counts` row (made at 0 if missing), in key order
    (replicas never deadlock): one upsert statement for all."""
    rows = [
        {**dict(zip(_COUNT_KEY, key, strict=True)), "n": n}
        for key, n in sorted(counts.items())
        if n
    ]
    if not rows:
        return
    t = ScoCount.__table__  # type: ignore[attr-defined]
    dialect = postgresql if is_postgresql(session) else sqlite
    stmt = dialect.insert(t)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_COUNT_KEY), set_={"n": t.c.n + stmt.excluded.n}
    )
    session.execute(stmt, rows)


def apply_offices(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, ScoOffice, (
        (ev.data.office_id, ev, {"kind": ev.data.kind.value, "name": ev.data.name,
                                 "district": ev.data.district, "region": ev.data.region})
        for ev in _all(events, OfficeRegistered)
    ))  # fmt: skip


def apply_ticks(session: Session, events: Sequence[Envelope]) -> None:
    advance_clock(session, ScoClock, events)


def _insert_new(session: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose event_id is not stored yet (one query, one insert)."""
    if not rows:
        return
    t = model.__table__
    have = set(session.execute(ids_in(t), {"ids": [r["event_id"] for r in rows]}).scalars())
    fresh = {r["event_id"]: r for r in rows if r["event_id"] not in have}
    bulk_insert(session, t, list(fresh.values()))


def apply_interviews(session: Session, events: Sequence[Envelope]) -> None:
    _insert_new(session, ScoInterview, [
        {"event_id": ev.id, "day": london_date(ev.time),
         "intervention": ev.data.intervention.value, "jobcentre_id": ev.data.jobcentre_id,
         "minutes": ev.data.duration_minutes}
        for ev in _all(events, InterviewConducted)
    ])  # fmt: skip


def apply_ftas(session: Session, events: Sequence[Envelope]) -> None:
    _insert_new(session, ScoFailedToAttend, [
        {"event_id": ev.id, "day": london_date(ev.time),
         "intervention": ev.data.intervention.value}
        for ev in _all(events, InterviewFailedToAttend)
    ])  # fmt: skip


def apply_claims(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, ScoClaim, (
        (ev.data.claim_id, ev, {"contact_centre_id": ev.data.contact_centre_id,
                                "benefit": ev.data.benefit.value,
                                "registered_date": london_date(ev.time)})
        for ev in _all(events, ClaimRegistered)
    ))  # fmt: skip


def apply_markers(session: Session, events: Sequence[Envelope]) -> None:
    upsert_latest_many(session, ScoMarker, (
        ((ev.data.claim_id, ev.data.marker.value), ev, {"value": ev.data.value})
        for ev in _all(events, MarkerSet)
    ))  # fmt: skip


def apply_clearances(session: Session, events: Sequence[Envelope]) -> None:
    rows = []
    for ev in _all(events, ClaimCleared):
        d = ev.data
        cleared = london_date(ev.time)
        rows.append((d.claim_id, ev, {
            "bdc_id": d.bdc_id, "received_date": d.received_date, "cleared_date": cleared,
            "working_days": working_days_between(d.received_date, cleared),
        }))  # fmt: skip
    upsert_latest_many(session, ScoClearance, rows)


APPLIERS: dict[str, Applier] = {
    stream_for("window-outcome"): apply_outcomes,
    stream_for("office-registered"): apply_offices,
    stream_for("clock-tick"): apply_ticks,
    stream_for("interview-conducted"): apply_interviews,
    stream_for("interview-failed-to-attend"): apply_ftas,
    stream_for("claim-registered"): apply_claims,
    stream_for("marker-set"): apply_markers,
    stream_for("claim-cleared"): apply_clearances,
}

PUBLISHES: tuple[str, ...] = ()

# --------------------------------------------------------------------------- queries


def business_date(session: Session) -> date | None:
    clock = session.get(ScoClock, 1)
    return clock.as_of if clock else None


def offices(session: Session) -> dict[str, domain.Office]:
    return {
        o.office_id: domain.Office(o.office_id, o.kind, o.district, o.region)
        for o in session.exec(select(ScoOffice)).all()
    }


def jobcentre_counts(
    session: Session, basis: str, period: domain.Period, registry: dict[str, domain.Office]
) -> dict[str, dict[str, domain.Counts]]:
    """Jobcentre → element → counts, added up from the period's months of
    `sco_counts` (periods are whole months)."""
    c = _COUNTS
    rows = session.execute(
        select(c.c.jobcentre_id, c.c.element, c.c.outcome, func.sum(c.c.n))
        .where(c.c.basis == basis, c.c.outcome.in_(domain.COUNTED), *_months(period))
        .group_by(c.c.jobcentre_id, c.c.element, c.c.outcome)
        .having(func.sum(c.c.n) > 0)
    ).all()
    out: dict[str, dict[str, domain.Counts]] = {}
    for jobcentre_id, element, outcome, n in rows:
        scope = domain.scope_of(jobcentre_id or None, registry)
        out.setdefault(scope, {}).setdefault(element, domain.Counts()).add(outcome, int(n))
    return out


_COUNTS = ScoCount.__table__  # type: ignore[attr-defined]


def _months(period: domain.Period) -> tuple[Any, Any]:
    """`sco_counts` rows of the period's months."""
    return (
        _COUNTS.c.month >= period.first.isoformat()[:7],
        _COUNTS.c.month <= period.last.isoformat()[:7],
    )


@dataclass(frozen=True)
class ScoresQuery:
    period: domain.Period
    level: domain.Level
    basis: domain.Basis


def scores(session: Session, q: ScoresQuery, targets: Sequence[domain.Target]) -> dict[str, Any]:
    registry = offices(session)
    by_jc = jobcentre_counts(session, q.basis, q.period, registry)
    rolled = domain.roll_up(by_jc, q.level, registry)
    return {
        "period": q.period.text,
        "level": q.level,
        "basis": q.basis,
        "as_of": business_date(session),
        "rows": domain.score_rows(rolled, q.basis, q.period, targets),
    }


def guardrails(session: Session, period: domain.Period) -> dict[str, Any]:
    """The measures staff gamed under pressure, beside the scores (spec §7)."""
    first, last = period.first, period.last
    c = _COUNTS
    by_element: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for element, outcome, n in session.execute(
        select(c.c.element, c.c.outcome, func.sum(c.c.n))
        .where(c.c.basis == "measured", c.c.outcome.in_(domain.COUNTED), *_months(period))
        .group_by(c.c.element, c.c.outcome)
        .having(func.sum(c.c.n) > 0)
    ).all():
        by_element[element][outcome] += int(n)
    waiver_deferral = {
        e: {
            "windows": sum(v.values()),
            "waiver_rate": _ratio(v["WAIVED"], sum(v.values())),
            "deferral_rate": _ratio(v["DEFERRED"], sum(v.values())),
        }
        for e, v in sorted(by_element.items())
    }
    # Counted by minutes in the database: a few hundred rows, not every interview
    # of the month (a national month's 100,000 sent to Python at every scrape).
    minutes = session.execute(
        select(ScoInterview.minutes, func.count())
        .where(ScoInterview.day >= first, ScoInterview.day <= last)
        .group_by(col(ScoInterview.minutes))
    ).all()
    conducted = sum(n for _, n in minutes)
    ftas = session.exec(
        select(func.count())
        .select_from(ScoFailedToAttend)
        .where(ScoFailedToAttend.day >= first, ScoFailedToAttend.day <= last)
    ).one()
    stage_rows = session.execute(
        select(c.c.element, c.c.stage, func.sum(c.c.n))
        .where(c.c.basis == "measured", c.c.outcome == "MISSED", *_months(period))
        .group_by(c.c.element, c.c.stage)
        .having(func.sum(c.c.n) > 0)
    ).all()
    missed_by_stage: dict[str, dict[str, int]] = defaultdict(dict)
    for element, stage, n in stage_rows:
        missed_by_stage[element][stage or "UNKNOWN"] = int(n)
    return {
        "period": period.text,
        "as_of": business_date(session),
        "waivers_and_deferrals": waiver_deferral,
        "failure_to_attend": {
            "failed": ftas,
            "conducted": conducted,
            "rate": _ratio(ftas, ftas + conducted),
        },
        "interview_minutes": domain.distribution((m, n) for m, n in minutes),
        "marker_errors_by_contact_centre": marker_errors(session, period),
        "aact_by_bdc": aact(session, period),
        "missed_by_stage": {e: missed_by_stage[e] for e in sorted(missed_by_stage)},
    }


def marker_errors(session: Session, period: domain.Period) -> dict[str, dict[str, Any]]:
    """Claims registered in the period whose JOBCENTRE marker now names no
    registered Jobcentre, per Contact Centre."""
    registry = offices(session)
    # Joined in the database: the month's claims as a list of ids made a statement
    # with a parameter each, past what SQLite (32,766; 250,000 as Debian builds it)
    # and PostgreSQL (65,535) take, at a national month's 400,000 claims.
    # Counted by Contact Centre and marker value in the database: a few hundred rows
    # whatever the month's claims, each value then classified against the registry.
    claims = session.execute(
        select(ScoClaim.contact_centre_id, ScoMarker.value, func.count())
        .select_from(ScoClaim)
        .outerjoin(
            ScoMarker,
            and_(
                col(ScoMarker.claim_id) == ScoClaim.claim_id, col(ScoMarker.marker) == "JOBCENTRE"
            ),
        )
        .where(ScoClaim.registered_date >= period.first, ScoClaim.registered_date <= period.last)
        .group_by(ScoClaim.contact_centre_id, ScoMarker.value)
    ).all()
    per_cc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for cc, marker, n in claims:
        per_cc[cc][0] += n
        if domain.scope_of(marker, registry) == domain.UNALLOCATED:
            per_cc[cc][1] += n
    return {
        cc: {"claims": n, "errors": e, "rate": _ratio(e, n)}
        for cc, (n, e) in sorted(per_cc.items())
    }


def aact(session: Session, period: domain.Period) -> dict[str, dict[str, Any]]:
    rows = session.exec(
        select(ScoClearance.bdc_id, func.count(), func.avg(ScoClearance.working_days))
        .where(ScoClearance.cleared_date >= period.first, ScoClearance.cleared_date <= period.last)
        .group_by(ScoClearance.bdc_id)
    ).all()
    return {bdc: {"claims": n, "aact": round(float(avg), 2)} for bdc, n, avg in sorted(rows)}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
