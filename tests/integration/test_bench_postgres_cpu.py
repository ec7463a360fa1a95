"""The bench counts the PostgreSQL server's processes as one (`ServerTree`): found
from a connection's backend on a server of this machine, its CPU includes the
backends that exited. A server of its own (pgserver), so that it runs here whatever
the other tests' server is (a container's processes would not be found)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter

import psutil
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from bench.procs import (
    ActivitySampler,
    BenchStack,
    RssSampler,
    ServerNotSeen,
    ServerTree,
    local_postgres,
)
from bench.report import POSTGRES_LABEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_server_url() -> Iterator[str]:
    """A database of a PostgreSQL server started here (pgserver), not `postgres`."""
    import pgserver

    with tempfile.TemporaryDirectory(prefix="idt-pg-cpu-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        try:
            admin_url = server.get_uri()
            admin = sqlalchemy.create_engine(
                make_url(admin_url).set(drivername="postgresql+psycopg"),
                isolation_level="AUTOCOMMIT",
            )
            with admin.connect() as c:
                c.exec_driver_sql('CREATE DATABASE "idt_cpu_probe"')
            admin.dispose()
            url = make_url(admin_url).set(drivername="postgresql+psycopg", database="idt_cpu_probe")
            yield url.render_as_string(hide_password=False)
        finally:
            server.cleanup()


def busy_query(url: str) -> tuple[float, int]:
    """Run a query that keeps its backend busy, on a connection closed afterwards
    (the backend exits); the CPU seconds the backend had used when it was done, and
    its pid."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as c:
            pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            c.exec_driver_sql("SELECT count(*) FROM generate_series(1, 3000000) AS s(i)").one()
            t = psutil.Process(pid).cpu_times()
            return float(t.user + t.system), int(pid)
    finally:
        engine.dispose()


#: What the tree may miss of a backend's time: the clock's ticks (10 ms) and the
#: time between the backend's last sample and its exit being small.
SLACK_S = 0.05


def wait_reaped(tree: ServerTree, pid: int) -> None:
    """Until the postmaster has waited for the backend (no longer its child, not
    even a zombie): from then on its time is in the postmaster's children_*."""
    deadline = time.monotonic() + 10
    while any(c.pid == pid for c in tree.root.children()):
        assert time.monotonic() < deadline, f"backend {pid} not reaped within 10 s"
        time.sleep(0.02)


def total_cpu(tree: ServerTree) -> float:
    t = tree.cpu_times()
    return t.user + t.system


def test_the_server_is_found_from_a_backend_and_its_root_is_the_postmaster(
    local_server_url: str,
) -> None:
    tree = local_postgres(local_server_url)
    root = psutil.Process(tree.pid)
    assert root.name() in ("postgres", "postmaster")
    assert tree.memory_info().rss > 0
    tree.io_counters()  # readable here (the tests run as the server's user or root)


def test_its_cpu_counts_a_backend_that_exited(local_server_url: str) -> None:
    tree = local_postgres(local_server_url)
    before = total_cpu(tree)
    used, pid = busy_query(local_server_url)
    assert used > 2 * SLACK_S  # the query kept its backend busy
    wait_reaped(tree, pid)
    assert total_cpu(tree) - before >= used - SLACK_S


def test_the_samplers_take_the_tree_beside_pids(local_server_url: str) -> None:
    tree = local_postgres(local_server_url)
    label = POSTGRES_LABEL
    t0 = perf_counter()
    rss = RssSampler({label: tree}, interval=0.05).start()
    activity = ActivitySampler({label: tree}, interval=0.05).start()
    used, pid = busy_query(local_server_url)
    wait_reaped(tree, pid)
    activity.stop()
    t1 = perf_counter()
    samples = rss.stop()[label]
    assert samples.pid == tree.pid and samples.peak_rss > 0
    assert samples.cpu_seconds >= used - SLACK_S
    cpu, _ = activity.between(t0, t1)[label]
    assert cpu >= used - SLACK_S


def test_the_stack_samples_the_server_beside_its_processes(
    local_server_url: str, tmp_path: Path
) -> None:
    stack = BenchStack(tmp_path)
    assert POSTGRES_LABEL not in stack.sampled()
    stack.database_server = local_postgres(local_server_url)
    assert stack.sampled()[POSTGRES_LABEL] is stack.database_server


def test_a_process_that_is_not_the_backend_is_refused(
    local_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a container: the pid the server reports is some other process here.
    class SomeOtherProcess(psutil.Process):
        def __init__(self, pid: int | None = None) -> None:
            super().__init__(os.getpid())

    monkeypatch.setattr(psutil, "Process", SomeOtherProcess)
    with pytest.raises(ServerNotSeen, match="is not its backend"):
        local_postgres(local_server_url)


def test_a_server_that_cannot_be_reached_is_not_found() -> None:
    with pytest.raises(ServerNotSeen, match="cannot ask it"):
        local_postgres("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
