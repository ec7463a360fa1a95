"""deploy/prometheus/: the scrape config, the recording and alert rules and their
unit tests, checked by Prometheus' own `promtool`; and the shape of the rule tests
(every alert fires in one case and stays quiet in a near miss).

Without promtool the promtool checks are skipped, except under CI (CI=true), where
they fail: `.ci/run` installs Debian's `prometheus` package, so CI can never skip
them silently."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.observability import (
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_FILES,
    RULE_TESTS,
    alert_names,
    dashboard_queries,
    grafana_to_promql,
    load_yaml,
    rules,
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(
            "promtool is not installed but CI is set: the Prometheus rules must be tested "
            "in CI (.ci/run installs Debian's prometheus package, which provides promtool)"
        )
    pytest.skip(
        "promtool not found, so deploy/prometheus/ is not checked here; install it with "
        "`apt-get install prometheus` (Debian/Ubuntu) or from a Prometheus release"
    )


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def test_rule_and_test_files_exist():
    assert [p.name for p in RULE_FILES] == ["idt-alerts.yml", "idt-recording.yml"]
    assert RULE_TESTS, "no promtool rule tests under deploy/prometheus/tests"


def test_promtool_accepts_the_config():
    result = run("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads every rule file (rule_files are relative to it).
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, result.stdout


def test_promtool_accepts_the_rules_as_the_tests_read_them():
    result = run("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    # The tests' YAML reader sees exactly the rules Prometheus sees.
    assert found == len(rules()), result.stdout


def test_promtool_rule_unit_tests_pass():
    result = run("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each dashboard query (Grafana variables filled in) as a recording rule, for
    promtool to parse. JSON is YAML, so no YAML writer is needed."""
    queries = dashboard_queries()
    doc = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(q.expr)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(doc, indent=1))
    result = run("check", "rules", path)
    if result.returncode != 0:
        where = {f"dashboard:query_{i}": q.where for i, q in enumerate(queries)}
        pytest.fail(f"{result.stdout}{result.stderr}\nqueries: {json.dumps(where, indent=1)}")
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


# ------------------------------------------------------------ without promtool


def alert_rule_tests() -> list[dict[str, Any]]:
    out = []
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            out.extend(test.get("alert_rule_test") or [])
    return out


def test_rule_tests_load_every_rule_file():
    for path in RULE_TESTS:
        doc = load_yaml(path)
        loaded = {(path.parent / f).resolve() for f in doc["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_FILES}, path.name


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_every_alert_is_tested_firing_and_quiet(alert):
    cases = [c for c in alert_rule_tests() if c["alertname"] == alert]
    firing = [c for c in cases if c.get("exp_alerts")]
    quiet = [c for c in cases if not c.get("exp_alerts")]
    assert firing, f"{alert}: no promtool test where it fires"
    assert quiet, f"{alert}: no promtool test of a near miss where it stays quiet"
    for case in firing:
        for expected in case["exp_alerts"]:
            assert expected["exp_labels"].get("severity"), case
            # The annotations are asserted, so their templates are tested too.
            assert set(expected["exp_annotations"]) == {"summary", "description"}, case


def test_alerts_have_a_severity_and_say_what_to_do():
    for path, rule in rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 60, rule["alert"]
        assert path.name == "idt-alerts.yml"


def test_recording_rules_follow_the_naming_convention():
    for _, rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"idt:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_ci_installs_promtool_before_the_tests():
    script = (ROOT / ".ci" / "run").read_text()
    install = script.find("apt_install prometheus")
    assert install != -1, ".ci/run does not install Debian's prometheus package"
    tests = script.rfind("make --no-print-directory")
    assert install < tests and script[tests:].rstrip().endswith("test"), ".ci/run order"
