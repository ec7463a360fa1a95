"""Giving memory the process freed back to the system (glibc's `malloc_trim`).

glibc's malloc keeps what a program frees in its arenas (one per thread that
allocated, up to eight per core) for later allocations, and returns it to the
system by itself only from the top of each heap. A service decodes, applies and
encodes thousands of events a second on several threads (the stream reader's
batches, the outbox relay, the sweeper, scrapes), each leaving freed chunks
scattered in its arena, so the resident size grew to the sum of every thread's
peaks and stayed there. Measured on the scheduler in the bench's 1M replay:
342 MiB resident with 63 MiB of malloc in use and 152 MiB free in the arenas;
one `malloc_trim(0)` took it to 219 MiB. The runtime calls `trim` every
`IDT_MEMORY_TRIM_S` seconds (docs/decisions.md, Memory)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from time import perf_counter

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` from the C library the process already has loaded, or
    None where it has none (musl, macOS, Windows)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def can_trim() -> bool:
    """This process's C library can give freed memory back (glibc)."""
    return _malloc_trim() is not None


def resident_bytes() -> int | None:
    """The process's resident set size, from /proc (None where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Trimmed:
    """One trim: bytes the resident size fell by (0 if it did not) and seconds taken."""

    released: int
    seconds: float


def trim() -> Trimmed | None:
    """Return the memory free in every malloc arena to the system; None where the C
    library cannot (nothing done). Takes each arena's lock in turn while it walks
    its free chunks: call it from a thread of its own, not the event loop."""
    fn = _malloc_trim()
    if fn is None:
        return None
    before = resident_bytes()
    began = perf_counter()
    fn(0)
    seconds = perf_counter() - began
    after = resident_bytes()
    released = before - after if before is not None and after is not None else 0
    return Trimmed(released=max(released, 0), seconds=seconds)
