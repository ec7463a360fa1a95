"""The machine a run measured: cores, CPU, RAM, versions, the code's commit."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import sqlite3
import subprocess
from pathlib import Path
from time import perf_counter

import psutil

from .report import Machine

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_state() -> str:
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    if commit is None:
        return "unknown (not a git checkout)"
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"]) or ""
    changed = [line for line in status.splitlines() if line.strip()]
    return f"commit {commit}" + (
        f" + uncommitted changes in {len(changed)} tracked file(s)" if changed else ""
    )


def _probe_work() -> int:
    """A fixed piece of the work the services do most: small dicts, strings and
    JSON, in pure Python and in C."""
    acc = 0
    for i in range(20_000):
        claim_id, dates = f"SIM-{i:06d}", [i, i + 1, i + 2]
        d = {"claim_id": claim_id, "n": i, "dates": dates}
        acc += len(claim_id) + dates[2] % 7
        acc += len(json.loads(json.dumps(d))["dates"])
    return acc


def cpu_probe(rounds: int = 5) -> float:
    """Milliseconds the fixed work took, the best of `rounds`: how fast this machine
    runs Python now. Two machines of one kind have differed by 1.6-2 times in the CPU
    every process spent per event (bench/README.md), more than most changes: compare
    the probe of two runs before their rates."""
    best = float("inf")
    # Without the garbage collector, whose passes cost in proportion to what the
    # process holds: the bench's process holds more than a bare interpreter. Other
    # work on the machine still shows (twice, 200 ms instead of 125 while the
    # last run's processes were still exiting): the load averages beside it say so.
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            began = perf_counter()
            _probe_work()
            best = min(best, perf_counter() - began)
    finally:
        if enabled:
            gc.enable()
    return best * 1000


def machine(redis_version: str, postgres_version: str | None) -> Machine:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return Machine(
        cpu_count=os.cpu_count(),
        nproc=_run(["nproc"]) or "?",
        cpu_model=cpu_model(),
        ram_bytes=int(psutil.virtual_memory().total),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=platform.platform(),
        redis_version=redis_version,
        sqlite_version=sqlite3.sqlite_version,
        postgres_version=postgres_version,
        load_average=(load[0], load[1], load[2]),
        git=git_state(),
        cpu_probe_ms=cpu_probe(),
    )
