"""Two replicas of every service in the same consumer groups give exactly the
results of one: the scores an independent oracle computes from the log (the
single-replica replay test shows one replica gives those), no alert and no
window-outcome revision published twice, nothing dead-lettered, nothing left
pending; and both replicas of each service did part of the work."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import wait_for
from tests.integration.test_replay import (
    START,
    differences,
    expected_counts,
    invoke,
    months_of_span,
    simulate,
)
from tests.stack import SERVICES, Quiet, Stack, alert_ids, dead_letters, outcome_ids

pytestmark = pytest.mark.integration

CLAIMS = 100


@pytest.mark.timeout(400)
def test_two_replicas_of_every_service_give_the_results_of_one(
    tmp_path, redis_url, r, database_url
):
    log = simulate(tmp_path / "year.jsonl", claims=CLAIMS, seed=7)
    expected, as_of = expected_counts(log)
    periods = [*months_of_span(START, as_of), "FY2007-08"]

    # Small batches, so that each replica gets a share of every stream.
    with Stack(tmp_path, redis_url, database_url, batch_size=40) as stack:
        stack.start(replicas=2)
        replayed = invoke("replay", str(log), "--redis-url", redis_url, "--timeout", "300")
        assert replayed.exit_code == 0, replayed.output
        wait_for(Quiet(r), timeout=120, interval=0.5)

        assert dead_letters(r) == []
        alerts = Counter(alert_ids(r))
        assert alerts, "the log opens windows: there must be alerts"
        assert [a for a, n in alerts.items() if n > 1] == []
        outcomes = Counter(outcome_ids(r))
        assert [o for o, n in outcomes.items() if n > 1] == []

        diffs = differences(stack.url("scoring", 1), expected, periods)
        assert diffs == [], f"{len(diffs)} differences, e.g.:\n" + "\n".join(diffs[:20])
        # The scores are read from the shared state, whichever replica answers.
        assert differences(stack.url("scoring", 0), expected, periods) == []

        for service in SERVICES:
            shares = [stack.consumed(service, slot) for slot in (0, 1)]
            assert all(n > 0 for n in shares), f"{service}: one replica did nothing {shares}"
