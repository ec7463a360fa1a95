"""The services' own log lines (loggers under `idt.`): to stderr, each with a UTC
timestamp, its level, the service and its logger, at the level `IDT_LOG_LEVEL`
sets.

uvicorn configures its own loggers only. Before this, the root logger had no
handler, so Python's last resort printed the `idt.*` warnings bare (no time, no
level, no service) and dropped every INFO line (a prune's summary, a replica's
conflict retried), and `IDT_LOG_LEVEL` changed nothing."""

from __future__ import annotations

import logging
import time

#: One line per record: `2026-11-24T17:40:01.123Z WARNING scheduler idt.db: slow
#: write: ...` (the service named, so that lines gathered from several processes,
#: by a log collector or `idt up`, still say whose they are).
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s {service} %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _UtcFormatter(logging.Formatter):
    def converter(self, timestamp: float | None) -> time.struct_time:
        return time.gmtime(timestamp)


class _IdtHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` adds (so that it adds one per process)."""


def configure_logging(level: str, service: str = "idt") -> None:
    """Set the `idt` loggers' level and, unless the process already handles log
    records (the root logger has a handler: pytest's capture, a host that set up
    its own logging), write them to stderr in `FORMAT`, stamped with `service`.
    Idempotent: replicas and tests make several runtimes in one process (the
    first one's name stays). An unknown level is refused by the settings before
    this runs."""
    idt = logging.getLogger("idt")
    idt.setLevel(level.upper())
    if logging.getLogger().handlers or any(isinstance(h, _IdtHandler) for h in idt.handlers):
        return
    handler = _IdtHandler()
    handler.setFormatter(_UtcFormatter(FORMAT.replace("{service}", service), DATE_FORMAT))
    idt.addHandler(handler)
