"""The synthetic log: a simulated base year, scaled to any size by cloning claims.

Simulating is slow (about 17k events/s: 30M events would take half an hour), so a
base year of at most `BASE_CLAIMS` claims is simulated once with `idt simulate`'s
library functions and scaled: every claim event of the base is written `k` times
in a row (k ~ target / base; the fractional part decided per claim by a hash),
copy 0 as it is and copy j with `-x<j>` appended to its CloudEvent id, claim id
(`subject` and `data.claim_id`) and a fresh pseudonymous `customer_ref`
(`cr_` + 40 hex digits). The office registry and the clock ticks appear once.
Copies sit next to their original, so the event-time order of the base holds.

The suffix keeps every id valid under the contract: claim ids stay under 64
characters, event ids under 128, and `-x<digits>` never completes a National
Insurance number pattern (a letter A-D right after the digits would: a suffix
such as `.c7` turns `SIM-000003` into something the contract rejects).

Logs are cached under the cache directory (`bench/out/` by default, git-ignored)
keyed by version, size and seed, and are read line by line, never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

#: Changing how logs are made changes this, so stale caches are not reused.
VERSION = 1
#: The same for the latency phase's background events (3: each day's events
#: interleaved, `interleave_days`).
FILLER_VERSION = 3
#: The largest base year simulated; bigger logs are clones of it.
BASE_CLAIMS = 20_000
#: Events per claim in a simulated year (about 5.9, plus ticks and offices);
#: only used to size the base.
EVENTS_PER_CLAIM = 5.9

_TYPE_KEY = b'"type":"'
_TIME_KEY = b'"time":"'
_ID_KEY = b'"id":"'


class LineFields(NamedTuple):
    event_id: str
    claim_id: str | None
    customer_ref: str | None
    type: str


def line_fields(line: bytes) -> LineFields:
    doc = json.loads(line)
    data = doc.get("data") or {}
    return LineFields(doc["id"], data.get("claim_id"), data.get("customer_ref"), doc["type"])


_STREAMS: dict[bytes, str] = {}


def stream_of(line: bytes) -> str:
    """The stream a log line goes to (`idt:<type>`), read without parsing the JSON:
    the envelope's `type` comes before `data` in the wire format, and no data model
    has a field named `type`."""
    i = line.index(_TYPE_KEY) + len(_TYPE_KEY)
    raw = line[i : line.index(b'"', i)]
    stream = _STREAMS.get(raw)
    if stream is None:
        if raw == b"window-alert":
            raise ValueError("a log to replay holds no window alerts (they go to office streams)")
        stream = _STREAMS[raw] = "idt:" + raw.decode()
    return stream


def date_of(line: bytes) -> date:
    """The (local) date part of a line's `time`, without parsing the JSON."""
    i = line.index(_TIME_KEY) + len(_TIME_KEY)
    return date.fromisoformat(line[i : i + 10].decode())


def clone_customer_ref(ref: str, tag: str) -> str:
    """A pseudonymous reference of the same shape, different for every clone."""
    digest = hashlib.blake2b(f"{ref}:{tag}".encode(), digest_size=20).hexdigest()
    return "cr_" + digest


def clone_line(line: bytes, fields: LineFields, tag: str) -> bytes:
    """The line with `-<tag>` appended to its event id and claim id, and a new
    customer reference; byte replacements only (fast: no JSON round trip)."""
    suffix = ("-" + tag).encode()
    eid = fields.event_id.encode()
    out = line.replace(_ID_KEY + eid + b'"', _ID_KEY + eid + suffix + b'"', 1)
    if fields.claim_id is not None:
        cid = b'"' + fields.claim_id.encode()
        out = out.replace(cid + b'"', cid + suffix + b'"')
    if fields.customer_ref is not None:
        ref = fields.customer_ref
        out = out.replace(
            b'"' + ref.encode() + b'"', b'"' + clone_customer_ref(ref, tag).encode() + b'"'
        )
    return out


