"""The scheduler on its own: the bench's log applied straight to the scheduler's
store, without Redis or the other services, to compare two versions of its code.

    python -m bench.alone                 # 100k events
    python -m bench.alone --events 200k --profile /tmp/scheduler.txt

The whole pipeline's numbers move by ±10% with the machine's load (bench/README.md),
more than most single changes do; this one process measured in CPU time does not
move as much, and run at the same time as a second copy (one core each) it is
compared under the same conditions: run it in both checkouts at once, e.g.

    (cd ../before && python -m bench.alone) & python -m bench.alone; wait

`python -m` puts the current directory first, so each copy runs its own code.

`--partition I/N` applies only the claim events of the claims whose id hashes to
I (CRC-32 mod N), with every clock tick and office registration, to a store of
its own, while still decoding every entry: what one of N schedulers would do if
each owned a share of the claims and read the whole streams. Run N of them at once
to see what splitting the scheduler by claim could gain on this machine:

    for i in 0 1; do python -m bench.alone --events 1m --partition $i/2 & done; wait

The log's entries are decoded as the consumer decodes them and applied in log
order, 2,000 entries a transaction split by stream (as the consumer's group
commit does under a backlog), to a fresh SQLite file: the store, the rules, the
windows, alerts and outbox rows are the service's own, and so are its garbage
collection's tuning and its WAL checkpoints (a thread every IDT_SQLITE_CHECKPOINT_S;
until 2026-12-07 the commits checkpointed every 1,000 pages and collections ran
at CPython's defaults: at 60 entries a transaction that read 273-320 µs of CPU an
event on the 100k log, 235-245 µs as the service runs, on one slow machine). Not
measured: reading and acking Redis, the outbox relay, the sweeper, /metrics.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path

from idt_contract import Envelope, decode_entry
from idt_contract.streams import DATA_FIELD_B
from idt_runtime.consumer import EventConsumer, RawEntry
from idt_runtime.db import (
    SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES,
    checkpoint_wal,
    make_engine,
    migrate,
)
from idt_runtime.service import tune_gc
from idt_runtime.settings import RuntimeSettings
from services.scheduler import handlers
from services.scheduler.app import SPEC

from . import synth
from .cli import DEFAULT_SEED, parse_count

#: Entries a transaction (the consumer's group commit takes up to 5,000).
GROUP = 2_000


def owns(claim_id: str, partition: tuple[int, int]) -> bool:
    """Whether partition (i, n) owns the claim: CRC-32 of its id, mod n, is i."""
    i, n = partition
    return zlib.crc32(claim_id.encode()) % n == i


def parse_partition(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) as (I, N)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/2, not {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"I must be at least 0 and less than N, not {text!r}")
    return i, n


def replay(
    log: Path,
    db: Path,
    group_size: int = GROUP,
    partition: tuple[int, int] = (0, 1),
    limit: int | None = None,
) -> dict[str, float]:
    """Apply the log (its first `limit` entries, when given) to a new scheduler
    store at `db`, `group_size` entries a transaction (entries read, the claim
    events of other partitions' claims among them); CPU and wall time spent, and
    the events applied."""
    # As the service runs: its WAL checkpointed by a thread of its own every
    # IDT_SQLITE_CHECKPOINT_S (commits only past the fallback), not by the commits
    # every 1,000 pages (`main` tunes garbage collection as the service does).
    engine = make_engine(
        f"sqlite:///{db}", sqlite_autocheckpoint_pages=SQLITE_AUTOCHECKPOINT_FALLBACK_PAGES
    )
    migrate(engine, SPEC.migrations, f"{SPEC.prefix}_alembic_version")
    consumer = EventConsumer(
        service="scheduler",
        group="bench",
        consumer="bench-alone",
        redis=None,  # type: ignore[arg-type]  # only the commit path is used
        engine=engine,
        tables=SPEC.tables,
        appliers=handlers.Scheduler().appliers(),
        metrics=None,  # type: ignore[arg-type]
    )
    n = applied = 0
    decoding = 0.0
    stop = threading.Event()
    interval_s = RuntimeSettings().sqlite_checkpoint_s

    def checkpoint_forever() -> None:
        while interval_s > 0 and not stop.wait(interval_s):
            checkpoint_wal(engine)

    checkpointer = threading.Thread(target=checkpoint_forever, name="checkpointer", daemon=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    checkpointer.start()
    group: dict[str, list[tuple[RawEntry, Envelope]]] = defaultdict(list)
    for line in synth.read_lines(log):
        if limit is not None and n >= limit:
            break
        stream = synth.stream_of(line)
        entry = RawEntry(stream, f"{n + 1}-0", {DATA_FIELD_B: line})
        began = time.process_time()
        event = decode_entry(stream, entry.fields)
        decoding += time.process_time() - began
        n += 1
        claim_id = getattr(getattr(event, "data", None), "claim_id", None)
        if claim_id is None or owns(claim_id, partition):
            group[stream].append((entry, event))
            applied += 1
        if n % group_size == 0:
            consumer._commit_batches(list(group.items()))
            group.clear()
    if group:
        consumer._commit_batches(list(group.items()))
    stop.set()
    checkpointer.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    engine.dispose()
    return {
        "events": n,
        "applied": applied,
        "cpu_s": cpu,
        "wall_s": wall,
        "decode_cpu_s": decoding,
    }


#: What a run under callgrind needs to be repeatable: the same string hashes, and
#: no checkpoint thread (it wakes by the clock, and valgrind slows the run ~60x).
CALLGRIND_ENV = {"PYTHONHASHSEED": "0", "IDT_SQLITE_CHECKPOINT_S": "0"}
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def callgrind_total(report: str) -> int:
    """The instructions a callgrind run executed, from its summary on stderr."""
    found = _I_REFS.findall(report)
    if not found:
        raise ValueError("no 'I refs' line in callgrind's output")
    return int(found[-1].replace(",", ""))


def instructions_per_event(full: int, start_up: int, events: int) -> float:
    """Instructions an event: the full run's less a run that applied nothing
    (start-up, migrations, reading the log's first line), over the events."""
    if events <= 0:
        raise ValueError("no events applied")
    return (full - start_up) / events


def _under_callgrind(argv: list[str], events: int, group: int) -> int:
    import subprocess

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    env = {**os.environ, **CALLGRIND_ENV}
    totals: list[int] = []
    with tempfile.TemporaryDirectory(prefix="idt-bench-callgrind-") as tmp:
        for extra in ([], ["--apply-none"]):
            out = Path(tmp) / f"callgrind{len(totals)}.out"
            cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
            cmd += [sys.executable, "-m", "bench.alone", *argv, *extra]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-4000:])
                return done.returncode
            totals.append(callgrind_total(done.stderr))
    full, start_up = totals
    print(
        f"scheduler alone under callgrind ({Path.cwd()}): {events:,} events, "
        f"{instructions_per_event(full, start_up, events):,.0f} instructions per event "
        f"(the run {full:,}, its start-up {start_up:,}), {group:,} entries a transaction"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.alone",
        description="The scheduler on its own: the bench's log applied straight to its "
        "store (no Redis, no other service), CPU per event; to compare two versions.",
    )
    ap.add_argument("--events", type=parse_count, default=100_000, help="log size (100k, 1m, ...)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--cache-dir", type=Path, default=Path("bench/out"))
    ap.add_argument(
        "--group",
        type=int,
        default=GROUP,
        help=f"entries a transaction (default {GROUP:,}, as under a backlog; a steady "
        "1,000 events/s read every 50 ms gives about 60)",
    )
    ap.add_argument(
        "--partition",
        type=parse_partition,
        default=(0, 1),
        metavar="I/N",
        help="apply only the claim events of claims whose id's CRC-32 mod N is I (with "
        "every tick and office), decoding every entry: one of N schedulers split by claim",
    )
    ap.add_argument("--profile", type=Path, help="write py-spy's collapsed stacks here")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per event under valgrind's callgrind instead of CPU "
        "time: repeatable to within 0.1%% on a machine whose speed moves by 10-40%%, "
        "and some 60 times slower (use 5k-10k events)",
    )
    # The start-up run of --instructions: everything but applying the log.
    ap.add_argument("--apply-none", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.instructions:
        if args.profile is not None:
            ap.error("--instructions and --profile do not go together")
        info = synth.ensure_log(args.cache_dir, args.events, args.seed)  # made outside
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--instructions"]
        return _under_callgrind(rest, info.events, max(1, args.group))
    if args.profile is not None and not os.environ.get("IDT_BENCH_ALONE_CHILD"):
        import subprocess

        from .profiling import pyspy_binary

        spy = pyspy_binary()  # the venv's own, found without the venv on PATH
        if spy is None:
            ap.error("--profile needs py-spy (pip install py-spy)")
        cmd = [spy, "record", "-r", "200", "-f", "raw", "-o", str(args.profile), "--"]
        cmd += [sys.executable, "-m", "bench.alone", *(argv or sys.argv[1:])]
        env = {**os.environ, "IDT_BENCH_ALONE_CHILD": "1"}
        return subprocess.run(cmd, env=env, check=False).returncode
    info = synth.ensure_log(args.cache_dir, args.events, args.seed)
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="idt-bench-alone-") as tmp:
        r = replay(
            info.path,
            Path(tmp) / "scheduler.db",
            max(1, args.group),
            args.partition,
            limit=0 if args.apply_none else None,
        )
    n = r["events"]
    if n == 0:
        print(f"scheduler alone ({Path.cwd()}): no events applied")
        return 0
    i, parts = args.partition
    share = f", partition {i}/{parts} ({r['applied']:,.0f} applied)" if parts > 1 else ""
    print(
        f"scheduler alone ({Path.cwd()}{share}): {n:,.0f} events, "
        f"{r['cpu_s'] / n * 1e6:,.0f} µs CPU per event "
        f"(decoding {r['decode_cpu_s'] / n * 1e6:,.0f} µs), "
        f"{n / r['wall_s']:,.0f} events/s over {r['wall_s']:.1f} s, "
        f"{args.group:,} entries a transaction"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
