"""A service under pyinstrument, for `python -m bench --profile` when py-spy is not
installed: `python -m bench.pyi_service <module:factory> <port> <report.txt>`.

Runs uvicorn in this process; SIGUSR1 starts the profiler, SIGUSR2 stops it and
writes the text report. pyinstrument samples the thread it was started in (the
event loop's), so work the service does in worker threads (its database
transactions) shows only as the await that waits for it: py-spy sees every thread.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any


def main(argv: list[str]) -> None:
    import uvicorn
    from pyinstrument import Profiler

    factory, port, out = argv[0], int(argv[1]), Path(argv[2])
    profiler = Profiler(async_mode="enabled")
    state = {"running": False}

    def start(_sig: int, _frame: FrameType | None) -> None:
        if not state["running"]:
            profiler.start()
            state["running"] = True

    def stop(_sig: int, _frame: FrameType | None) -> None:
        if state["running"]:
            profiler.stop()
            state["running"] = False
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            out.write_text(text)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    config: dict[str, Any] = {"factory": True, "host": "127.0.0.1", "port": port}
    uvicorn.run(factory, timeout_graceful_shutdown=5, **config)


if __name__ == "__main__":
    main(sys.argv[1:])
