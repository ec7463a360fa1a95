"""The clock publisher's Redis credentials: an ACL user and a password file, from
options or from the variables the services read (`IDT_REDIS_USERNAME`,
`IDT_REDIS_PASSWORD_FILE`), as deploy/compose.yaml runs it. The rest of the
clock: tests/integration/test_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from idt_cli.clock import STREAM, parse_args
from tests.conftest import wait_for

PASSWORD = "s3cret/with:odd@chars"  # quoted into the URL, read back by redis-py


def password_file(tmp_path: Path, text: str = PASSWORD + "\n") -> Path:
    path = tmp_path / "clock.password"
    path.write_text(text, encoding="utf-8")
    return path


def credentials(url: str) -> tuple[str | None, str | None, str | None]:
    """(user, password, host:port) as redis-py will read them from the URL."""
    kwargs = redis.connection.parse_url(url)
    return kwargs.get("username"), kwargs.get("password"), urlsplit(url).netloc.split("@")[-1]


# ------------------------------------------------------------ options and variables


def test_options_put_the_user_and_the_files_password_into_the_url(tmp_path):
    url, interval = parse_args(
        [
            "--redis-url",
            "redis://redis:6379/0",
            "--redis-username",
            "clock",
            "--redis-password-file",
            str(password_file(tmp_path)),
            "--interval",
            "30",
        ],
        environ={},
    )
    assert credentials(url) == ("clock", PASSWORD, "redis:6379")
    assert url.endswith("/0")
    assert interval == 30.0


def test_the_services_variables_are_read_without_options(tmp_path):
    env = {
        "REDIS_URL": "redis://redis:6379/0",
        "IDT_REDIS_USERNAME": "clock",
        "IDT_REDIS_PASSWORD_FILE": str(password_file(tmp_path)),
    }
    url, interval = parse_args([], environ=env)
    assert credentials(url) == ("clock", PASSWORD, "redis:6379")
    assert interval == 60.0
    # IDT_REDIS_URL first, as in the services' settings.
    url, _ = parse_args([], environ={**env, "IDT_REDIS_URL": "redis://other:6380/1"})
    assert credentials(url) == ("clock", PASSWORD, "other:6380")


def test_an_option_beats_its_variable(tmp_path):
    other = tmp_path / "other.password"
    other.write_text("from-the-option\n", encoding="utf-8")
    env = {
        "REDIS_URL": "redis://redis:6379/0",
        "IDT_REDIS_USERNAME": "clock",
        "IDT_REDIS_PASSWORD_FILE": str(password_file(tmp_path)),
    }
    url, _ = parse_args(
        [
            "--redis-url",
            "redis://elsewhere:7000/0",
            "--redis-username",
            "ops",
            "--redis-password-file",
            str(other),
        ],
        environ=env,
    )
    assert credentials(url) == ("ops", "from-the-option", "elsewhere:7000")


def test_without_credentials_the_url_is_left_alone():
    url, _ = parse_args(["--redis-url", "redis://127.0.0.1:6379/0"], environ={})
    assert url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "cannot read the Redis password file"),
        ("empty", "is empty"),
        ("no-url", "give --redis-url, or set IDT_REDIS_URL or REDIS_URL"),
    ],
)
def test_bad_credentials_exit_2_with_a_message(tmp_path, capsys, setup, message):
    env = {"REDIS_URL": "redis://redis:6379/0", "IDT_REDIS_USERNAME": "clock"}
    if setup == "missing":
        env["IDT_REDIS_PASSWORD_FILE"] = str(tmp_path / "absent")
    elif setup == "empty":
        env["IDT_REDIS_PASSWORD_FILE"] = str(password_file(tmp_path, "  \n"))
    else:
        del env["REDIS_URL"]
    with pytest.raises(SystemExit) as exited:
        parse_args([], environ=env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------ against a real Redis


@pytest.fixture
def acl_user(r: redis.Redis) -> Iterator[str]:
    """A Redis user that may XADD to the clock's stream and do nothing else."""
    name = f"clock-test-{uuid.uuid4().hex[:8]}"
    r.acl_setuser(
        name,
        enabled=True,
        passwords=["+" + PASSWORD],
        keys=[STREAM],
        commands=["+xadd"],
        reset=True,
    )
    try:
        yield name
    finally:
        r.acl_deluser(name)


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IDT_") and k not in ("REDIS_URL", "DATABASE_URL")
    }


def run_clock(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "idt_cli.clock", "--interval", "3600"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean_env(), **env},
        )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_the_clock_publishes_as_its_acl_user_from_the_variables(tmp_path, redis_url, r, acl_user):
    log = tmp_path / "clock.log"
    proc = run_clock(
        {
            "REDIS_URL": redis_url,
            "IDT_REDIS_USERNAME": acl_user,
            "IDT_REDIS_PASSWORD_FILE": str(password_file(tmp_path)),
        },
        log,
    )
    try:
        wait_for(lambda: r.xlen(STREAM) >= 1, timeout=10, interval=0.05)
    finally:
        stop(proc, log)
    text = log.read_text()
    assert "clock: stopped after 1 tick(s)" in text
    assert PASSWORD not in text  # nothing prints the URL with the password


@pytest.mark.integration
def test_a_wrong_password_publishes_nothing_and_keeps_retrying(tmp_path, redis_url, r, acl_user):
    log = tmp_path / "clock.log"
    proc = run_clock(
        {
            "REDIS_URL": redis_url,
            "IDT_REDIS_USERNAME": acl_user,
            "IDT_REDIS_PASSWORD_FILE": str(password_file(tmp_path, "not-the-password\n")),
        },
        log,
    )
    try:
        wait_for(lambda: "failed" in log.read_text(), timeout=10, interval=0.05)
        assert proc.poll() is None  # logged and retried, not a crash
    finally:
        stop(proc, log)
    assert r.xlen(STREAM) == 0
    text = log.read_text()
    assert "clock: stopped after 0 tick(s)" in text
    assert "not-the-password" not in text
