"""Scheduler handlers: keep each claim's events, re-evaluate its windows with the
pure rules, publish outcome revisions and new alerts through the outbox.

Every applier runs inside the consumer's batch transaction; the runtime
serialises commits within a process, and each claim's row is locked
(`SELECT ... FOR UPDATE` on PostgreSQL) before its events are read, so two
consumers can never interleave one claim's recomputation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BindParameter, Date, Integer, and_, bindparam, case, false, func, or_
from sqlmodel import Session, col, select

from idt_contract import Envelope, decode, encode, make_event, stream_for
from idt_contract.events import (
    AlertKind,
    OfficeKind,
    OfficeRegistered,
    WindowAlert,
    WindowAlertData,
    WindowOutcome,
    WindowOutcomeData,
)
from idt_contract.streams import alerts_stream
from idt_domain.calendar import LONDON, london_date, utc_key
from idt_runtime.bulk import bulk_insert, bulk_update_by_pk
from idt_runtime.consumer import is_infra, is_race, wire_payload
from idt_runtime.db import lock_scope
from idt_runtime.latest import advance_clock, upsert_latest
from idt_runtime.outbox import add_routed_to_outbox

from .alerts import AlertConfig, alerts_for, next_check
from .domain import ClaimHistory, RulesConfig, Status, Window, attribute, evaluate, fact_of
from .models import TABLES, SchAlert, SchClaim, SchClock, SchEvent, SchOffice, SchWindow

log = logging.getLogger("idt.scheduler")

SOURCE = "/services/scheduler"

CLAIM_EVENT_TYPES = (
    "claim-registered",
    "marker-set",
    "claim-cleared",
    "interview-booked",
    "interview-conducted",
    "interview-failed-to-attend",
    "interview-waived",
    "interview-deferred",
    "lmi-doubt-raised",
    "lmi-follow-up-conducted",
    "claim-closed",
)

#: Streams this service publishes to (alerts go to one stream per office).
PUBLISHES = (stream_for("window-outcome"), alerts_stream("{office_id}"))


@dataclass(frozen=True)
class SchedulerConfig:
    rules: RulesConfig = field(default_factory=RulesConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    #: Fewer days than this left in a window to book an interview: the stage
    #: that left so little time is blamed (docs/stage-attribution.md).
    min_booking_lead_days: int = 5


# --------------------------------------------------------------------------- helpers


def _time_of(key: str) -> datetime:
    """The moment of a `utc_key`."""
    try:
        return datetime.fromisoformat(key)
    except ValueError:  # a year before 1000 has fewer than four digits
        return datetime.strptime(key, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: Claims re-evaluated per round of bulk queries.
RECOMPUTE_CHUNK = 500

#: Claims a tick re-evaluates in its own transaction; `Scheduler.sweep_due` does
#: the rest, `SWEEP_CHUNK` a transaction. Small, since claim events wait behind
#: either (about 0.5 ms a claim at 1M events on 2 cores, the same per claim in
#: chunks of 25 as of 100; a tick there makes over 2,000 claims due).
TICK_INLINE = 25
SWEEP_CHUNK = 25

#: Business time and the office registry: what every claim's evaluation reads.
STATE_SCOPE = "scheduler:business-time-and-registry"


def business_date(session: Session) -> date | None:
    row = session.execute(_CLOCK_ROW).first()
    return row[0] if row is not None else None


def business_time(session: Session) -> tuple[date | None, datetime | None]:
    """Business time: its date, and the moment of the latest tick (None, None
    before the first tick). A Core query: loading the ORM row took three times as
    long, and every batch of claim events reads it."""
    row = session.execute(_CLOCK_ROW).first()
    if row is None:
        return None, None
    return row[0], _time_of(row[1])


def due_claims(session: Session, as_of: date, limit: int) -> list[str]:
    """Claims business time (`as_of`) has made due and no evaluation on that date
    has seen: never evaluated with a business date, or with a `next_check` reached."""
    out = list(session.execute(NEVER_EVALUATED, {"limit": limit}).scalars())
    if len(out) < limit:
        reached = session.execute(REACHED, {"as_of": as_of, "limit": limit - len(out)})
        out += reached.scalars()
    return out


def office_kinds(session: Session) -> dict[str, str]:
    """The registry as the scheduler knows it: office id -> kind."""
    return {office: kind for office, kind in session.execute(_REGISTRY)}


def jobcentre_ids(registry: dict[str, str]) -> frozenset[str]:
    return frozenset(o for o, kind in registry.items() if kind == OfficeKind.JOBCENTRE.value)


def short_id(prefix: str, text: str, n: int = 40) -> str:
    """A bounded, deterministic CloudEvent id (ids are limited to 128 characters,
    and claim, doubt and event ids inside keys can make those longer)."""
    return f"{prefix}:{hashlib.sha256(text.encode()).hexdigest()[:n]}"


_CLAIM_COLUMNS = ("claim_id", "facts", "next_check", "jobcentre_marker", "evaluated_as_of")


# The statements run for every batch, built once with their IN lists bound at
# execution (`{"ids": [...]}`): built per call, each left about ten objects in
# reference cycles (SQLAlchemy's IN parameters), which the garbage collector
# freed in pauses of 80-130 ms, and took twice as long (idt_runtime/bulk.py).
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_WINDOWS = SchWindow.__table__  # type: ignore[attr-defined]
_CLAIMS = SchClaim.__table__  # type: ignore[attr-defined]
_EVENTS = SchEvent.__table__  # type: ignore[attr-defined]
_ALERTS = SchAlert.__table__  # type: ignore[attr-defined]
_CLOCK = SchClock.__table__  # type: ignore[attr-defined]
_OFFICES = SchOffice.__table__  # type: ignore[attr-defined]
_CLOCK_ROW = select(_CLOCK.c.as_of, _CLOCK.c.time_key).where(_CLOCK.c.id == 1)
_REGISTRY = select(_OFFICES.c.office_id, _OFFICES.c.kind)
_LOCK_CLAIMS = (
    select(*(_CLAIMS.c[c] for c in _CLAIM_COLUMNS))
    .where(_CLAIMS.c.claim_id.in_(_IDS))
    .order_by(_CLAIMS.c.claim_id)
    .with_for_update()
)
_EVENTS_OF_CLAIMS = select(_EVENTS.c.claim_id, _EVENTS.c.payload).where(
    _EVENTS.c.claim_id.in_(_IDS)
)
_WINDOWS_OF_CLAIMS = select(_WINDOWS).where(_WINDOWS.c.claim_id.in_(_IDS))
_ALERTS_OF_CLAIMS = select(_ALERTS.c.key).where(_ALERTS.c.claim_id.in_(_IDS))
#: The sweep's two finds (`due_claims`), each by an index: claims never evaluated
#: (the partial `ix_sch_claims_never_evaluated`), then those whose `next_check` is
#: reached (`ix_sch_claims_due`, in the order the sweep takes them).
NEVER_EVALUATED = (
    select(_CLAIMS.c.claim_id)
    .where(_CLAIMS.c.evaluated_as_of.is_(None))
    .order_by(_CLAIMS.c.claim_id)
    .limit(bindparam("limit", type_=Integer))
)
REACHED = (
    select(_CLAIMS.c.claim_id)
    .where(
        _CLAIMS.c.next_check <= bindparam("as_of", type_=Date),
        _CLAIMS.c.evaluated_as_of < bindparam("as_of", type_=Date),
    )
    .order_by(_CLAIMS.c.next_check, _CLAIMS.c.claim_id)
    .limit(bindparam("limit", type_=Integer))
)


def _lock_claims(session: Session, claim_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The claims' rows that exist, locked (FOR UPDATE, in id order), as dicts."""
    rows = session.execute(_LOCK_CLAIMS, {"ids": list(claim_ids)})
    return {r[0]: dict(zip(_CLAIM_COLUMNS, r, strict=True)) for r in rows}


