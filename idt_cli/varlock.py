"""One `idt up` per var dir.

Two runs on one var dir would share the SQLite files and, worse, two
redis-servers would append to the same AOF. The lock file `<var>/idt-up.lock` is
held (flock) for the whole run, and records the pid of the embedded redis-server
while it runs: if `idt up` was killed without cleaning up (SIGKILL), its Redis
may still be running, and the next run refuses to start a second one on the same
files.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class VarDirBusy(Exception):
    """The var dir is in use; the message says by what and what to do."""


class VarDirLock:
    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.path = var_dir / "idt-up.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = self.path.open("a+", encoding="ascii")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise VarDirBusy(
                f"another `idt up` is running with the var dir {self.var_dir}; "
                "stop it first, or pass another --var-dir"
            ) from None
        f.seek(0)
        recorded = f.read().strip()
        if recorded.isdigit() and _is_redis_server(int(recorded)):
            f.close()
            raise VarDirBusy(
                f"redis-server pid {recorded}, started by an earlier `idt up` that did not "
                f"stop cleanly, still runs on {self.var_dir / 'redis'}; stop it "
                f"(kill {recorded}) before starting another"
            )
        self._file = f
        self.record_redis(None)

    def record_redis(self, pid: int | None) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        if pid is not None:
            self._file.write(str(pid))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self.record_redis(None)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _is_redis_server(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # no /proc to tell what it is: do not guess
