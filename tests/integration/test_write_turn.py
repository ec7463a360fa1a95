"""A process's writers take the write lock in turn (`write_turn`); a turn that
held or waited for it too long is logged with the writer's name, so that a stall
in a service's log says which writer held the others back."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from idt_runtime.db import make_engine, write_lock, write_turn


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    yield engine
    engine.dispose()


def test_a_slow_turn_is_logged_with_the_writer_and_so_is_the_one_it_kept_waiting(engine, caplog):
    caplog.set_level(logging.WARNING, logger="idt.db")
    holding = threading.Event()

    def slow() -> None:
        with write_turn(engine, "an outbox prune chunk", slow_s=0.05):
            holding.set()
            time.sleep(0.2)

    t = threading.Thread(target=slow)
    t.start()
    assert holding.wait(5)
    with write_turn(engine, "the commit of 3 events", slow_s=0.05):
        pass
    t.join()

    lines = [r.getMessage() for r in caplog.records if "slow write" in r.getMessage()]
    assert len(lines) == 2, lines
    held = next(line for line in lines if line.startswith("slow write: an outbox prune chunk"))
    waited = next(line for line in lines if line.startswith("slow write: the commit of 3"))
    assert float(held.split("for ")[1].split(" s")[0]) >= 0.15
    assert " behind " not in held  # it did not wait
    assert float(waited.split("waiting ")[1].split(" s")[0]) >= 0.1
    # The waiter names what it waited behind, and for how long of its wait.
    behind = waited.split(" behind ")[1]
    assert behind.startswith("an outbox prune chunk ") and behind.endswith(" s"), waited
    assert float(behind.split()[-2]) >= 0.1


def test_a_quick_turn_logs_nothing(engine, caplog):
    caplog.set_level(logging.WARNING, logger="idt.db")
    before = time.perf_counter()
    with write_turn(engine, "the relay", slow_s=1.0) as began:
        assert before <= began <= time.perf_counter()
    assert not [r for r in caplog.records if "slow write" in r.getMessage()]


def test_the_lock_is_given_back_when_the_writer_fails(engine):
    with pytest.raises(RuntimeError), write_turn(engine, "the sweeper"):
        assert write_lock(engine).locked()
        raise RuntimeError("boom")
    assert not write_lock(engine).locked()


def test_http_intake_writes_in_the_process_write_turn(redis_url, var_dir, r, caplog):
    """On SQLite a registration over HTTP waits while another writer of the process
    (the consumer's commit; here the test) has the turn, then goes through, and
    its wait is logged by what it was and what it waited behind."""
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient

    from idt_runtime.clock import FixedClock
    from services.contact_centre.app import ContactCentreSettings, create_app
    from tests.conftest import wait_for
    from tests.helpers import TEST_KEY, register_offices

    caplog.set_level(logging.WARNING, logger="idt.db")
    register_offices(r)
    settings = ContactCentreSettings(
        redis_url=redis_url, var_dir=var_dir, environment="test", customer_ref_key=TEST_KEY
    )
    app = create_app(settings, FixedClock(datetime(2007, 6, 4, 9, tzinfo=UTC)))

    def claim(nino: str) -> dict[str, str]:
        return {
            "nino": nino,
            "benefit": "IB",
            "claim_start_date": "2007-06-01",
            "contact_centre_id": "CC01",
            "jobcentre_id": "JC0101",
        }

    with TestClient(app) as client:
        # Once the office registry is applied, a registration is accepted.
        wait_for(lambda: client.post("/v1/claims", json=claim("JT 12 34 56 C")).status_code == 201)
        engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
        statuses: list[int] = []
        with write_turn(engine, "the test"):
            t = threading.Thread(
                target=lambda: statuses.append(
                    client.post("/v1/claims", json=claim("JT 65 43 21 A")).status_code
                )
            )
            t.start()
            t.join(1.2)
            assert t.is_alive() and statuses == []
        t.join(10)
        assert statuses == [201]
    mine = "slow write: an HTTP claim registration held"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(mine)]
    assert len(lines) == 1 and " behind the test " in lines[0], lines