def _facts_from_events(session: Session, claim_ids: Sequence[str]) -> dict[str, list[Any]]:
    """Facts of claims stored before facts were (their events' payloads, decoded)."""
    out: dict[str, list[Any]] = {c: [] for c in claim_ids}
    for claim_id, payload in session.execute(_EVENTS_OF_CLAIMS, {"ids": list(claim_ids)}):
        fact = fact_of(decode(bytes(payload)))
        if fact is not None:
            out[claim_id].append(fact)
    return out


def load_history(session: Session, claim_id: str) -> tuple[ClaimHistory, list[Envelope]]:
    payloads = session.exec(select(SchEvent.payload).where(SchEvent.claim_id == claim_id)).all()
    events = [decode(bytes(p)) for p in payloads]
    return ClaimHistory.from_events(claim_id, events), events


# --------------------------------------------------------------------------- appliers


class Scheduler:
    """The appliers, bound to their configuration."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()

    def appliers(self) -> dict[str, Any]:
        # Those taking STATE_SCOPE exclusively first: in a transaction shared by
        # several streams' batches they run first (EventConsumer), so that the
        # lock is never asked for exclusively while held shared.
        out: dict[str, Any] = {
            stream_for("clock-tick"): self.apply_ticks,
            stream_for("office-registered"): self.apply_offices,
        }
        out.update({stream_for(t): self.apply_claim_events for t in CLAIM_EVENT_TYPES})
        return out

    def apply_claim_events(self, session: Session, events: Sequence[Envelope]) -> None:
        # Replicas apply claim events side by side (each claim's row is locked in
        # `recompute`), but never beside a change of business time or registry.
        lock_scope(session, STATE_SCOPE, exclusive=False)
        new_facts: dict[str, list[list[Any]]] = defaultdict(list)
        rows: dict[str, dict[str, Any]] = {}
        for ev in events:
            claim_id: str = ev.data.claim_id  # type: ignore[attr-defined]
            fact = fact_of(ev)
            new_facts[claim_id]  # every claim event's claim is re-evaluated
            if fact is not None:
                new_facts[claim_id].append(fact)
            rows[ev.id] = {
                "event_id": ev.id,
                "claim_id": claim_id,
                "type": ev.type,
                "time_key": fact[2] if fact is not None else utc_key(ev.time),
                # As read from the stream when the consumer applies it (it was
                # validated from those bytes): encoding it again cost 2% of the
                # scheduler's time.
                "payload": wire_payload(session, ev) or encode(ev),
            }
        # Stored as they come: the consumer hands appliers only events whose ids
        # `sch_processed_events` does not hold, and records them there in this
        # transaction (`SchEvent`).
        bulk_insert(session, SchEvent.__table__, list(rows.values()))  # type: ignore[attr-defined]
        self.recompute_many(session, new_facts, new_facts=new_facts)

    def apply_offices(self, session: Session, events: Sequence[Envelope]) -> None:
        lock_scope(session, STATE_SCOPE, exclusive=True)
        touched: set[str] = set()
        for ev in events:
            assert isinstance(ev, OfficeRegistered)
            d = ev.data
            row = upsert_latest(
                session, SchOffice, d.office_id, ev,
                kind=d.kind.value, name=d.name, district=d.district, region=d.region,
            )  # fmt: skip
            if row is not None:
                touched.add(d.office_id)
        if touched:
            # Claims whose marker names a changed office, and every claim with a missed
            # window (its stage attribution depends on which offices are Jobcentres).
            claims = session.exec(
                select(SchClaim.claim_id).where(col(SchClaim.jobcentre_marker).in_(touched))
            ).all()
            missed = session.exec(
                select(SchWindow.claim_id).where(SchWindow.status == Status.MISSED.value).distinct()
            ).all()
            self.recompute_many(session, dict.fromkeys([*claims, *missed]))

    def apply_ticks(self, session: Session, events: Sequence[Envelope]) -> None:
        """Move business time; re-evaluate the claims it makes due, up to
        `TICK_INLINE` of them in this transaction. The rest are swept a chunk per
        transaction by `sweep_due` (the service runs it in a loop), so a day with
        thousands of claims due never holds claim events back for long."""
        lock_scope(session, STATE_SCOPE, exclusive=True)
        moved = advance_clock(session, SchClock, events)
        if moved is None:
            return  # business time never goes back
        before, as_of = moved
        if before is not None and as_of <= before:
            return  # a later tick on the same business date: nothing new is due
        due = due_claims(session, as_of, TICK_INLINE)
        try:
            with session.begin_nested():
                self.recompute_many(session, due)
        except Exception as exc:
            if is_infra(exc) or is_race(exc):
                raise
            # A claim the rules cannot evaluate must not stop business time (the
            # tick would be retried, then dead-lettered, and the clock never move):
            # the tick's own claims are left due, and the sweeper, which sets such
            # a claim aside on its own, re-evaluates them.
            log.error("scheduler: re-evaluating the claims the tick of %s made due "
                      "failed; the sweeper takes them: %r", as_of, exc)  # fmt: skip

    def sweep_due(
        self, session: Session, limit: int | None = None, skip: frozenset[str] = frozenset()
    ) -> list[str]:
        """Re-evaluate up to `limit` claims (`SWEEP_CHUNK` as it is now) that business
        time made due and no evaluation has caught up with yet (not those in `skip`);
        returns them."""
        limit = SWEEP_CHUNK if limit is None else limit
        lock_scope(session, STATE_SCOPE, exclusive=False)
        as_of = business_date(session)
        if as_of is None:
            return []
        due = due_claims(session, as_of, limit + len(skip))
        claims = [c for c in due if c not in skip][:limit]
        self.recompute_many(session, claims)
        return claims

    def reevaluate(self, session: Session, claim_ids: Sequence[str]) -> None:
        """Re-evaluate the claims now (as a claim event would)."""
        lock_scope(session, STATE_SCOPE, exclusive=False)
        self.recompute_many(session, claim_ids)

    # ------------------------------------------------------------------ recompute

    def recompute_many(
        self,
        session: Session,
        claim_ids: Iterable[str],
        *,
        new_facts: dict[str, list[list[Any]]] | None = None,
    ) -> None:
        """Re-evaluate claims from their facts (`new_facts`: facts of events being
        applied now, added to the claims' stored facts), a chunk at a time: one query
        each for the claims (locked), windows and sent alerts, and one statement each
        for what changed (inserts and updates of claims and windows, alerts, outbox)."""
        ids = sorted(set(claim_ids))  # one order everywhere: replicas never deadlock
        if not ids:
            return
        new_facts = new_facts or {}
        as_of, ticked = business_time(session)
        registry = office_kinds(session)
        jcs = jobcentre_ids(registry)
        for start in range(0, len(ids), RECOMPUTE_CHUNK):
            chunk = ids[start : start + RECOMPUTE_CHUNK]
            claims = _lock_claims(session, chunk)
            # Claims stored before their facts were: read their events once.
            legacy = [c for c, row in claims.items() if row["facts"] is None]
            old_facts = _facts_from_events(session, legacy) if legacy else {}
            stored: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
            for found in session.execute(_WINDOWS_OF_CLAIMS, {"ids": chunk}):
                w = dict(zip(_WINDOW_COLUMNS, found, strict=True))  # faster than _asdict()
                stored[w["claim_id"]][(w["window_id"], w["basis"])] = w
            sent = set(session.execute(_ALERTS_OF_CLAIMS, {"ids": chunk}).scalars())
            out: list[tuple[Envelope, str]] = []
            changes = _Changes()
            for claim_id in chunk:
                row = claims.get(claim_id)
                if row is not None and row["facts"] is not None:
                    facts: list[Any] = json.loads(row["facts"])
                else:
                    facts = old_facts.get(claim_id, [])
                known = {f[3] for f in facts}
                added = [f for f in new_facts.get(claim_id, ()) if f[3] not in known]
                facts += added
                history = ClaimHistory.from_facts(claim_id, facts)
                windows = evaluate(history, as_of, self.config.rules)
                latest_key = max((f[2] for f in facts), default=None)
                latest = _time_of(latest_key) if latest_key else _EPOCH
                now = max(ticked or latest, latest)
                out += self._store_windows(history, windows, jcs, now, stored[claim_id], changes)
                out += self._publish_alerts(
                    history, windows, as_of, registry, jcs, now, sent, changes
                )
                new = {
                    "claim_id": claim_id,
                    "facts": _facts_text(row, added, facts, legacy=claim_id in old_facts),
                    "next_check": next_check(history, windows, as_of, self.config.alerts),
                    "jobcentre_marker": history.marker_on("JOBCENTRE", as_of or date.max) or None,
                    "evaluated_as_of": as_of,
                }
                if row is None:
                    changes.claims_new.append(new)
                elif new != row:
                    changes.claims_changed.append(_changed(new, row, ("claim_id",)))
            changes.write(session)
            add_routed_to_outbox(session, TABLES, out)

    def _store_windows(
        self,
        h: ClaimHistory,
        windows: Sequence[Window],
        jcs: frozenset[str],
        now: datetime,
        existing: dict[tuple[str, str], dict[str, Any]],
        changes: _Changes,
    ) -> list[tuple[Envelope, str]]:
        """Bring the claim's stored windows (`existing`, by window id and basis) up to
        `windows`, noting the writes in `changes`; the window-outcome revisions that
        calls for."""
        outcomes: list[Envelope] = []
        seen: set[tuple[str, str]] = set()  # (window id, basis)
        for w in windows:
            pk: tuple[str, str] = (w.window_id, w.basis)
            seen.add(pk)
            old = existing.get(pk)
            stage = stage_days = None
            status = _STATUS_TEXT[w.status]
            final = w.status.final
            if status == "MISSED":
                a = attribute(h, w, jcs, min_booking_lead_days=self.config.min_booking_lead_days)
                stage = str(a.stage)
                stage_days = {
                    "CONTACT_CENTRE": a.contact_centre_days,
                    "BDC": a.bdc_days,
                    "JOBCENTRE": a.jobcentre_days,
                }
            slot, state = _booking(h, w)
            row: dict[str, Any] = {
                "window_id": w.window_id,
                "basis": w.basis,
                "claim_id": h.claim_id,
                "element": w.element,
                "intervention": w.intervention,
                "seq": w.seq,
                "opens": w.opens,
                "closes": w.closes,
                "status": status,
                "outcome_date": w.outcome_date,
                "jobcentre_id": w.jobcentre_id,
                "stage": stage,
                "stage_days": json.dumps(stage_days) if stage_days else None,
                "clock_start": w.clock_start,
                "early_interviews": ",".join(map(date.isoformat, w.early_interviews))
                if w.early_interviews
                else None,
                "late_interview": w.late_interview,
                "booking_slot": slot,
                "booking_state": state,
                "revision": old["revision"] if old else 0,
                "published": old["published"] if old else None,
                "exists_now": True,
            }
            # Publish when the final outcome (or its attribution) changes.
            if final:
                signature = f"{status}|{w.outcome_date}|{w.jobcentre_id}|{stage}"
            elif row["published"] is not None:
                signature = "PENDING"
            else:
                signature = None
            if signature is not None and signature != row["published"]:
                row["revision"] += 1
                row["published"] = signature
                outcomes.append(_outcome_event(row, status if final else "PENDING", now))
            if old is None:
                changes.windows_new.append(row)
            elif row != old:
                changes.windows_changed.append(_changed(row, old, _WINDOW_KEY))
        for pk, old in existing.items():
            if pk in seen or not old["exists_now"]:
                continue
            row = {**old, "exists_now": False, "status": "WITHDRAWN"}
            if row["published"] is not None:
                row["revision"] += 1
                row["published"] = "WITHDRAWN"
                outcomes.append(_outcome_event(row, "WITHDRAWN", now))
            changes.windows_changed.append(_changed(row, old, _WINDOW_KEY))
        stream = stream_for(WindowOutcome.event_type())
        return [(o, stream) for o in outcomes]

    def _publish_alerts(
        self,
        h: ClaimHistory,
        windows: Sequence[Window],
        as_of: date | None,
        registry: dict[str, str],
        jcs: frozenset[str],
        now: datetime,
        sent: set[str],
        changes: _Changes,
    ) -> list[tuple[Envelope, str]]:
        """The alerts due for the claim that were never sent (`sent`: the keys of
        the claim's alerts sent so far; updated), recorded as sent in `changes`."""
        due = alerts_for(h, windows, as_of, registry, self.config.alerts, jcs)
        out: list[tuple[Envelope, str]] = []
        if not due:
            return out
        # Keys can be long (claim, doubt and event ids inside): stored and used as
        # ids by their hash.
        keyed = {short_id("alert", a.key): a for a in due}
        for key, a in keyed.items():
            if key in sent:
                continue
            sent.add(key)
            event = make_event(
                WindowAlert,
                source=SOURCE,
                time=now,
                id=key,
                data=WindowAlertData.model_validate(
                    {
                        "claim_id": a.claim_id,
                        "kind": AlertKind(a.kind),
                        "intervention": a.intervention,
                        "opens": a.opens,
                        "closes": a.closes,
                        "office_id": a.office_id,
                        "window_id": a.window_id,
                        "bases_conflict": a.bases_conflict,
                        "slot_date": a.slot_date,
                        "detail": a.detail,
                    },
                    strict=False,
                ),
            )
            changes.alerts.append(
                {
                    "key": key,
                    "kind": a.kind,
                    "office_id": a.office_id,
                    "claim_id": a.claim_id,
                    "event_id": event.id,
                }
            )
            out.append((event, alerts_stream(a.office_id)))
        return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WINDOW_COLUMNS = tuple(_WINDOWS.c.keys())
#: Each status's text, read without going through the enum (slow in a hot loop).
_STATUS_TEXT: dict[Status, str] = {s: s.value for s in Status}


_WINDOW_KEY = ("window_id", "basis")


def _changed(new: dict[str, Any], old: dict[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
    """The row's key and the columns whose values differ from `old`: an UPDATE that
    sets only those leaves the indexes of the others alone."""
    out = {k: new[k] for k in key}
    out.update((k, v) for k, v in new.items() if k not in out and old.get(k) != v)
    return out


def _dumps(facts: list[Any]) -> str:
    return json.dumps(facts, separators=(",", ":"))


def _facts_text(
    row: dict[str, Any] | None, added: list[Any], facts: list[Any], *, legacy: bool
) -> str:
    """The claim's facts as stored: the stored text with `added` appended (a JSON
    list, so no need to encode the old facts again), or all of `facts` encoded."""
    if row is None or legacy or row["facts"] is None:
        return _dumps(facts)
    stored: str = row["facts"]
    if not added:
        return stored
    more = _dumps(added)
    if stored == "[]":
        return more
    return f"{stored[:-1]},{more[1:]}"


@dataclass
class _Changes:
    """The writes one chunk of re-evaluations calls for, made in a few statements."""

    claims_new: list[dict[str, Any]] = field(default_factory=list)
    claims_changed: list[dict[str, Any]] = field(default_factory=list)
    windows_new: list[dict[str, Any]] = field(default_factory=list)
    windows_changed: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def write(self, session: Session) -> None:
        bulk_insert(session, _CLAIMS, self.claims_new)
        bulk_update_by_pk(session, _CLAIMS, self.claims_changed)
        bulk_insert(session, _WINDOWS, self.windows_new)
        bulk_update_by_pk(session, _WINDOWS, self.windows_changed)
        bulk_insert(session, SchAlert.__table__, self.alerts)  # type: ignore[attr-defined]


def _outcome_event(row: dict[str, Any], outcome: str, now: datetime) -> Envelope:
    """The `window-outcome` revision a stored window now calls for: its final
    outcome, PENDING (no longer final) or WITHDRAWN (no longer exists)."""
    final = outcome not in ("PENDING", "WITHDRAWN")
    return make_event(
        WindowOutcome,
        source=SOURCE,
        time=now,
        id=f"{short_id('wo', row['window_id'] + '|' + row['basis'], 32)}:{row['revision']}",
        data=WindowOutcomeData.model_validate(
            {
                "claim_id": row["claim_id"],
                "window_id": row["window_id"],
                "element": row["element"],
                "intervention": row["intervention"],
                "basis": row["basis"],
                "outcome": outcome,
                "outcome_date": row["outcome_date"] if final else None,
                "opens": row["opens"],
                "closes": row["closes"],
                "jobcentre_id": row["jobcentre_id"],
                "revision": row["revision"],
                "stage": row["stage"] if final else None,
                "stage_days": json.loads(row["stage_days"])
                if final and row["stage_days"]
                else None,
                "late_interview_date": row["late_interview"] if final else None,
            },
            strict=False,
        ),
    )


def _booking(h: ClaimHistory, w: Window) -> tuple[date | None, str | None]:
    """The latest booking of the window's intervention, and what became of it."""
    booked = [b for b in h.booked if b.intervention == w.intervention]
    if not booked:
        return None, None
    last = booked[-1]
    slot = date.fromisoformat(last.ref)
    if any(f.intervention == w.intervention and f.ref == last.ref for f in h.failed_to_attend):
        return slot, "FAILED_TO_ATTEND"
    if any(c.intervention == w.intervention and c.day == slot for c in h.conducted):
        return slot, "CONDUCTED"
    if slot < w.opens or slot > w.closes:
        return slot, "OUTSIDE_WINDOW"
    return slot, "BOOKED"


# --------------------------------------------------------------------------- queries


def claim_view(session: Session, claim_id: str) -> dict[str, Any] | None:
    history, events = load_history(session, claim_id)
    if not events:
        return None
    rows = session.exec(
        select(SchWindow)
        .where(SchWindow.claim_id == claim_id, SchWindow.exists_now == True)  # noqa: E712
        .order_by(SchWindow.intervention, SchWindow.seq, SchWindow.basis)  # type: ignore[arg-type]
    ).all()
    elig = history.eligibility()
    return {
        "claim_id": claim_id,
        "as_of": business_date(session),
        "benefit": history.benefit,
        "claim_start_date": history.claim_start_date,
        "contact_centre_id": history.contact_centre_id,
        "eligibility": {"confirmed": elig[0], "received": elig[1]} if elig else None,
        "markers": {
            "JOBCENTRE": history.marker_on("JOBCENTRE", date.max),
            "PRIMARY_BENEFIT": history.marker_on("PRIMARY_BENEFIT", date.max),
        },
        "timeline": [
            {
                "time": e.time,
                "date": london_date(e.time),
                "type": e.type,
                "id": e.id,
                "source": e.source,
                "data": _data_json(e),
            }
            for e in sorted(events, key=lambda e: (utc_key(e.time), e.id))
        ],
        "windows": [_window_json(r) for r in rows],
    }


def _data_json(e: Envelope) -> dict[str, Any] | None:
    data = getattr(e, "data", None)
    return data.model_dump(mode="json", exclude={"claim_id"}) if data is not None else None


def _window_json(r: SchWindow) -> dict[str, Any]:
    return {
        "window_id": r.window_id,
        "element": r.element,
        "intervention": r.intervention,
        "seq": r.seq,
        "basis": r.basis,
        "opens": r.opens,
        "closes": r.closes,
        "status": r.status,
        "outcome_date": r.outcome_date,
        "jobcentre_id": r.jobcentre_id,
        "stage": r.stage,
        "stage_days": json.loads(r.stage_days) if r.stage_days else None,
        "clock_start": r.clock_start,
        "early_interviews": r.early_interviews.split(",") if r.early_interviews else [],
        "late_interview": r.late_interview,
        "booking": {"slot_date": r.booking_slot, "state": r.booking_state}
        if r.booking_slot
        else None,
        "revision": r.revision,
    }


def jobcentre_queue(
    session: Session, office_id: str, status: str, closing_days: int
) -> list[dict[str, Any]]:
    """A DASO's work queue: one item per window (both bases), by earliest close."""
    as_of = business_date(session)
    mine = select(SchWindow.window_id).where(
        SchWindow.jobcentre_id == office_id,
        SchWindow.exists_now == True,  # noqa: E712
    )
    # Both bases of each window, even when one basis is attributed elsewhere.
    rows = session.exec(
        select(SchWindow).where(
            col(SchWindow.window_id).in_(mine),
            SchWindow.exists_now == True,  # noqa: E712
        )
    ).all()
    by_id: dict[str, dict[str, SchWindow]] = {}
    for r in rows:
        by_id.setdefault(r.window_id, {})[r.basis] = r
    items: list[dict[str, Any]] = []
    for wid, bases in by_id.items():
        p = bases.get("policy") or bases["measured"]
        m = bases.get("measured") or p
        statuses = {p.status, m.status}
        open_ = bool(statuses & {Status.OPEN.value, Status.UPCOMING.value})
        earliest = min(p.closes, m.closes)
        if status == "open":
            keep = open_
        elif status == "closing":
            keep = (
                open_
                and as_of is not None
                and earliest.toordinal() - closing_days <= as_of.toordinal() <= earliest.toordinal()
            )
        else:
            keep = Status.MISSED.value in statuses
        if not keep:
            continue
        items.append(
            {
                "window_id": wid,
                "claim_id": p.claim_id,
                "element": p.element,
                "intervention": p.intervention,
                "opens": {"policy": p.opens, "measured": m.opens},
                "closes": {"policy": p.closes, "measured": m.closes},
                "status": {"policy": p.status, "measured": m.status},
                "bases_conflict": (p.opens, p.closes) != (m.opens, m.closes),
                "booking": {"slot_date": p.booking_slot, "state": p.booking_state}
                if p.booking_slot
                else None,
                "stage": m.stage or p.stage,
                "days_left": (earliest - as_of).days if as_of else None,
            }
        )
    items.sort(key=lambda i: (min(i["closes"].values()), i["claim_id"], i["window_id"]))
    return items


def open_windows_by_district(
    session: Session, closing_days: int
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(element, district) -> windows open (not decided, policy basis), and those of
    them at risk: closing within `closing_days` of the business date with nothing
    booked. Windows of unallocated claims count under district UNALLOCATED."""
    as_of = business_date(session)
    districts = dict(session.exec(select(SchOffice.office_id, SchOffice.district)).all())
    kinds = dict(session.exec(select(SchOffice.office_id, SchOffice.kind)).all())
    w = _WINDOWS
    # Counted by the database (one row per element, Jobcentre and risk), not row
    # by row in Python: a scrape costs little however many windows are open.
    unbooked = or_(w.c.booking_state.is_(None), w.c.booking_state.not_in(["BOOKED", "CONDUCTED"]))
    at_risk = (
        and_(w.c.closes <= as_of + timedelta(days=closing_days), unbooked)
        if as_of is not None
        else false()
    )
    risky = case((at_risk, 1), else_=0)
    rows = session.execute(
        select(w.c.element, w.c.jobcentre_id, func.count(), func.sum(risky))
        .where(
            w.c.basis == "policy",
            w.c.exists_now == True,  # noqa: E712
            w.c.status.in_([Status.OPEN.value, Status.UPCOMING.value]),
        )
        .group_by(w.c.element, w.c.jobcentre_id)
    ).all()
    open_: dict[tuple[str, str], int] = {}
    risk: dict[tuple[str, str], int] = {}
    for element, jc, n, n_risk in rows:
        district = districts.get(jc) if jc and kinds.get(jc) == "JOBCENTRE" else None
        key = (element, district or "UNALLOCATED")
        open_[key] = open_.get(key, 0) + n
        if n_risk:
            risk[key] = risk.get(key, 0) + int(n_risk)
    return open_, risk


def counts(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(SchWindow.status, func.count()).group_by(SchWindow.status)  # type: ignore[call-overload]
    ).all()
    return {s: n for s, n in rows}


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), LONDON)
