"""`idt replay`: publish a JSON-lines log of CloudEvents to the bus, then wait
until every consumer group has read all of it.

1. `scan`: every line is validated by the contract's decoder; any bad line and
   nothing is published.
2. `publish`: each line's bytes go, unchanged, into the field `__data__` of an
   entry on its event type's stream (`idt:<type>`; window alerts to their
   office's stream), with pipelined XADD in batches.
3. `drain_state`: a group has drained a stream when nothing is pending and its
   last-delivered id is at or after the last id this replay added. Redis 6.2's
   XINFO GROUPS has no `lag` field, so ids are compared.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from idt_contract import DATA_FIELD, DecodeError, decode, stream_for
from idt_contract.events import WindowAlert
from idt_contract.streams import alerts_stream

#: Bad lines shown in full; the rest are counted.
MAX_SHOWN_ERRORS = 20


class LogChanged(Exception):
    """The file changed between validation and publishing."""


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Scan:
    """What validation found: the stream of every line, or the bad lines."""

    path: Path
    size: int
    mtime_ns: int
    streams: list[str] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def events(self) -> int:
        return len(self.streams)


def _lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(line number, the line without its line ending, bytes consumed)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw.rstrip(b"\r\n"), len(raw)


def stream_of(event_type: str, office_id: str | None = None) -> str:
    return alerts_stream(office_id) if office_id is not None else stream_for(event_type)


def scan(path: Path, on_bytes: Callable[[int], None] | None = None) -> Scan:
    """Validate every line; never raises for bad content (see `Scan.errors`)."""
    stat = path.stat()
    result = Scan(path, stat.st_size, stat.st_mtime_ns)
    for number, line, consumed in _lines(path):
        if on_bytes is not None:
            on_bytes(consumed)
        if not line.strip():
            reason = "empty line (a log has one CloudEvent JSON per line)"
            _add_error(result, LineError(number, reason))
            continue
        try:
            event = decode(line)
        except DecodeError as exc:
            _add_error(result, LineError(number, str(exc)))
            continue
        office = event.data.office_id if isinstance(event, WindowAlert) else None
        result.streams.append(stream_of(event.type, office))
        result.types[event.type] += 1
    return result


def _add_error(result: Scan, error: LineError) -> None:
    result.error_count += 1
    if len(result.errors) < MAX_SHOWN_ERRORS:
        result.errors.append(error)


def publish(
    client: redis.Redis,
    checked: Scan,
    *,
    batch: int,
    on_events: Callable[[int], None] | None = None,
) -> dict[str, bytes]:
    """XADD every line of a validated log, `batch` per pipeline round trip, in file
    order; the last entry id added to each stream."""
    if not checked.ok:
        raise ValueError("the log has bad lines; nothing may be published")
    stat = checked.path.stat()
    if (stat.st_size, stat.st_mtime_ns) != (checked.size, checked.mtime_ns):
        raise LogChanged(f"{checked.path} changed after it was validated; nothing was published")
    last: dict[str, bytes] = {}
    pending: list[str] = []
    pipe = client.pipeline(transaction=False)

    def flush() -> None:
        ids = pipe.execute()
        for stream, entry_id in zip(pending, ids, strict=True):
            last[stream] = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
        if on_events is not None:
            on_events(len(pending))
        pending.clear()

    lines = (line for _, line, _ in _lines(checked.path) if line.strip())
    for stream, line in zip(checked.streams, lines, strict=True):
        pipe.xadd(stream, {DATA_FIELD: line})
        pending.append(stream)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return last


# --------------------------------------------------------------------------- draining


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class GroupState:
    stream: str
    group: str
    pending: int
    last_delivered: str
    last_added: str

    @property
    def drained(self) -> bool:
        return self.pending == 0 and parse_id(self.last_delivered) >= parse_id(self.last_added)

    def __str__(self) -> str:
        if self.drained:
            return f"{self.group} on {self.stream}: drained"
        behind = (
            f"last delivered {self.last_delivered} < last added {self.last_added}"
            if parse_id(self.last_delivered) < parse_id(self.last_added)
            else "all delivered"
        )
        return f"{self.group} on {self.stream}: {self.pending} pending, {behind}"


@dataclass(frozen=True)
class DrainState:
    groups: list[GroupState]
    #: Streams that no consumer group reads (yet).
    unread: list[str]

    @property
    def drained(self) -> bool:
        return all(g.drained for g in self.groups)

    @property
    def lagging(self) -> list[GroupState]:
        return [g for g in self.groups if not g.drained]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def drain_state(client: redis.Redis, last_added: dict[str, bytes]) -> DrainState:
    groups: list[GroupState] = []
    unread: list[str] = []
    pipe = client.pipeline(transaction=False)
    streams = sorted(last_added)
    for stream in streams:
        pipe.xinfo_groups(stream)
    for stream, infos in zip(streams, pipe.execute(), strict=True):
        if not infos:
            unread.append(stream)
        for info in infos:
            groups.append(
                GroupState(
                    stream=stream,
                    group=_text(info["name"]),
                    pending=int(info["pending"]),
                    last_delivered=_text(info["last-delivered-id"]),
                    last_added=_text(last_added[stream]),
                )
            )
    return DrainState(groups, unread)


#: Streams the services publish while they consume (through their outboxes).
DERIVED = ("idt:window-outcome",)
DERIVED_PATTERNS = ("idt:window-alerts:*",)


def derived_tails(client: redis.Redis) -> dict[str, bytes]:
    """The last entry id of every stream the services derive from what they consume."""
    names = [n for n in DERIVED if client.exists(n)]
    for pattern in DERIVED_PATTERNS:
        names += sorted(_text(k) for k in client.scan_iter(match=pattern, count=1000))
    tails: dict[str, bytes] = {}
    for name in names:
        info = client.xinfo_stream(name)
        last = info["last-generated-id"]
        tails[name] = last if isinstance(last, bytes) else str(last).encode()
    return tails


def wait_drained(
    client: redis.Redis,
    last_added: dict[str, bytes],
    timeout: float,
    on_poll: Callable[[DrainState], None] | None = None,
    interval: float = 0.2,
    settle: float = 1.0,
) -> DrainState:
    """Poll until every group on every stream published to has drained, and then
    until what the services derive from them has settled too: the window outcomes
    and alerts stop growing for `settle` seconds and every group reading them (the
    scoring service's) has drained. Scores read before that would be incomplete.
    Gives up after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    previous: dict[str, bytes] | None = None
    quiet_since: float | None = None
    while True:
        state = drain_state(client, last_added)
        if state.drained:
            tails = derived_tails(client)
            derived = drain_state(client, tails)
            state = DrainState(state.groups + derived.groups, state.unread)
            now = time.monotonic()
            if not derived.drained or tails != previous:
                previous, quiet_since = tails, now
            elif quiet_since is not None and now - quiet_since >= settle:
                if on_poll is not None:
                    on_poll(state)
                return state
        if on_poll is not None:
            on_poll(state)
        if time.monotonic() >= deadline:
            return state
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
