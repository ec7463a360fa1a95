"""The live clock publisher: a `clock-tick` with the wall-clock time every interval.

    python -m idt_cli.clock --redis-url redis://... --interval 60

Redis is `--redis-url` or, without it, `IDT_REDIS_URL` / `REDIS_URL` (the names the
services read). Its ACL user and password: `--redis-username` and
`--redis-password-file` (a file holding the password, e.g. a Compose secret), or
`IDT_REDIS_USERNAME` and `IDT_REDIS_PASSWORD_FILE`; an option beats its variable.

Business time advances only through `clock-tick` events (spec §2); in live running
this process publishes them. Tick times are the interval boundaries (multiples of
the interval since the Unix epoch, UTC) and a tick's id is `tick-` + its time, so a
restarted publisher repeats at most the tick of the current boundary, under the
same id, and consumers drop the repeat. The first tick goes out at once on start.

It reads the wall clock through `idt_cli.wallclock`, as the trimmer does for its
cut-off, and nothing else in the CLI reads it. A Redis outage is logged and
retried; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import redis

from idt_contract import entry_fields, make_event, stream_for
from idt_contract.events import ClockTick

from .standalone import add_redis_options, redis_url, stop_on_signals
from .wallclock import wall_clock_now

SOURCE = "/clock"
STREAM = stream_for(ClockTick.event_type())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def tick_time(now: datetime, interval: float) -> datetime:
    """The latest interval boundary at or before `now` (aware, UTC)."""
    if now.tzinfo is None:
        raise ValueError("the clock needs an aware time")
    if interval <= 0:
        raise ValueError("the interval must be positive")
    step = timedelta(seconds=interval)
    return _EPOCH + ((now.astimezone(UTC) - _EPOCH) // step) * step


def tick_id(moment: datetime) -> str:
    return "tick-" + moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_event(moment: datetime) -> ClockTick:
    event = make_event(ClockTick, source=SOURCE, time=moment, data=None, id=tick_id(moment))
    assert isinstance(event, ClockTick)
    return event


def run(
    client: redis.Redis,
    interval: float,
    stop: threading.Event,
    *,
    now: Callable[[], datetime] = wall_clock_now,
    log: Callable[[str], None] = print,
) -> int:
    """Publish a tick for the current boundary, then one per boundary, until `stop`;
    the number of ticks published."""
    published = 0
    last: datetime | None = None
    while not stop.is_set():
        moment = tick_time(now(), interval)
        if last is None or moment > last:
            try:
                client.xadd(STREAM, entry_fields(tick_event(moment)))  # type: ignore[arg-type]
            except redis.RedisError as exc:
                log(f"clock: publishing the tick of {moment.isoformat()} failed: {exc}; retrying")
                stop.wait(min(interval, 5.0))
                continue
            last = moment
            published += 1
            log(f"clock: published {tick_id(moment)}")
        left = (moment + timedelta(seconds=interval) - now()).total_seconds()
        # Short waits, so a stop request or a clock step is noticed promptly.
        stop.wait(min(max(left, 0.0), 1.0))
    return published


def parse_args(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, float]:
    """The Redis URL, with the ACL user and password put into it, and the interval.
    Bad or missing options exit with status 2 and a message (argparse's way)."""
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="idt-clock", description=__doc__.splitlines()[0])
    add_redis_options(p, env)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between ticks")
    args = p.parse_args(argv)
    url = redis_url(p, args)
    if args.interval <= 0:
        p.error("--interval must be positive")
    return url, args.interval


def main(argv: list[str] | None = None) -> int:
    url, interval = parse_args(argv)
    stop = stop_on_signals()
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        published = run(client, interval, stop, log=lambda line: print(line, flush=True))
    finally:
        client.close()
    print(f"clock: stopped after {published} tick(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
