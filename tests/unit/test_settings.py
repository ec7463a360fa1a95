"""Runtime settings: Redis ACL credentials go into the URL, from a secret file."""

from __future__ import annotations

import re

import pytest
import redis
from pydantic import ValidationError

from idt_runtime.settings import RuntimeSettings, redis_url_with_credentials


def test_the_user_and_the_password_file_go_into_the_redis_url(tmp_path):
    secret = tmp_path / "scheduler"
    secret.write_text("p@ss:w/rd\n")
    s = RuntimeSettings(
        redis_url="redis://redis:6379/0", redis_username="scheduler", redis_password_file=secret
    )
    kwargs = redis.Redis.from_url(s.redis_url).connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("scheduler", "p@ss:w/rd")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis", 6379, 0)


def test_the_environment_names_them(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6380/2")
    monkeypatch.setenv("IDT_REDIS_USERNAME", "bdc")
    monkeypatch.setenv("IDT_REDIS_PASSWORD_FILE", str(secret))
    assert RuntimeSettings().redis_url == "redis://bdc:s3cret@127.0.0.1:6380/2"


def test_without_credentials_the_url_is_unchanged():
    assert redis_url_with_credentials("rediss://h:1/0?x=1", None, None) == "rediss://h:1/0?x=1"


def test_a_missing_or_empty_password_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValidationError, match="cannot read the Redis password file"):
        RuntimeSettings(redis_username="u", redis_password_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        RuntimeSettings(redis_username="u", redis_password_file=tmp_path / "empty")


def test_passwords_stay_out_of_the_settings_repr(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("hunter2-redis")
    s = RuntimeSettings(
        redis_username="scoring",
        redis_password_file=secret,
        database_url="postgresql+psycopg://idt:hunter2-pg@db/idt",
    )
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_the_sqlite_page_cache_is_a_setting_every_connection_gets(tmp_path, monkeypatch):
    from idt_runtime.db import make_engine

    monkeypatch.setenv("IDT_SQLITE_CACHE_MIB", "3")
    settings = RuntimeSettings()
    assert settings.sqlite_cache_mib == 3
    engine = make_engine(
        f"sqlite:///{tmp_path}/c.db", sqlite_cache_kib=settings.sqlite_cache_mib * 1024
    )
    try:
        # Two connections at once (raw: no transaction, which would wait on the other).
        one, two = engine.raw_connection(), engine.raw_connection()
        for conn in (one, two):
            assert conn.cursor().execute("PRAGMA cache_size").fetchone()[0] == -3 * 1024
        one.close()
        two.close()
    finally:
        engine.dispose()
    monkeypatch.setenv("IDT_SQLITE_CACHE_MIB", "0")
    with pytest.raises(ValueError, match="sqlite_cache_mib"):
        RuntimeSettings()


def test_memory_trimming_is_never_or_at_most_once_a_second(monkeypatch):
    assert RuntimeSettings().memory_trim_s == 30.0
    monkeypatch.setenv("IDT_MEMORY_TRIM_S", "2.5")
    assert RuntimeSettings().memory_trim_s == 2.5
    monkeypatch.setenv("IDT_MEMORY_TRIM_S", "0")
    assert RuntimeSettings().memory_trim_s == 0.0
    for bad in ("0.5", "-1", "7200"):
        monkeypatch.setenv("IDT_MEMORY_TRIM_S", bad)
        with pytest.raises(ValueError, match="memory_trim_s"):
            RuntimeSettings()


def test_the_log_level_is_a_known_level(monkeypatch):
    monkeypatch.setenv("IDT_LOG_LEVEL", "warning")
    assert RuntimeSettings().log_level == "WARNING"
    monkeypatch.setenv("IDT_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError, match="log_level is one of DEBUG, INFO"):
        RuntimeSettings()


def test_a_service_process_stamps_its_log_lines_and_keeps_info(tmp_path):
    """In a process with no logging set up (as under uvicorn), the idt loggers write
    time, level, service and logger, at IDT_LOG_LEVEL; a second call adds no second
    handler (and keeps the first service's name)."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from idt_runtime.logs import configure_logging\n"
        "configure_logging('INFO', 'scheduler'); configure_logging('INFO', 'bdc')\n"
        "logging.getLogger('idt.outbox').info('pruned %d rows', 3)\n"
        "logging.getLogger('idt.db').debug('not shown')\n"
        "configure_logging('WARNING', 'scheduler')\n"
        "logging.getLogger('idt.outbox').info('not shown either')\n"
        "logging.getLogger('idt.db').warning('slow write')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp + r" INFO scheduler idt\.outbox: pruned 3 rows", lines[0]), lines
    assert re.fullmatch(stamp + r" WARNING scheduler idt\.db: slow write", lines[1]), lines


def test_each_service_lingers_as_fresh_as_its_readers_need(monkeypatch):
    """The scheduler, whose alerts Jobcentres wait for, reads again 20 ms after a
    read that was not full; the services whose views people and Prometheus read
    wait a quarter of a second, for a tenth of the reads at a steady rate.
    `IDT_READ_LINGER_MS` sets one pause for every service."""
    from idt_runtime.service import ServiceRuntime
    from services.bdc.app import SPEC as BDC
    from services.contact_centre.app import SPEC as CC
    from services.scheduler.app import SPEC as SCHEDULER
    from services.scoring.app import SPEC as SCORING

    monkeypatch.delenv("IDT_READ_LINGER_MS", raising=False)
    lingers = {
        spec.name: ServiceRuntime(spec, RuntimeSettings()).read_linger_ms
        for spec in (CC, BDC, SCHEDULER, SCORING)
    }
    assert lingers == {"contact_centre": 250, "bdc": 250, "scheduler": 20, "scoring": 250}
    monkeypatch.setenv("IDT_READ_LINGER_MS", "0")
    overridden = {ServiceRuntime(s, RuntimeSettings()).read_linger_ms for s in (CC, SCHEDULER)}
    assert overridden == {0}
    with pytest.raises(ValidationError):
        RuntimeSettings(read_linger_ms=1_001)