def copies_of(claim_id: str, factor: float, seed: int) -> int:
    """How many copies of a base claim a log scaled by `factor` holds: the whole
    part for every claim, one more for a hashed share of them."""
    whole = math.floor(factor)
    h = hashlib.blake2b(f"{seed}:{claim_id}".encode(), digest_size=8).digest()
    return whole + (1 if int.from_bytes(h, "big") / 2**64 < factor - whole else 0)


def scale(lines: Iterable[bytes], factor: float, seed: int) -> Iterator[bytes]:
    """The base log's lines with every claim event cloned (see the module doc)."""
    for line in lines:
        fields = line_fields(line)
        if fields.claim_id is None:
            yield line
            continue
        for j in range(copies_of(fields.claim_id, factor, seed)):
            yield line if j == 0 else clone_line(line, fields, f"x{j}")


def read_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a file, without their line endings, one at a time."""
    with path.open("rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if line:
                yield line


def base_claims_for(events: int) -> int:
    return max(1, min(BASE_CLAIMS, math.ceil(events / EVENTS_PER_CLAIM)))


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class LogInfo:
    path: Path
    events: int
    claims: int
    bytes: int
    base_claims: int
    factor: float
    seed: int
    types: dict[str, int]


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _load_meta(path: Path) -> LogInfo | None:
    meta = _meta_path(path)
    if not path.exists() or not meta.exists():
        return None
    try:
        doc = json.loads(meta.read_text())
        info = LogInfo(**{**doc, "path": path})
    except (ValueError, TypeError):
        return None
    return info if info.bytes == path.stat().st_size else None


def _write_atomically(path: Path, lines: Iterable[bytes]) -> tuple[int, int, Counter[str]]:
    """(lines, claims registered, events per type) written to `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = claims = 0
    types: Counter[str] = Counter()
    try:
        with tmp.open("wb", buffering=1 << 20) as f:
            for line in lines:
                f.write(line + b"\n")
                n += 1
                t = stream_of(line)[4:]
                types[t] += 1
                if t == "claim-registered":
                    claims += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n, claims, types


def simulated_lines(
    claims: int, seed: int, start: date, days: int, on_day: Callable[[date], None] | None = None
) -> Iterator[bytes]:
    """`idt simulate`'s log as wire-format lines (the registry first, then the days)."""
    from idt_cli.demo import at
    from idt_cli.offices import DEFAULT_OFFICES, read_registry
    from idt_cli.simulate import SimulationSpec, simulate
    from idt_contract import encode

    registry = read_registry(DEFAULT_OFFICES, time=at(start, 0, 0))
    if not registry.ok:
        raise RuntimeError(f"the office registry {DEFAULT_OFFICES} has problems")
    spec = SimulationSpec(claims, seed, start, days)
    for event in simulate(spec, registry.events, on_day):
        yield encode(event)


def default_start() -> date:
    from idt_cli.simulate import DEFAULT_START

    return DEFAULT_START


def year_days(start: date) -> int:
    from idt_cli.simulate import a_year_from

    return a_year_from(start)


def ensure_base(
    cache_dir: Path, claims: int, seed: int, on_day: Callable[[date], None] | None = None
) -> Path:
    """The simulated base year of `claims` claims (cached)."""
    path = cache_dir / f"base-v{VERSION}-c{claims}-s{seed}.jsonl"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = default_start()
    _write_atomically(path, simulated_lines(claims, seed, start, year_days(start), on_day))
    return path


def ensure_log(
    cache_dir: Path,
    events: int,
    seed: int,
    *,
    on_day: Callable[[date], None] | None = None,
    on_line: Callable[[int], None] | None = None,
) -> LogInfo:
    """A log of about `events` events (cached): the base year scaled to size."""
    path = cache_dir / f"log-v{VERSION}-e{events}-s{seed}.jsonl"
    cached = _load_meta(path)
    if cached is not None:
        return cached
    base_claims = base_claims_for(events)
    base = ensure_base(cache_dir, base_claims, seed, on_day)
    shared = claim_events = 0
    for line in read_lines(base):
        if line_fields(line).claim_id is None:
            shared += 1
        else:
            claim_events += 1
    factor = max(0.0, (events - shared) / claim_events) if claim_events else 0.0

    def counted() -> Iterator[bytes]:
        for i, line in enumerate(scale(read_lines(base), factor, seed), start=1):
            if on_line is not None and i % 10_000 == 0:
                on_line(10_000)
            yield line

    n, claims, types = _write_atomically(path, counted())
    info = LogInfo(path, n, claims, path.stat().st_size, base_claims, factor, seed, dict(types))
    doc = {k: v for k, v in asdict(info).items() if k != "path"}
    _meta_path(path).write_text(json.dumps(doc, indent=1))
    return info


def ensure_filler(cache_dir: Path, events: int, seed: int, start: date, days: int = 30) -> Path:
    """Background events for the latency phase (cached): `days` simulated days from
    `start` (registrations, marker fixes, clearances, bookings, interviews), every id
    tagged `-lat` so nothing collides with the replayed log; no registry (the log
    published it) and no clock ticks: at a national volume (~30M events a year,
    ~80k a day) a minute at 1,000 events/s is within one business day, so the
    latency phase adds a single tick itself. Each day's events come interleaved
    (`interleave_days`), so that every second of the phase has the day's mix. At
    least `events` lines."""
    name = f"filler-v{FILLER_VERSION}-e{events}-s{seed}-{start.isoformat()}-d{days}.jsonl"
    path = cache_dir / name
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    claims = max(10, math.ceil(events / 3))  # every registration is 3 events at least

    def lines() -> Iterator[tuple[bytes, LineFields]]:
        for line in simulated_lines(claims, seed + 1_000_003, start, days):
            fields = line_fields(line)
            if fields.type in ("office-registered", "clock-tick"):
                continue
            yield clone_line(line, fields, "lat"), fields

    _write_atomically(path, interleave_days(lines(), random.Random(seed)))
    return path


def interleave_days(
    lines: Iterable[tuple[bytes, LineFields]], rnd: random.Random
) -> Iterator[bytes]:
    """The lines of a log in time order, each day's in a random order that keeps
    every claim's own events in theirs. The simulator stamps each kind of event at
    its hour of the day (every clearance of a day between 16:00 and 17:00): in time
    order at 1,000 events/s a day's 800 clearances came in one run, a second with
    hardly anything else, where the latency phase means a steady mix."""
    day: list[tuple[bytes, LineFields]] = []
    current: bytes | None = None
    for line, fields in lines:
        at = _day_of(line)
        if at != current and day:
            yield from _interleaved(day, rnd)
            day = []
        current = at
        day.append((line, fields))
    yield from _interleaved(day, rnd)


def _day_of(line: bytes) -> bytes:
    start = line.index(_TIME_KEY) + len(_TIME_KEY)
    return line[start : start + 10]


def _interleaved(day: list[tuple[bytes, LineFields]], rnd: random.Random) -> Iterator[bytes]:
    # A uniformly random merge of the claims' sequences: one ticket per event, the
    # tickets shuffled, each ticket taking its claim's next event.
    queues: dict[str, deque[bytes]] = defaultdict(deque)
    for line, fields in day:
        queues[fields.claim_id or fields.event_id].append(line)
    tickets = [key for key, queue in queues.items() for _ in queue]
    rnd.shuffle(tickets)
    for key in tickets:
        yield queues[key].popleft()


def sample_claim_lines(path: Path, n: int) -> list[bytes]:
    """Up to `n` claim-event lines from the start of a log (real entry shapes)."""
    out: list[bytes] = []
    for line in read_lines(path):
        if b'"claim_id"' in line:
            out.append(line)
            if len(out) >= n:
                break
    return out
