"""`python -m bench --quick` end to end: it runs, writes every section of
results.md with numbers in it, and leaves no process or run directory behind.
Nothing here is a timing assertion: the speed goals are the benchmark's report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

NUMBER = r"\d[\d,]*(?:\.\d+)?"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def processes_under(path: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cwd = p.cwd()
        except (psutil.Error, OSError):
            continue
        if cwd.startswith(str(path)):
            found.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])}")
    return found


@pytest.mark.timeout(300)
def test_quick_bench_writes_every_section_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDT_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--cache-dir", str(cache)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()

    assert "python -m bench --quick" in text.split("## Goals")[0]
    goals = section(text, "Goals")
    assert len(re.findall(r"\*\*(PASS|FAIL)\*\*", goals)) == 3  # memory: needs 10M
    assert re.search(rf"{NUMBER}% \({NUMBER}/s / {NUMBER}/s", goals)
    assert re.search(rf"p99 {NUMBER} ms over {NUMBER} alerts", goals)

    machine = section(text, "Machine\n")
    for row in ("cores", "CPU", "RAM", "Python", "redis-server", "SQLite"):
        assert f"| {row}" in machine
    assert re.search(r"\| redis-server \| \d+\.\d+\.\d+ \|", machine)

    throughput = section(text, "Throughput")
    assert re.search(rf"\| 10k \| {NUMBER} \| {NUMBER} \|.*\*\*{NUMBER}/s\*\*", throughput)
    services = section(text, "Per-service consumption")
    for name in ("contact_centre", "bdc", "scheduler", "scoring"):
        assert re.search(rf"\| {name} \| {NUMBER} \| {NUMBER} s \| {NUMBER}/s", services), name
    limit = section(text, "Machine limit")
    assert re.search(rf"\| 10k \| {NUMBER} \| {NUMBER} B \| {NUMBER}/s \| {NUMBER}/s \|", limit)
    latency = section(text, "Latency")
    assert re.search(rf"\| {NUMBER}/s \| {NUMBER} \| {NUMBER} \| {NUMBER} ms \|", latency)
    memory = section(text, "Peak memory")
    for name in ("contact_centre", "bdc", "scheduler", "scoring", "redis-server"):
        assert re.search(rf"\| {name} \| {NUMBER} MiB \|", memory), name
    stores = section(text, "Stores")
    assert re.search(rf"\| scheduler \| sch_\w+ \| {NUMBER} \|", stores)
    assert "Not run (`--scaling`" in section(text, "Scaling")
    assert "Not run (`--profile`)" in section(text, "Profile")

    # Nothing left behind: no run directory, no process started from one.
    assert not list(cache.glob("run-*"))
    assert processes_under(cache) == []
