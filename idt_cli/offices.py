"""The I/O around the registry: reading the CSV file and publishing the events."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import redis

from idt_contract import entry_fields
from idt_contract.events import OfficeRegistered
from idt_runtime.settings import redis_url_with_credentials

from .registry import STREAM, RegistryParse, parse_offices

#: The shipped default registry (in the repository next to this package).
DEFAULT_OFFICES = Path(__file__).resolve().parent.parent / "deploy" / "registry" / "offices.csv"


class RegistryFileError(Exception):
    """The file cannot be read as UTF-8 text; the message says why."""


class RedisUnavailable(Exception):
    """Redis did not answer; the message names the URL (password hidden) and the reason."""


def read_registry(path: Path, *, time: datetime) -> RegistryParse:
    """Read and validate a registry file (UTF-8, an optional byte-order mark)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RegistryFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RegistryFileError(
            f"{path} is not UTF-8 text (byte {exc.start}, line {line}: {exc.reason})"
        ) from None
    return parse_offices(io.StringIO(text, newline=""), time=time)


def connect(url: str) -> redis.Redis:
    """A client that has answered PING. Under Redis ACLs (deploy/redis/) the user
    and its password file come from `IDT_REDIS_USERNAME` and
    `IDT_REDIS_PASSWORD_FILE`, as for the services: no password on a command line."""
    password_file = os.environ.get("IDT_REDIS_PASSWORD_FILE") or None
    try:
        url = redis_url_with_credentials(
            url,
            os.environ.get("IDT_REDIS_USERNAME") or None,
            Path(password_file) if password_file else None,
        )
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client


def publish_offices(client: redis.Redis, events: Sequence[OfficeRegistered]) -> list[str]:
    """XADD every event to `idt:office-registered` in one MULTI/EXEC pipeline, so a
    registry arrives whole or not at all. Returns the stream entry ids."""
    pipe = client.pipeline(transaction=True)
    for event in events:
        pipe.xadd(STREAM, entry_fields(event))  # type: ignore[arg-type]
    ids = pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe to print)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
