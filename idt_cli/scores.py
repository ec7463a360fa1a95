"""`idt scores`: the scoring service's `GET /v1/scores` as a table."""

from __future__ import annotations

from typing import Any

import httpx
from rich.markup import escape
from rich.table import Table

ELEMENTS = ("IB", "LP", "JSA", "LMI")


class ScoresError(Exception):
    """The scores could not be fetched; the message says why. `bad_input` when the
    service refused the arguments (HTTP 4xx)."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def fetch_scores(
    url: str, period: str | None, level: str, basis: str, timeout: float = 10.0
) -> Any:
    """The JSON of `GET <url>/v1/scores`; ScoresError with a readable reason. No
    period: the service's current business month."""
    endpoint = url.rstrip("/") + "/v1/scores"
    params = {"level": level, "basis": basis}
    if period is not None:
        params["period"] = period
    try:
        resp = httpx.get(endpoint, params=params, timeout=timeout)
    except httpx.InvalidURL as exc:
        raise ScoresError(f"invalid scoring service URL {url!r}: {exc}", bad_input=True) from None
    except httpx.HTTPError as exc:
        raise ScoresError(
            f"cannot reach the scoring service at {url} ({type(exc).__name__}: {exc}); "
            "is it running (`idt up`)?"
        ) from None
    if resp.status_code >= 400:
        raise ScoresError(
            f"the scoring service refused the request (HTTP {resp.status_code}): "
            + describe_error(resp),
            bad_input=400 <= resp.status_code < 500,
        )
    try:
        return resp.json()
    except ValueError:
        raise ScoresError(f"the scoring service at {url} did not answer JSON") from None


def describe_error(resp: httpx.Response) -> str:
    """`{"detail": [{"loc", "msg"}, ...]}` (or a plain detail) as one readable line."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc", []) if p not in ("query", "body", "path")]
            where = ".".join(loc)
            parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
        return "; ".join(parts)
    if detail is not None:
        return str(detail)
    return str(body)[:300]


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _rate_cell(rate: float | None, target: float | None) -> str:
    text = _percent(rate)
    if rate is None or target is None:
        return text
    return f"[green]{text}[/]" if rate >= target else f"[red]{text}[/]"


def _interval(ci: list[float] | None) -> str:
    return f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%" if ci else "-"


def _not_met(counts: dict[str, Any]) -> str:
    parts = [f"{counts.get(k, 0)} {k}" for k in ("missed", "waived", "deferred") if counts.get(k)]
    return ", ".join(parts) or "-"


def scores_table(payload: dict[str, Any]) -> Table:
    """One row per scope and element: met out of due, the rate (green when it meets
    its target), its 95% Wilson interval, the target and the windows not met; then
    the scope's overall score (the mean of the element rates present)."""
    basis = payload.get("basis", "")
    title = (
        f"IDT scores {payload.get('period')}, {payload.get('level')} level, {basis} basis "
        f"(business date {payload.get('as_of') or 'none yet'})"
    )
    table = Table(title=escape(title), title_justify="left", header_style="bold")
    table.add_column("scope", overflow="fold", max_width=24)
    table.add_column("element", no_wrap=True)
    table.add_column("met/due", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("not met / included", overflow="fold")
    for row in payload.get("rows", []):
        scope = escape(str(row.get("scope")))
        elements: dict[str, Any] = row.get("elements", {})
        known = [e for e in ELEMENTS if e in elements]
        for element in known + sorted(e for e in elements if e not in ELEMENTS):
            c = elements[element]
            table.add_row(
                scope,
                escape(element),
                f"{c.get('met', 0)}/{c.get('due', 0)}",
                _rate_cell(c.get("rate"), c.get("target")),
                _interval(c.get("ci95")),
                _percent(c.get("target"), 0),
                _not_met(c),
            )
            scope = ""
        overall = row.get("overall", {})
        table.add_row(
            scope,
            "[bold]overall[/]",
            "",
            _rate_cell(overall.get("rate"), overall.get("target")),
            "",
            _percent(overall.get("target"), 0),
            escape("+".join(overall.get("elements", [])) or "no element has a rate"),
        )
        table.add_section()
    return table
