"""What the observability tests read from deploy/: Grafana dashboards and
provisioning, Prometheus rules and their unit tests, and the metric names their
PromQL uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards"
DASHBOARDS = GRAFANA / "dashboards"

# ------------------------------------------------------------------- YAML and JSON


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    where: str  # "<file>: <panel or variable>"
    expr: str


def dashboard_queries() -> list[Query]:
    """The PromQL of every panel target and every query variable (the metric
    selector inside Grafana's `label_values(...)`)."""
    out: list[Query] = []
    for path, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                out.append(Query(f"{path.name}: panel {panel.get('title')!r}", target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            expr = grafana_variable_expr(query)
            if expr is not None:
                out.append(Query(f"{path.name}: variable ${var['name']}", expr))
    return out


def grafana_variable_expr(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, or None when it has
    none (`label_names()`, `label_values(label)`)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"\s*(label_values\(\s*[A-Za-z_]\w*\s*\)|label_names\(\s*\))\s*", query):
        return None
    m = re.fullmatch(r"\s*metrics\((.*)\)\s*", query, re.S)
    if m:
        raise AssertionError(f"variable query {query!r}: metrics() takes a regex, not a name")
    return query


# ------------------------------------------------------------------- rules


def rules() -> list[tuple[Path, dict[str, Any]]]:
    """(file, rule) for every recording and alerting rule."""
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            out.extend((path, rule) for rule in group["rules"])
    return out


def rule_queries() -> list[Query]:
    return [
        Query(f"{path.name}: {rule.get('record') or rule.get('alert')}", rule["expr"])
        for path, rule in rules()
    ]


def recording_rule_names() -> set[str]:
    return {rule["record"] for _, rule in rules() if "record" in rule}


def alert_names() -> set[str]:
    return {rule["alert"] for _, rule in rules() if "alert" in rule}


# ------------------------------------------------------------------- PromQL names

#: PromQL functions (Prometheus 2.x and 3.x) and the aggregation operators.
_FUNCTION_WORDS = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
    changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week
    day_of_year days_in_month deg delta deriv double_exponential_smoothing exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
    histogram_stdvar histogram_sum holt_winters hour idelta increase info irate
    label_join label_replace last_over_time ln log10 log2 mad_over_time max_over_time
    min_over_time minute month pi predict_linear present_over_time quantile_over_time
    rad rate resets round scalar sgn sin sinh sort sort_by_label sort_by_label_desc
    sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time
    timestamp vector year start end
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    limitk limit_ratio
"""
FUNCTIONS = frozenset(_FUNCTION_WORDS.split())
#: Keywords and literals (PromQL keywords are case-insensitive).
_KEYWORD_WORDS = "by without on ignoring group_left group_right and or unless bool offset atan2"
KEYWORDS = frozenset(_KEYWORD_WORDS.split()) | {"inf", "nan"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z_$]+", re.IGNORECASE)
_AT = re.compile(r"@\s*(?:start\(\)|end\(\)|[0-9.]+)")
_IDENT = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads.

    Strings, label matchers, ranges, grouping label lists, offsets and Grafana
    variables are removed first; what remains of the identifiers are functions,
    keywords and metric names. An unknown identifier counts as a metric name, so a
    misspelt function shows up as a missing metric rather than passing silently."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(r"\1", text)
    text = _OFFSET.sub("", text)
    text = _AT.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if word in FUNCTIONS or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def is_recording_rule_name(name: str) -> bool:
    return ":" in name


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for `promtool` to parse."""
    text = re.sub(r"\$(__rate_interval|__interval|__range)\b", "5m", expr)
    text = re.sub(r"\$\{(\w+)(?::\w+)?\}", "x", text)
    return re.sub(r"\$(?!\d)(\w+)", "x", text)
