"""The stream trimmer (idt_cli.trim) on a real Redis: it deletes only entries every
consumer group has read and acked, and only those older than the retention."""

from __future__ import annotations

import threading

import pytest
import redis

from idt_cli import trim
from idt_cli.trim import GroupPosition, trim_floor

S = "idt:claim-registered"
DATA = {"__data__": b"{}"}


def ids(r: redis.Redis, stream: str = S) -> list[str]:
    return [i.decode() for i, _ in r.xrange(stream)]


def add(r: redis.Redis, *ms: int, stream: str = S) -> None:
    for m in ms:
        r.xadd(stream, DATA, id=f"{m}-0")


def read(r: redis.Redis, group: str, count: int, stream: str = S) -> list[str]:
    got = r.xreadgroup(group, f"{group}-1", {stream: ">"}, count=count)
    return [i.decode() for i, _ in got[0][1]] if got else []


# ------------------------------------------------------------------ the floor, pure


def test_the_floor_is_below_every_group_and_the_cutoff():
    a = GroupPosition("a", (50, 0), None)  # read and acked up to 50-0
    b = GroupPosition("b", (70, 0), (30, 2))  # 30-2 read, not acked
    assert trim_floor([a], (1000, 0)) == (50, 1)
    assert trim_floor([a, b], (1000, 0)) == (30, 2)
    assert trim_floor([a, b], (20, 0)) == (20, 0)  # the retention keeps more


def test_nothing_goes_from_a_stream_no_group_reads_or_from_its_start():
    assert trim_floor([], (1000, 0)) is None
    assert trim_floor([GroupPosition("a", (0, 0), None)], (1000, 0)) is None
    assert trim_floor([GroupPosition("a", (50, 0), None)], (0, 0)) is None


def test_ids_parse_and_format():
    assert trim.parse_id(b"1700000000000-3") == (1700000000000, 3)
    assert trim.parse_id("5") == (5, 0)
    assert trim.format_id((5, 7)) == "5-7"
    with pytest.raises(ValueError):
        trim.parse_id("x-1")


# ------------------------------------------------------------------ on Redis


def test_only_what_every_group_has_acked_goes(r: redis.Redis):
    add(r, 1, 2, 3, 4, 5, 6)
    r.xgroup_create(S, "fast", id="0")
    r.xgroup_create(S, "slow", id="0")
    fast = read(r, "fast", 6)
    r.xack(S, "fast", *fast)
    slow = read(r, "slow", 4)  # 1..4 delivered
    r.xack(S, "slow", slow[0], slow[1], slow[3])  # 3-0 still pending

    (done,) = trim.trim_once(r, [S], cutoff_ms=10**13)
    assert done.floor == (3, 0) and done.deleted == 2
    assert ids(r) == ["3-0", "4-0", "5-0", "6-0"]

    r.xack(S, "slow", slow[2])  # now nothing pending: up to 4-0 is acked
    assert trim.trim_once(r, [S], cutoff_ms=10**13)[0].deleted == 2
    assert ids(r) == ["5-0", "6-0"]  # 5 and 6 were never delivered to slow

    # The slow group reads on from where it was: nothing it needs went.
    assert read(r, "slow", 10) == ["5-0", "6-0"]


def test_entries_younger_than_the_retention_stay_even_when_acked(r: redis.Redis):
    add(r, 1000, 2000, 3000)
    r.xgroup_create(S, "g", id="0")
    r.xack(S, "g", *read(r, "g", 3))
    (done,) = trim.trim_once(r, [S], cutoff_ms=2500)
    assert done.deleted == 2 and ids(r) == ["3000-0"]


def test_streams_without_groups_and_missing_streams_are_left_alone(r: redis.Redis):
    add(r, 1, 2, 3, stream="idt:marker-set")
    done = trim.trim_once(r, ["idt:marker-set", "idt:claim-closed"], cutoff_ms=10**13)
    assert [(t.floor, t.deleted) for t in done] == [(None, 0), (None, 0)]
    assert ids(r, "idt:marker-set") == ["1-0", "2-0", "3-0"]
    assert not r.exists("idt:claim-closed")


def test_a_group_that_has_read_nothing_keeps_everything(r: redis.Redis):
    add(r, 1, 2)
    r.xgroup_create(S, "done", id="$")  # created after both: nothing delivered
    r.xgroup_create(S, "new", id="0")  # will read from the start
    assert trim.trim_once(r, [S], cutoff_ms=10**13)[0].deleted == 0
    assert ids(r) == ["1-0", "2-0"]


def test_the_loop_trims_each_pass_and_stops(r: redis.Redis):
    add(r, 1, 2, 3)
    r.xgroup_create(S, "g", id="0")
    r.xack(S, "g", *read(r, "g", 3))
    stop = threading.Event()
    lines: list[str] = []
    passes = iter([100, 10**13])

    def now_ms() -> int:
        try:
            return next(passes)
        except StopIteration:
            stop.set()
            return 0

    deleted = trim.run(r, [S], 0.001, 0.01, stop, now_ms=now_ms, log=lines.append)
    # First pass: cut-off 99 ms keeps all; second: up to the acked 3-0 goes.
    assert deleted == 3 and ids(r) == []
    assert lines == ["trim: deleted 3 entries every group had acked (idt:claim-registered 3)"]


def test_the_streams_are_the_ones_the_services_consume():
    streams = trim.trimmed_streams()
    assert "idt:claim-registered" in streams and "idt:window-outcome" in streams
    assert not [s for s in streams if "window-alerts" in s or s == "idt:dead-letters"]


def test_options_are_checked(capsys: pytest.CaptureFixture[str]):
    env = {"IDT_REDIS_URL": "redis://127.0.0.1:6379/0"}
    args = trim.parse_args(["--retention-days", "7"], env)
    assert args.retention_days == 7 and args.interval == 300 and not args.once
    for bad, message in (
        (["--retention-days", "0"], "--retention-days must be positive"),
        (["--retention-days", "1", "--interval", "-1"], "--interval must be positive"),
        ([], "required: --retention-days"),
    ):
        with pytest.raises(SystemExit) as exc:
            trim.parse_args(bad, env)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trim.parse_args(["--retention-days", "1"], {})
    assert "give --redis-url" in capsys.readouterr().err


def test_main_runs_one_pass_against_redis(redis_url: str, r: redis.Redis, capsys):
    add(r, 1, 2)
    r.xgroup_create(S, "g", id="0")
    r.xack(S, "g", *read(r, "g", 2))
    assert trim.main(["--redis-url", redis_url, "--retention-days", "1", "--once"]) == 0
    out = capsys.readouterr().out
    assert "trim: deleted 2 entries every group had acked (idt:claim-registered 2)" in out
    assert ids(r) == []
