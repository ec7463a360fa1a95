"""Where the services spend their time: py-spy attached to every service during
the throughput phase (or pyinstrument inside them when py-spy is missing), and
the summaries that go into results.md.

py-spy samples every thread from outside the process (`--nonblocking`: the
target is never paused) and leaves idle threads out, so a service's samples are
its busy time; its `raw` output is one line per distinct stack (frames joined by
`;`, then a count). A C extension's time (sqlite3, psycopg, pydantic-core) is
counted at the Python frame that called it: `do_execute` in SQLAlchemy is the
database driver at work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PYSPY_RATE = 100


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def pyinstrument_available() -> bool:
    try:
        return importlib.util.find_spec("pyinstrument") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Recorder:
    label: str
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path


class PySpy:
    """`py-spy record` on each pid until `stop` (SIGINT makes py-spy write its file)."""

    def __init__(self, binary: str, pids: dict[str, int], out_dir: Path, rate: int = PYSPY_RATE):
        self.binary = binary
        self.pids = pids
        self.out_dir = out_dir
        self.rate = rate
        self.recorders: list[Recorder] = []

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in self.pids.items():
            safe = label.replace("/", "-")
            out = self.out_dir / f"py-spy-{safe}.txt"
            log = self.out_dir / f"py-spy-{safe}.log"
            cmd = [
                self.binary, "record", "--pid", str(pid), "--rate", str(self.rate),
                "--nonblocking", "--format", "raw", "--nolineno", "--output", str(out),
            ]  # fmt: skip
            with log.open("wb") as f:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self.recorders.append(Recorder(label, proc, out, log))

    def stop(self) -> dict[str, tuple[str | None, str]]:
        """Per label: the raw stacks (None if py-spy wrote nothing) and py-spy's log."""
        for r in self.recorders:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGINT)
        out: dict[str, tuple[str | None, str]] = {}
        for r in self.recorders:
            try:
                r.proc.wait(60)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(5)
            raw = r.out.read_text(errors="replace") if r.out.exists() else None
            log = r.log.read_text(errors="replace") if r.log.exists() else ""
            out[r.label] = (raw, log)
        self.recorders.clear()
        return out


# --------------------------------------------------------------------------- summaries

#: Coarse categories, first match wins: (name, frame predicate on (function, file)).
DRIVER_CALLS = frozenset(
    {"do_execute", "do_executemany", "do_execute_no_params", "do_commit", "do_rollback",
     "do_begin", "do_close", "_exec_insertmany_context"}
)  # fmt: skip


def frame_parts(frame: str) -> tuple[str, str]:
    """`func (path/file.py)` -> (func, path/file.py)."""
    if frame.endswith(")") and " (" in frame:
        func, _, rest = frame.rpartition(" (")
        return func, rest[:-1]
    return frame, ""


def package_of(path: str) -> str:
    """The top-level package (or stdlib module) of a frame's file; project code
    by its package (`services.scheduler`, `idt_runtime`, ...)."""
    p = path.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in p:
            p = p.split(marker, 1)[1]
    if "/lib/python3" in p:
        p = p.split("/lib/python3", 1)[1].partition("/")[2]
    if "/work/" in p or p.startswith("/"):
        for root in ("services/", "idt_runtime/", "idt_contract/", "idt_domain/", "idt_cli/"):
            if root in p:
                p = root + p.split(root, 1)[1]
                break
    parts = [x for x in p.split("/") if x]
    if not parts:
        return "?"
    if parts[0] == "services" and len(parts) > 2:
        return f"services.{parts[1]}"
    head = parts[0]
    return head[:-3] if head.endswith(".py") else head


