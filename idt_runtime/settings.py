"""Configuration from the environment (pydantic-settings).

Names: `REDIS_URL` (or `IDT_REDIS_URL`), `DATABASE_URL` (or `IDT_DATABASE_URL`; all
services may share one PostgreSQL database: every table is prefixed by its service),
and `IDT_*` for the rest.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The read linger of a service on the path of an alert (the scheduler's).
DEFAULT_READ_LINGER_MS = 20
#: The read linger of a service whose consumed view only people and Prometheus
#: read (Contact Centre, BDC, scoring): a quarter of a second more behind the
#: streams, for a tenth of the reads (and of their per-read CPU) at a steady rate.
VIEW_READ_LINGER_MS = 250


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IDT_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    # Both URLs may hold a password: kept out of repr (logs, tracebacks).
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("IDT_REDIS_URL", "REDIS_URL"),
        repr=False,
    )
    #: Redis ACL credentials (deploy/redis/): the user, and a file holding its
    #: password (a Compose or Kubernetes secret). Both are put into `redis_url`.
    redis_username: str | None = None
    redis_password_file: Path | None = None
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("IDT_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default: a SQLite file per service under var_dir.",
        repr=False,
    )
    var_dir: Path = Path("var")
    #: The consumer name is `<service>-<host>-<slot>`. `idt up` and deployments set
    #: a stable slot per replica (0, 1, ...), so a restarted replica keeps its name;
    #: without one the process id is used, so two processes never share a name.
    #: (Nothing here ever runs XGROUP DELCONSUMER, which would discard pending entries.)
    consumer_slot: str | None = None
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=200, ge=1, le=60_000)
    #: After a read that was not full (no stream gave `batch_size` entries), wait
    #: this long before the next: at a steady rate each read then brings what
    #: arrived meanwhile, not an entry or two, and a transaction, an ack round
    #: and a relay run serve many events. Adds at most this much to each hop's
    #: latency; 0 reads again at once. Unset, each service has its own: 20 ms
    #: for the scheduler, whose alerts are waited for, `VIEW_READ_LINGER_MS`
    #: for the others, whose views are read by people and Prometheus
    #: (docs/decisions.md, Consuming).
    read_linger_ms: int | None = Field(default=None, ge=0, le=1_000)
    #: A Redis command (beyond a read's own BLOCK) that has not answered after this
    #: many seconds fails, and the next one takes a new connection: a connection a
    #: network fault left half-open cannot hang the reader or the acks for ever.
    redis_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Entries pending longer than this (a consumer died between read and ack)
    #: are claimed by a live consumer of the same group.
    reclaim_idle_ms: int = Field(default=30_000, ge=10)
    reclaim_interval_s: float = Field(default=5.0, gt=0)
    #: A failing entry is retried this many deliveries, then dead-lettered.
    max_deliveries: int = Field(default=5, ge=1)
    #: After a Redis restart, the outbox publishes again what it published in
    #: this many seconds before (what `appendfsync everysec` can lose, with margin).
    outbox_republish_s: float = Field(default=10.0, ge=0)
    #: Published outbox rows are deleted after this many seconds (at least the
    #: republish window): the streams, not the outbox, are the record of events.
    outbox_retention_s: float = Field(default=3600.0, ge=0)
    #: SQLite only: the page cache of the writers' connection, in MiB (SQLite's own
    #: default is 2; reads use connections of their own with at most 2).
    sqlite_cache_mib: int = Field(default=32, ge=1, le=4096)
    #: SQLite only: seconds between the service's own WAL checkpoints, which keep
    #: them out of the commits (0: commits checkpoint, SQLite's default way).
    sqlite_checkpoint_s: float = Field(default=0.5, ge=0, le=60)
    #: Seconds between giving memory freed in malloc's arenas back to the system
    #: (glibc only; 0: never, else at least 1). Without it a service's resident
    #: size grew to the sum of its threads' peaks and stayed there
    #: (idt_runtime/memory.py).
    memory_trim_s: float = Field(default=30.0, ge=0, le=3600)
    #: The level of the services' own log lines (idt_runtime/logs.py).
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"log_level is one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not {value!r}"
            )
        return level

    @field_validator("memory_trim_s")
    @classmethod
    def _trim_not_continuous(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("memory_trim_s is 0 (never) or at least 1 second: a trim "
                             "holds malloc's locks, it must not run all the time")  # fmt: skip
        return value

    @model_validator(mode="after")
    def _credentials_into_url(self) -> RuntimeSettings:
        self.redis_url = redis_url_with_credentials(
            self.redis_url, self.redis_username, self.redis_password_file
        )
        return self

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / f'{service}.db').as_posix()}"

    def consumer_name(self, service: str) -> str:
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        slot = self.consumer_slot if self.consumer_slot is not None else f"pid{os.getpid()}"
        return f"{service}-{host}-{slot}"


def redis_url_with_credentials(url: str, username: str | None, password_file: Path | None) -> str:
    """`url` with the ACL user and the password read from `password_file` (one
    line; surrounding whitespace dropped). Either may be None: nothing changes."""
    if not username and password_file is None:
        return url
    parts = urlsplit(url)
    user = username if username else (parts.username or "")
    password = parts.password or ""
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the Redis password file {password_file}: {exc}") from exc
        if not password:
            raise ValueError(f"the Redis password file {password_file} is empty")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, parts.query, parts.fragment))
