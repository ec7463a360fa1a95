"""A TCP proxy a test can cut: `cut()` drops every connection and refuses new
ones (the database is gone, as after a network partition or a failover);
`restore()` accepts again. `silence()` leaves the connections open now open but
forwards nothing more on them (half-open, as when a peer vanishes without a
FIN); connections made after it work. Upstream is TCP or a Unix socket (the embedded
PostgreSQL listens on one)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import URL


class TcpProxy:
    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        # Connections of a generation below `_muted_below` forward nothing.
        self._generation = 0
        self._muted_below = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @classmethod
    def to_postgres(cls, url: URL) -> TcpProxy:
        host = url.query.get("host")
        if isinstance(host, tuple):
            host = host[0]
        if host and host.startswith("/"):
            return cls(str(Path(host) / f".s.PGSQL.{url.port or 5432}"))
        return cls((url.host or "127.0.0.1", url.port or 5432))

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def restore(self) -> None:
        self._up.set()

    def silence(self) -> None:
        with self._lock:
            self._generation += 1
            self._muted_below = self._generation

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # refused, as by a host that is down
                continue
            try:
                if isinstance(self.upstream, str):
                    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    server.connect(self.upstream)
                else:
                    server = socket.create_connection(self.upstream, timeout=5)
                    server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
                generation = self._generation
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int = 0) -> None:
        try:
            while data := src.recv(65536):
                if generation >= self._muted_below:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