def category_of(func: str, path: str) -> str:
    pkg = package_of(path)
    if func.rsplit(".", 1)[-1] in DRIVER_CALLS and pkg == "sqlalchemy":
        return "database driver (sqlite3/psycopg C code, via SQLAlchemy)"
    if pkg in ("sqlite3", "psycopg", "psycopg_binary", "psycopg_pool"):
        return "database driver (sqlite3/psycopg C code, via SQLAlchemy)"
    if pkg in ("sqlalchemy", "sqlmodel", "alembic"):
        return "SQLAlchemy (Core/ORM, Python)"
    if pkg in ("pydantic", "pydantic_core", "annotated_types"):
        return "pydantic (validation, JSON)"
    if pkg == "redis":
        return "redis-py"
    if pkg == "faststream":
        return "FastStream"
    if pkg in ("asyncio", "threading", "concurrent", "selectors", "queue", "contextvars"):
        return "asyncio, threads (event loop, to_thread)"
    if pkg in ("json", "re", "datetime", "zoneinfo", "enum", "typing", "functools"):
        return "stdlib (json, re, datetime, ...)"
    if pkg.startswith("services."):
        return f"{pkg} (service code)"
    if pkg in ("idt_runtime", "idt_contract", "idt_domain"):
        return f"{pkg} (project code)"
    if pkg in ("uvicorn", "starlette", "fastapi", "anyio", "h11", "httptools", "httpx"):
        return "web server (uvicorn, starlette, anyio)"
    if pkg == "prometheus_client":
        return "prometheus_client (/metrics)"
    return "other"


#: Leaf frames that are waits, not work: py-spy's idle detection does not always
#: see them as idle (a thread blocked in epoll, or a worker on the executor's queue).
WAITS = frozenset(
    {("select", "selectors.py"), ("_worker", "thread.py"), ("wait", "threading.py"),
     ("_wait_for_tstate_lock", "threading.py"), ("get", "queue.py")}
)  # fmt: skip


def is_wait(func: str, path: str) -> bool:
    return (func.rsplit(".", 1)[-1], path.rsplit("/", 1)[-1]) in WAITS


@dataclass
class ProfileSummary:
    label: str
    samples: int
    seconds: float
    rate: int
    #: Samples left out as waits (see `WAITS`).
    waits: int = 0
    #: (name, samples), most first
    categories: list[tuple[str, int]] = field(default_factory=list)
    top_self: list[tuple[str, int]] = field(default_factory=list)
    #: Project functions (services/, idt_*) by inclusive samples.
    top_project: list[tuple[str, int]] = field(default_factory=list)

    @property
    def busy(self) -> float:
        """Busy samples per possible sample of one thread: ~1.0 is one core's worth."""
        possible = self.seconds * self.rate
        return self.samples / possible if possible > 0 else 0.0


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format: `frame;frame;...;frame count` per line (root first)."""
    out: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def _is_project(path: str) -> bool:
    return package_of(path).startswith(("services.", "idt_runtime", "idt_contract", "idt_domain"))


def short_frame(frame: str) -> str:
    func, path = frame_parts(frame)
    pkg = package_of(path)
    name = Path(path).name if path else ""
    return f"{func} ({pkg}/{name})" if name and pkg != name.removesuffix(".py") else frame


def summarise(
    label: str, stacks: list[tuple[list[str], int]], seconds: float, rate: int, top: int = 12
) -> ProfileSummary:
    total = waits = 0
    categories: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = frames[-1]
        func, path = frame_parts(leaf)
        if is_wait(func, path):
            waits += n
            continue
        total += n
        categories[category_of(func, path)] += n
        self_time[short_frame(leaf)] += n
        for frame in dict.fromkeys(frames):  # once per stack, however deep the recursion
            if _is_project(frame_parts(frame)[1]):
                inclusive[short_frame(frame)] += n
    return ProfileSummary(
        label=label,
        samples=total,
        seconds=seconds,
        rate=rate,
        waits=waits,
        categories=categories.most_common(),
        top_self=self_time.most_common(top),
        top_project=inclusive.most_common(top),
    )


def merge(label: str, summaries: list[ProfileSummary], top: int = 12) -> ProfileSummary:
    """All services together (categories only)."""
    categories: Counter[str] = Counter()
    for s in summaries:
        categories.update(dict(s.categories))
    seconds = max((s.seconds for s in summaries), default=0.0)
    rate = summaries[0].rate if summaries else PYSPY_RATE
    return ProfileSummary(
        label=label,
        samples=sum(s.samples for s in summaries),
        seconds=seconds,
        rate=rate,
        waits=sum(s.waits for s in summaries),
        categories=categories.most_common(top),
    )
