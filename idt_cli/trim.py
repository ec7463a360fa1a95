"""The stream trimmer: deletes the entries every consumer group has read and acked,
once they are older than the retention, so that Redis's memory stops growing
with every event (about 800 bytes an event otherwise: some 24 GB for a national
year).

    python -m idt_cli.trim --retention-days 7 --interval 300
    python -m idt_cli.trim --retention-days 7 --once

Redis is `--redis-url` or, without it, `IDT_REDIS_URL` / `REDIS_URL`; its ACL user
and password `--redis-username` and `--redis-password-file`, or
`IDT_REDIS_USERNAME` and `IDT_REDIS_PASSWORD_FILE` (as for `idt_cli.clock`).

What it trims: the streams the services consume (the input streams and
`idt:window-outcome`: `trimmed_streams()`), each only below the lowest of

- the retention cut-off (entry ids are the times Redis added them, in ms);
- for every consumer group on the stream, its oldest pending entry, or, with
  nothing pending, the entry after the last one delivered to it.

So an entry some group has not read, or read and not acked, is never deleted
(../shared/docs/redis-streams-notes.md: "never trim below what every group has
acked"), and a stream no group reads is left alone. Alert streams (read by the
offices' own systems, which may read without a group) and the dead letters
(operators read them) are never trimmed.

What trimming gives up: a group created later, or moved back (XGROUP SETID) to
rebuild a service's state, finds only what is younger than the retention
(docs/deployment.md).

Groups only move forward, so a floor read before XTRIM is still safe when XTRIM
runs. A Redis outage is logged and retried at the next pass; SIGTERM or SIGINT
stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .standalone import add_redis_options, redis_url, stop_on_signals
from .wallclock import wall_clock_now

EntryId = tuple[int, int]


def trimmed_streams() -> list[str]:
    """The streams the services consume (their appliers' streams), sorted."""
    from idt_contract.acl import service_io

    return sorted({s for io in service_io().values() for s in io["receives"]})


def parse_id(entry_id: str | bytes) -> EntryId:
    """`<ms>-<seq>` as a pair of integers (ValueError otherwise)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@dataclass(frozen=True)
class GroupPosition:
    """Where a consumer group is on a stream."""

    name: str
    last_delivered: EntryId
    #: Its oldest entry delivered and not acked; None when nothing is pending.
    oldest_pending: EntryId | None


def trim_floor(groups: Sequence[GroupPosition], cutoff: EntryId) -> EntryId | None:
    """The id to trim a stream to (XTRIM MINID: entries below it go): below the
    `cutoff` and below what any group still needs. None when nothing may go: no
    group reads the stream, or the floor is the stream's very start."""
    if not groups:
        return None
    needed = min(
        g.oldest_pending
        if g.oldest_pending is not None
        else (g.last_delivered[0], g.last_delivered[1] + 1)
        for g in groups
    )
    floor = min(needed, cutoff)
    return floor if floor > (0, 1) else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def positions(client: redis.Redis, stream: str) -> list[GroupPosition]:
    """Every consumer group's position on `stream` (none when the stream does not exist)."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    out = []
    for g in groups:
        name = _text(g["name"])
        oldest = None
        if int(g["pending"]):
            summary = client.xpending(stream, name)
            if summary.get("min") is not None:
                oldest = parse_id(summary["min"])
        out.append(GroupPosition(name, parse_id(g["last-delivered-id"]), oldest))
    return out


@dataclass(frozen=True)
class Trimmed:
    stream: str
    floor: EntryId | None
    deleted: int


def trim_once(client: redis.Redis, streams: Iterable[str], cutoff_ms: int) -> list[Trimmed]:
    """One pass: each stream trimmed to its floor (`trim_floor`) for entries added
    before `cutoff_ms` (Unix time in ms)."""
    out = []
    for stream in streams:
        floor = trim_floor(positions(client, stream), (cutoff_ms, 0))
        deleted = 0
        if floor is not None:
            # Exact, not `~`: whole nodes below the floor are freed at once either
            # way, and an exact trim also frees the entries of a node partly below.
            deleted = int(client.xtrim(stream, minid=format_id(floor), approximate=False))
        out.append(Trimmed(stream, floor, deleted))
    return out


def run(
    client: redis.Redis,
    streams: Sequence[str],
    retention_s: float,
    interval_s: float,
    stop: threading.Event,
    *,
    now_ms: Callable[[], int] = lambda: int(wall_clock_now().timestamp() * 1000),
    log: Callable[[str], None] = print,
    once: bool = False,
) -> int:
    """Trim every `interval_s` until `stop` (or once); the entries deleted."""
    total = 0
    while not stop.is_set():
        try:
            done = trim_once(client, streams, now_ms() - int(retention_s * 1000))
        except redis.RedisError as exc:
            log(f"trim: a pass failed: {exc}; retrying in {interval_s:g}s")
            if once:
                raise
        else:
            n = sum(t.deleted for t in done)
            total += n
            if n:
                each = ", ".join(f"{t.stream} {t.deleted}" for t in done if t.deleted)
                log(f"trim: deleted {n} entries every group had acked ({each})")
        if once:
            break
        stop.wait(interval_s)
    return total


def parse_args(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """The options, with the ACL user and password put into `redis_url`. Bad or
    missing options exit with status 2 and a message (argparse's way)."""
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="idt-trim", description=__doc__.splitlines()[0])
    add_redis_options(p, env)
    p.add_argument(
        "--retention-days",
        type=float,
        required=True,
        help="keep entries younger than this (days; fractions allowed), acked or not",
    )
    p.add_argument("--interval", type=float, default=300.0, help="seconds between passes")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    args = p.parse_args(argv)
    args.redis_url = redis_url(p, args)
    if not args.retention_days > 0:
        p.error("--retention-days must be positive")
    if not args.interval > 0:
        p.error("--interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = stop_on_signals()
    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=5, socket_timeout=30)
    streams = trimmed_streams()
    print(
        f"trim: keeping {args.retention_days:g} days of {len(streams)} streams, "
        "and whatever any group has not acked",
        flush=True,
    )
    try:
        deleted = run(
            client,
            streams,
            args.retention_days * 86400,
            args.interval,
            stop,
            log=lambda line: print(line, flush=True),
            once=args.once,
        )
    except redis.RedisError:
        return 1
    finally:
        client.close()
    print(f"trim: stopped after deleting {deleted} entries", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
