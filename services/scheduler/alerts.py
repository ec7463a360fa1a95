"""Which alerts a claim calls for at a business date (spec §6, issue 3) — pure.

The scheduler computes the full set of alerts due for a claim every time it
re-evaluates it, and publishes only those whose `key` it has not published
before; so a redelivered event, a replay or a recomputation never repeats one.

A *window* here is one intervention due (policy and measured bases together);
every alert carries both bases' dates and says when they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from typing import NamedTuple

from idt_domain.calendar import is_working_day

from .domain import LMI, ClaimHistory, Status, Window


@dataclass(frozen=True)
class AlertConfig:
    closing_days: int = 7


class Alert(NamedTuple):
    # A NamedTuple (immutable plain data), not a frozen dataclass: every evaluation
    # builds each alert the claim calls for, sent before or not.
    key: str  # what makes it unique: never sent twice
    kind: str
    office_id: str
    claim_id: str
    intervention: str
    window_id: str
    opens: dict[str, date]
    closes: dict[str, date]
    bases_conflict: bool
    slot_date: date | None = None
    detail: str | None = None


@dataclass(frozen=True)
class WindowPair:
    """The same window on both bases."""

    policy: Window
    measured: Window

    # Cached (the pair is frozen): every alert of a pair reads these.
    @property
    def window_id(self) -> str:
        return self.policy.window_id

    @property
    def intervention(self) -> str:
        return self.policy.intervention

    @cached_property
    def opens(self) -> dict[str, date]:
        return {"policy": self.policy.opens, "measured": self.measured.opens}

    @cached_property
    def closes(self) -> dict[str, date]:
        return {"policy": self.policy.closes, "measured": self.measured.closes}

    @cached_property
    def conflict(self) -> bool:
        p, m = self.policy, self.measured
        return (p.opens, p.closes) != (m.opens, m.closes)

    def statuses(self) -> tuple[Status, Status]:
        return self.policy.status, self.measured.status

    @property
    def any_final(self) -> bool:
        return self.policy.status.final or self.measured.status.final

    @property
    def all_final(self) -> bool:
        return self.policy.status.final and self.measured.status.final


def pairs(windows: Sequence[Window]) -> list[WindowPair]:
    """Pair policy and measured windows by window id. The LP chains of the two
    bases can differ in length; a window present on one basis only is paired
    with itself (its dates and status stand for both)."""
    by_id: dict[str, dict[str, Window]] = {}
    for w in windows:
        by_id.setdefault(w.window_id, {})[w.basis] = w
    out = []
    for _wid, b in by_id.items():
        p = b.get("policy") or b["measured"]
        m = b.get("measured") or p
        out.append(WindowPair(p, m))
    return out


def previous_working_day(day: date) -> date:
    day -= timedelta(days=1)
    while not is_working_day(day):
        day -= timedelta(days=1)
    return day


def _conflict_note(p: WindowPair) -> str | None:
    if not p.conflict:
        return None
    return (
        f"policy window {p.policy.opens}..{p.policy.closes} differs from the measured "
        f"window {p.measured.opens}..{p.measured.closes}"
    )


def alerts_for(
    h: ClaimHistory,
    windows: Sequence[Window],
    as_of: date | None,
    registry: Mapping[str, str],
    config: AlertConfig | None = None,
    jobcentres: frozenset[str] | None = None,
) -> list[Alert]:
    """Every alert the claim calls for as of `as_of` (already-sent ones included:
    the caller filters by key). `registry` maps office id to kind; `jobcentres`,
    its Jobcentres, when the caller has them already."""
    config = config or AlertConfig()
    today = as_of
    out: list[Alert] = []
    if jobcentres is None:
        jobcentres = frozenset(o for o, kind in registry.items() if kind == "JOBCENTRE")
    # Alerts go to whoever owns the customer now: the latest marker in event time.
    jc_now = _latest_marker(h)
    allocated = jc_now in jobcentres

    def alert(p: WindowPair, kind: str, office: str, key: str, **kw: object) -> Alert:
        detail = kw.pop("detail", None) or _conflict_note(p)
        return Alert(
            key=key,
            kind=kind,
            office_id=office,
            claim_id=h.claim_id,
            intervention=p.intervention,
            window_id=p.window_id,
            opens=p.opens,
            closes=p.closes,
            bases_conflict=p.conflict,
            detail=detail,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    all_pairs = pairs(windows)
    cc = h.contact_centre_id
    if h.eligibility() is not None and cc is not None and _names_no_jobcentre(jc_now, registry):
        out += _marker_unallocated(h, all_pairs, jc_now, jobcentres, cc, alert)

    if allocated and jc_now is not None:
        office = jc_now
        for p in all_pairs:
            wid = p.window_id
            if not p.all_final:
                # Once per window and pair of dates: a later move (a marker reset
                # restarting the measured clock) announces the new dates.
                po, pm = p.policy, p.measured
                dates = ":".join(
                    (po.opens.isoformat(), po.closes.isoformat(), pm.opens.isoformat(),
                     pm.closes.isoformat())
                )  # fmt: skip
                out.append(
                    alert(p, "WINDOW_OPENED", office, f"{wid}:WINDOW_OPENED:{dates}:{office}")
                )
            # CLOSING and MISSED per distinct window: the bases share one when their
            # dates agree; a measured window moved by a reset gets its own.
            # (A window on one basis only is paired with itself: the same object.
            # Two windows of a pair are never equal otherwise, their bases differ.)
            distinct: dict[tuple[date, date], list[Window]] = {}
            for w in (p.policy,) if p.measured is p.policy else (p.policy, p.measured):
                distinct.setdefault((w.opens, w.closes), []).append(w)
            for (opens, closes), ws in distinct.items():
                w = ws[0]
                dates = f"{opens}:{closes}"
                if not w.status.final:
                    closing_from = closes - timedelta(config.closing_days)
                    if today is not None and closing_from <= today <= closes:
                        key = f"{wid}:WINDOW_CLOSING:{dates}:{office}"
                        out.append(alert(p, "WINDOW_CLOSING", office, key))
                elif w.status is Status.MISSED:
                    note = f"missed on the {' and '.join(x.basis for x in ws)} basis"
                    if p.conflict:
                        note += f"; {_conflict_note(p)}"
                    key = f"{wid}:WINDOW_MISSED:{dates}:{office}"
                    out.append(alert(p, "WINDOW_MISSED", office, key, detail=note))

    # Bookings, pre-calls and re-bookings, each against the window it belongs to.
    ftas = {(f.intervention, f.ref) for f in h.failed_to_attend}
    conducted = {(c.intervention, c.day.isoformat()) for c in h.conducted}
    for b in h.booked:
        found = _window_of(all_pairs, b.intervention, b.day)
        if found is None or found.all_final:
            continue
        p = found
        slot = date.fromisoformat(b.ref)
        outside = [
            basis
            for basis, w in (("policy", p.policy), ("measured", p.measured))
            if slot < w.opens or slot > w.closes
        ]
        if outside:
            advice = " (do not book before the window opens)" if slot < p.policy.opens else ""
            out.append(
                alert(
                    p,
                    "BOOKING_OUTSIDE_WINDOW",
                    b.extra,
                    f"{p.window_id}:BOOKING_OUTSIDE_WINDOW:{b.order[1]}",
                    slot_date=slot,
                    detail=f"slot {slot} is outside the {' and '.join(outside)} window"
                    + ("s" if len(outside) > 1 else "")
                    + advice,
                )
            )
        live = (b.intervention, b.ref) not in ftas and (b.intervention, b.ref) not in conducted
        if live and today is not None and previous_working_day(slot) <= today < slot:
            out.append(
                alert(
                    p,
                    "PRE_CALL_DUE",
                    b.extra,
                    f"{p.window_id}:PRE_CALL_DUE:{b.order[1]}",
                    slot_date=slot,
                    detail=f"call the customer before the interview on {slot}",
                )
            )
    for f in h.failed_to_attend:
        found = _window_of(all_pairs, f.intervention, f.day)
        if found is None or found.all_final or not allocated or jc_now is None:
            continue
        slot = date.fromisoformat(f.ref)
        out.append(
            alert(
                found,
                "REBOOK_NEEDED",
                jc_now,
                f"{found.window_id}:REBOOK_NEEDED:{f.order[1]}",
                slot_date=slot,
                detail=f"failed to attend on {slot}; rebook inside the window",
            )
        )
    return out


def _names_no_jobcentre(value: str | None, registry: Mapping[str, str]) -> bool:
    """Unset, or a registered office that is not a Jobcentre, or an unknown office
    once the registry has Jobcentres at all (before it arrives nobody can tell)."""
    if value is None:
        return True
    if value in registry:
        return registry[value] != "JOBCENTRE"
    return any(kind == "JOBCENTRE" for kind in registry.values())


def _marker_unallocated(
    h: ClaimHistory,
    all_pairs: Sequence[WindowPair],
    jc_now: str | None,
    jobcentres: frozenset[str],
    cc: str,
    alert: Callable[..., Alert],
) -> list[Alert]:
    value = jc_now or "unset"
    # One alert per unallocated episode, identified in event time (so arrival order
    # cannot make two): from registration, or from the marker-set that took the
    # claim away from a Jobcentre.
    episode, was_allocated = "registration", False
    for m in h.markers:
        if m.marker != "JOBCENTRE":
            continue
        now_allocated = m.value in jobcentres
        if was_allocated and not now_allocated:
            episode = m.order[1]
        was_allocated = now_allocated
    for p in all_pairs:
        if p.intervention != LMI and not p.all_final:
            return [
                alert(
                    p,
                    "MARKER_UNALLOCATED",
                    cc,
                    f"{h.claim_id}:MARKER_UNALLOCATED:{episode}",
                    detail=f"eligible claim's JOBCENTRE marker is {value!r}, which names "
                    "no registered Jobcentre; windows are running",
                )
            ]
    return []


def _window_of(all_pairs: Sequence[WindowPair], intervention: str, day: date) -> WindowPair | None:
    """The window of an LP chain (or the single window) a fact dated `day` belongs
    to: the first whose predecessor was decided before `day` and which was not
    itself decided before it (spec §3: facts on or before an outcome belong to it)."""
    chain = sorted(
        (p for p in all_pairs if p.intervention == intervention), key=lambda p: p.policy.seq
    )
    previous: date | None = None
    for p in chain:
        decided = p.policy.outcome_date
        if (previous is None or day > previous) and (decided is None or day <= decided):
            return p
        previous = decided
    return None


def next_check(
    h: ClaimHistory, windows: Sequence[Window], as_of: date | None, config: AlertConfig
) -> date | None:
    """The next business date on which re-evaluating the claim can change
    anything (an outcome becoming MISSED, a closing or pre-call alert)."""
    days: list[date] = []
    for w in windows:
        if w.status.final:
            continue
        days += [w.opens, w.closes - timedelta(config.closing_days), w.closes + timedelta(days=1)]
    for b in h.booked:
        slot = date.fromisoformat(b.ref)
        days.append(previous_working_day(slot))
    future = [d for d in days if as_of is None or d > as_of]
    return min(future) if future else None


def _latest_marker(h: ClaimHistory) -> str | None:
    jc = [m for m in h.markers if m.marker == "JOBCENTRE"]
    return jc[-1].value if jc else None
