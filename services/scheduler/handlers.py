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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from idt_contract import Envelope, decode, make_event, stream_for
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
from idt_runtime.db import lock_scope
from idt_runtime.latest import advance_clock, upsert_latest
from idt_runtime.outbox import add_routed_to_outbox

from .alerts import AlertConfig, alerts_for, next_check
from .domain import ClaimHistory, RulesConfig, Status, Window, attribute, evaluate
from .models import TABLES, SchAlert, SchClaim, SchClock, SchEvent, SchOffice, SchWindow

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
    return datetime.strptime(key, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: Claims re-evaluated per round of bulk queries.
RECOMPUTE_CHUNK = 500

#: Business time and the office registry: what every claim's evaluation reads.
STATE_SCOPE = "scheduler:business-time-and-registry"


def business_date(session: Session) -> date | None:
    clock = session.get(SchClock, 1)
    return clock.as_of if clock else None


def office_kinds(session: Session) -> dict[str, str]:
    """The registry as the scheduler knows it: office id -> kind."""
    return dict(session.exec(select(SchOffice.office_id, SchOffice.kind)).all())


def jobcentre_ids(registry: dict[str, str]) -> frozenset[str]:
    return frozenset(o for o, kind in registry.items() if kind == OfficeKind.JOBCENTRE.value)


def short_id(prefix: str, text: str, n: int = 40) -> str:
    """A bounded, deterministic CloudEvent id (ids are limited to 128 characters,
    and claim, doubt and event ids inside keys can make those longer)."""
    return f"{prefix}:{hashlib.sha256(text.encode()).hexdigest()[:n]}"


def _lock_claims(session: Session, claim_ids: Sequence[str]) -> dict[str, SchClaim]:
    """The claims' rows, locked (FOR UPDATE, in id order), created where missing."""
    rows = {
        c.claim_id: c
        for c in session.exec(
            select(SchClaim)
            .where(col(SchClaim.claim_id).in_(claim_ids))
            .order_by(SchClaim.claim_id)
            .with_for_update()
        ).all()
    }
    missing = [SchClaim(claim_id=c) for c in claim_ids if c not in rows]
    if missing:
        session.add_all(missing)
        session.flush()
        rows.update((c.claim_id, c) for c in missing)
    return rows


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
        out: dict[str, Any] = {stream_for(t): self.apply_claim_events for t in CLAIM_EVENT_TYPES}
        out[stream_for("office-registered")] = self.apply_offices
        out[stream_for("clock-tick")] = self.apply_ticks
        return out

    def apply_claim_events(self, session: Session, events: Sequence[Envelope]) -> None:
        # Replicas apply claim events side by side (each claim's row is locked in
        # `recompute`), but never beside a change of business time or registry.
        lock_scope(session, STATE_SCOPE, exclusive=False)
        claims: dict[str, None] = {}
        rows: dict[str, dict[str, Any]] = {}
        for ev in events:
            claim_id: str = ev.data.claim_id  # type: ignore[attr-defined]
            claims[claim_id] = None
            rows[ev.id] = {
                "event_id": ev.id,
                "claim_id": claim_id,
                "type": ev.type,
                "time_key": utc_key(ev.time),
                "payload": ev.model_dump_json(exclude_none=True).encode(),
            }
        have = set(
            session.exec(select(SchEvent.event_id).where(col(SchEvent.event_id).in_(list(rows))))
        )
        fresh = [row for event_id, row in rows.items() if event_id not in have]
        if fresh:
            # The claims' rows are locked in `recompute_many`, before their events are read.
            session.execute(insert(SchEvent), fresh)
        self.recompute_many(session, claims)

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
        lock_scope(session, STATE_SCOPE, exclusive=True)
        moved = advance_clock(session, SchClock, events)
        if moved is None:
            return  # business time never goes back
        before, as_of = moved
        if before is not None and as_of <= before:
            return  # a later tick on the same business date: nothing new is due
        q = select(SchClaim.claim_id).where(
            SchClaim.next_check.is_not(None),  # type: ignore[union-attr]
            SchClaim.next_check <= as_of,  # type: ignore[operator]
        )
        if before is None:
            q = select(SchClaim.claim_id)  # the first tick: everything gets a business date
        self.recompute_many(session, dict.fromkeys(session.exec(q).all()))

    # ------------------------------------------------------------------ recompute

    def recompute_many(self, session: Session, claim_ids: Iterable[str]) -> None:
        """Re-evaluate claims from all their events, a chunk at a time: one query
        each for the claims (locked), their events, windows and sent alerts, and
        one insert into the outbox."""
        ids = sorted(set(claim_ids))  # one order everywhere: replicas never deadlock
        if not ids:
            return
        as_of = business_date(session)
        registry = office_kinds(session)
        jcs = jobcentre_ids(registry)
        clock = session.get(SchClock, 1)
        business_time = _time_of(clock.time_key) if clock else None
        for start in range(0, len(ids), RECOMPUTE_CHUNK):
            chunk = ids[start : start + RECOMPUTE_CHUNK]
            claims = _lock_claims(session, chunk)
            payloads: dict[str, list[bytes]] = defaultdict(list)
            for claim_id, payload in session.exec(
                select(SchEvent.claim_id, SchEvent.payload).where(col(SchEvent.claim_id).in_(chunk))
            ):
                payloads[claim_id].append(bytes(payload))
            stored: dict[str, list[SchWindow]] = defaultdict(list)
            for row in session.exec(select(SchWindow).where(col(SchWindow.claim_id).in_(chunk))):
                stored[row.claim_id].append(row)
            sent = set(session.exec(select(SchAlert.key).where(col(SchAlert.claim_id).in_(chunk))))
            out: list[tuple[Envelope, str]] = []
            for claim_id in chunk:
                events = [decode(p) for p in payloads[claim_id]]
                history = ClaimHistory.from_events(claim_id, events)
                windows = evaluate(history, as_of, self.config.rules)
                latest = max((e.time for e in events), default=datetime(1970, 1, 1, tzinfo=UTC))
                now = max(business_time or latest, latest)
                out += self._store_windows(history, windows, jcs, now, stored[claim_id])
                out += self._publish_alerts(session, history, windows, as_of, registry, now, sent)
                claim = claims[claim_id]
                claim.next_check = next_check(history, windows, as_of, self.config.alerts)
                claim.jobcentre_marker = history.marker_on("JOBCENTRE", as_of or date.max) or None
                claim.evaluated_as_of = as_of
            session.add_all([*claims.values(), *(w for ws in stored.values() for w in ws)])
            add_routed_to_outbox(session, TABLES, out)

    def _store_windows(
        self,
        h: ClaimHistory,
        windows: Sequence[Window],
        jcs: frozenset[str],
        now: datetime,
        stored: list[SchWindow],
    ) -> list[tuple[Envelope, str]]:
        """Bring the claim's stored windows (`stored`, extended with new ones) up to
        `windows`; the window-outcome revisions that calls for."""
        existing = {(w.window_id, w.basis): w for w in stored}
        outcomes: list[Envelope] = []
        seen: set[tuple[str, str]] = set()  # (window id, basis)
        for w in windows:
            pk: tuple[str, str] = (w.window_id, w.basis)
            seen.add(pk)
            row = existing.get(pk) or SchWindow(
                window_id=w.window_id,
                basis=w.basis,
                claim_id=h.claim_id,
                element=w.element,
                intervention=w.intervention,
                seq=w.seq,
                opens=w.opens,
                closes=w.closes,
                status=w.status.value,
            )
            if pk not in existing:
                stored.append(row)
            stage = stage_days = None
            if w.status is Status.MISSED:
                a = attribute(h, w, jcs, min_booking_lead_days=self.config.min_booking_lead_days)
                stage = a.stage.value
                stage_days = {
                    "CONTACT_CENTRE": a.contact_centre_days,
                    "BDC": a.bdc_days,
                    "JOBCENTRE": a.jobcentre_days,
                }
            slot, state = _booking(h, w)
            row.opens, row.closes, row.status = w.opens, w.closes, w.status.value
            row.outcome_date, row.jobcentre_id = w.outcome_date, w.jobcentre_id
            row.stage = stage
            row.stage_days = json.dumps(stage_days) if stage_days else None
            row.clock_start, row.late_interview = w.clock_start, w.late_interview
            row.early_interviews = ",".join(d.isoformat() for d in w.early_interviews) or None
            row.booking_slot, row.booking_state = slot, state
            row.exists_now = True
            # Publish when the final outcome (or its attribution) changes.
            if w.status.final:
                signature = f"{w.status.value}|{w.outcome_date}|{w.jobcentre_id}|{stage}"
            elif row.published is not None:
                signature = "PENDING"
            else:
                signature = None
            if signature is not None and signature != row.published:
                row.revision += 1
                row.published = signature
                outcomes.append(
                    self._outcome_event(row, w.status.value if w.status.final else "PENDING", now)
                )
        for pk, row in existing.items():
            if pk in seen or not row.exists_now:
                continue
            row.exists_now = False
            row.status = "WITHDRAWN"
            if row.published is not None:
                row.revision += 1
                row.published = "WITHDRAWN"
                outcomes.append(self._outcome_event(row, "WITHDRAWN", now))
        stream = stream_for(WindowOutcome.event_type())
        return [(o, stream) for o in outcomes]

    def _outcome_event(self, row: SchWindow, outcome: str, now: datetime) -> Envelope:
        """The `window-outcome` revision a stored window now calls for: its final
        outcome, PENDING (no longer final) or WITHDRAWN (no longer exists)."""
        final = outcome not in ("PENDING", "WITHDRAWN")
        return make_event(
            WindowOutcome,
            source=SOURCE,
            time=now,
            id=f"{short_id('wo', f'{row.window_id}|{row.basis}', 32)}:{row.revision}",
            data=WindowOutcomeData.model_validate(
                {
                    "claim_id": row.claim_id,
                    "window_id": row.window_id,
                    "element": row.element,
                    "intervention": row.intervention,
                    "basis": row.basis,
                    "outcome": outcome,
                    "outcome_date": row.outcome_date if final else None,
                    "opens": row.opens,
                    "closes": row.closes,
                    "jobcentre_id": row.jobcentre_id,
                    "revision": row.revision,
                    "stage": row.stage if final else None,
                    "stage_days": json.loads(row.stage_days) if final and row.stage_days else None,
                    "late_interview_date": row.late_interview if final else None,
                },
                strict=False,
            ),
        )

    def _publish_alerts(
        self,
        session: Session,
        h: ClaimHistory,
        windows: Sequence[Window],
        as_of: date | None,
        registry: dict[str, str],
        now: datetime,
        sent: set[str],
    ) -> list[tuple[Envelope, str]]:
        """The alerts due for the claim that were never sent (`sent`: the keys of
        the claim's alerts sent so far; updated), recorded as sent."""
        due = alerts_for(h, windows, as_of, registry, self.config.alerts)
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
            session.add(
                SchAlert(
                    key=key,
                    kind=a.kind,
                    office_id=a.office_id,
                    claim_id=a.claim_id,
                    event_id=event.id,
                )
            )
            out.append((event, alerts_stream(a.office_id)))
        return out


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
    rows = session.exec(
        select(
            col(SchWindow.element),
            col(SchWindow.jobcentre_id),
            col(SchWindow.closes),
            col(SchWindow.booking_state),
        ).where(
            SchWindow.basis == "policy",
            SchWindow.exists_now == True,  # noqa: E712
            col(SchWindow.status).in_([Status.OPEN.value, Status.UPCOMING.value]),
        )
    ).all()
    open_: dict[tuple[str, str], int] = {}
    risk: dict[tuple[str, str], int] = {}
    for element, jc, closes, booking in rows:
        district = districts.get(jc) if jc and kinds.get(jc) == "JOBCENTRE" else None
        key = (element, district or "UNALLOCATED")
        open_[key] = open_.get(key, 0) + 1
        booked = booking in ("BOOKED", "CONDUCTED")
        if as_of is not None and (closes - as_of).days <= closing_days and not booked:
            risk[key] = risk.get(key, 0) + 1
    return open_, risk


def counts(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(SchWindow.status, func.count()).group_by(SchWindow.status)  # type: ignore[call-overload]
    ).all()
    return {s: n for s, n in rows}


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), LONDON)
