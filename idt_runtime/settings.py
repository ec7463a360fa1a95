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

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IDT_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("IDT_REDIS_URL", "REDIS_URL"),
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("IDT_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default: a SQLite file per service under var_dir.",
    )
    var_dir: Path = Path("var")
    #: The consumer name is `<service>-<host>-<slot>`. `idt up` and deployments set
    #: a stable slot per replica (0, 1, ...), so a restarted replica keeps its name;
    #: without one the process id is used, so two processes never share a name.
    #: (Nothing here ever runs XGROUP DELCONSUMER, which would discard pending entries.)
    consumer_slot: str | None = None
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=200, ge=1, le=60_000)
    #: Entries pending longer than this (a consumer died between read and ack)
    #: are claimed by a live consumer of the same group.
    reclaim_idle_ms: int = Field(default=30_000, ge=10)
    reclaim_interval_s: float = Field(default=5.0, gt=0)
    #: A failing entry is retried this many deliveries, then dead-lettered.
    max_deliveries: int = Field(default=5, ge=1)
    log_level: str = "INFO"

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / f'{service}.db').as_posix()}"

    def consumer_name(self, service: str) -> str:
        host = os.environ.get("HOSTNAME") or socket.gethostname()
        slot = self.consumer_slot if self.consumer_slot is not None else f"pid{os.getpid()}"
        return f"{service}-{host}-{slot}"
