"""What the stand-alone processes (`idt_cli.clock`, `idt_cli.trim`) share: their
Redis options (`--redis-url`, `--redis-username` and `--redis-password-file`, each
defaulting to the environment variable the services read, put together into one
URL) and stopping on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from idt_runtime.settings import redis_url_with_credentials

#: Environment variables read when the matching option is not given, first found wins.
URL_ENV = ("IDT_REDIS_URL", "REDIS_URL")
USERNAME_ENV = "IDT_REDIS_USERNAME"
PASSWORD_FILE_ENV = "IDT_REDIS_PASSWORD_FILE"  # noqa: S105 - a variable name


def add_redis_options(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.add_argument(
        "--redis-url",
        default=next((env[name] for name in URL_ENV if env.get(name)), None),
        help=f"default: ${URL_ENV[0]} or ${URL_ENV[1]}",
    )
    p.add_argument(
        "--redis-username",
        default=env.get(USERNAME_ENV) or None,
        help=f"Redis ACL user (default: ${USERNAME_ENV})",
    )
    p.add_argument(
        "--redis-password-file",
        type=Path,
        default=Path(env[PASSWORD_FILE_ENV]) if env.get(PASSWORD_FILE_ENV) else None,
        help=f"a file holding the user's password (default: ${PASSWORD_FILE_ENV})",
    )


def redis_url(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The URL with the ACL user and password put into it; a missing URL or an
    unreadable password file exits with status 2 and a message (argparse's way)."""
    if not args.redis_url:
        p.error(f"give --redis-url, or set {' or '.join(URL_ENV)}")
    try:
        return redis_url_with_credentials(
            args.redis_url, args.redis_username, args.redis_password_file
        )
    except ValueError as exc:
        p.error(str(exc))


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the process's loop stops when it is)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
