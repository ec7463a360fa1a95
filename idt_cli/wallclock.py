"""The one place the CLI reads the wall clock.

The CLI is an operator tool, not domain code: it stamps the registry it publishes
(unless `--as-of` is given) and labels its log files with the real time.
"""

from __future__ import annotations

from datetime import datetime

from idt_runtime.clock import SystemClock


def wall_clock_now() -> datetime:
    """The current time, aware, in UTC."""
    return SystemClock().now()
