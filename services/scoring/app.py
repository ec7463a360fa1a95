"""The scoring service: live IDT element scores on both bases, guard-rails beside
them, and Prometheus metrics for Grafana."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, field_validator
from sqlmodel import Session

from idt_runtime.clock import Clock
from idt_runtime.service import ServiceRuntime, ServiceSpec, build_app
from idt_runtime.settings import VIEW_READ_LINGER_MS, RuntimeSettings

from . import domain, handlers
from .models import PREFIX, TABLES

NAME = "scoring"

SPEC = ServiceSpec.of(NAME, PREFIX, TABLES, __file__, read_linger_ms=VIEW_READ_LINGER_MS)


class TargetSetting(BaseModel):
    element: Literal["IB", "LP", "JSA", "LMI", "OVERALL"]
    value: float = Field(gt=0, le=1)
    effective_from: date


class ScoringSettings(RuntimeSettings):
    #: Targets with the date they take effect (JSON in IDT_TARGETS). A new target
    #: applies to periods starting on or after its date; past periods keep theirs.
    targets: list[TargetSetting] = Field(
        default_factory=lambda: [
            TargetSetting(element=t.element, value=t.value, effective_from=t.effective_from)  # type: ignore[arg-type]
            for t in domain.DEFAULT_TARGETS
        ]
    )

    @field_validator("targets")
    @classmethod
    def _every_element_has_a_target(cls, v: list[TargetSetting]) -> list[TargetSetting]:
        missing = {"IB", "LP", "JSA", "LMI", "OVERALL"} - {t.element for t in v}
        if missing:
            raise ValueError(f"IDT_TARGETS has no target for {sorted(missing)}")
        return v

    def domain_targets(self) -> tuple[domain.Target, ...]:
        return tuple(domain.Target(t.element, t.value, t.effective_from) for t in self.targets)


class ScoresCollector(Collector):
    """Scores and guard-rails computed at scrape time from the store, for the
    current business month and financial year, at district, region and national
    level: label values come only from the registry, so cardinality is bounded and
    an office that changes district leaves no stale series behind."""

    def __init__(self, runtime: ServiceRuntime, targets: tuple[domain.Target, ...]) -> None:
        self.runtime = runtime
        self.targets = targets

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.runtime.engine is None:
            return
        with self.runtime.read_session() as s:
            yield from self._collect(s)

    def _collect(self, s: Session) -> Iterator[Metric]:
        as_of = handlers.business_date(s)
        windows = GaugeMetricFamily(
            "idt_score_windows",
            "Window outcomes counted in the current period, by scope, element, basis, outcome.",
            labels=["level", "scope", "element", "basis", "outcome", "period"],
        )
        rate = GaugeMetricFamily(
            "idt_score_rate",
            "Element rate (MET / due) in the current period.",
            labels=["level", "scope", "element", "basis", "period"],
        )
        overall = GaugeMetricFamily(
            "idt_score_overall_rate",
            "Mean of the element rates present, in the current period.",
            labels=["level", "scope", "basis", "period"],
        )
        target = GaugeMetricFamily(
            "idt_score_target", "Target in force this month.", labels=["element"]
        )
        business = GaugeMetricFamily(
            "idt_business_date_seconds", "The business date (clock-ticks), as Unix time."
        )
        waiver = GaugeMetricFamily(
            "idt_guardrail_waiver_rate", "Waived share of measured windows, this month.",
            labels=["element"],
        )  # fmt: skip
        deferral = GaugeMetricFamily(
            "idt_guardrail_deferral_rate", "Deferred share of measured windows, this month.",
            labels=["element"],
        )  # fmt: skip
        fta = GaugeMetricFamily(
            "idt_guardrail_fta_rate", "Failures to attend / (failures + interviews), this month."
        )
        minutes = GaugeMetricFamily(
            "idt_guardrail_interview_minutes",
            "Interview duration this month: quantiles (p10, p50, p90) and mean.",
            labels=["stat"],
        )
        marker = GaugeMetricFamily(
            "idt_guardrail_marker_error_rate",
            "Claims registered this month whose Jobcentre marker names no Jobcentre.",
            labels=["contact_centre"],
        )
        aact = GaugeMetricFamily(
            "idt_guardrail_aact_working_days",
            "Average actual clearance time this month, working days.",
            labels=["bdc"],
        )
        aact_claims = GaugeMetricFamily(
            "idt_guardrail_aact_claims",
            "Claims cleared this month (the AACT's denominator).",
            labels=["bdc"],
        )
        marker_claims = GaugeMetricFamily(
            "idt_guardrail_marker_claims",
            "Claims registered this month (the marker error rate's denominator).",
            labels=["contact_centre"],
        )
        stage = GaugeMetricFamily(
            "idt_guardrail_missed_by_stage",
            "Missed windows (measured) this month by the stage that consumed the time.",
            labels=["element", "stage"],
        )
        if as_of is not None:
            business.add_metric([], datetime.combine(as_of, time(0), UTC).timestamp())
            month = domain.parse_period(domain.month_of(as_of))
            fy = domain.parse_period(domain.financial_year_of(as_of))
            for element in (*domain.ELEMENTS, "OVERALL"):
                value = domain.target_for(element, month, self.targets)
                if value is not None:
                    target.add_metric([element], value)
            registry = handlers.offices(s)
            for period_label, period in (("month", month), ("fy", fy)):
                for basis in ("policy", "measured"):
                    by_jc = handlers.jobcentre_counts(s, basis, period, registry)
                    for level in ("district", "region", "national"):
                        rolled = domain.roll_up(by_jc, level, registry)  # type: ignore[arg-type]
                        for scope, elements in rolled.items():
                            rates = []
                            for element, c in elements.items():
                                for outcome in domain.COUNTED:
                                    windows.add_metric(
                                        [level, scope, element, basis, outcome, period_label],
                                        getattr(c, outcome.lower()),
                                    )
                                r = domain.rate(c, basis)
                                if r is not None:
                                    rate.add_metric([level, scope, element, basis, period_label], r)
                                    rates.append(r)
                            if rates:
                                overall.add_metric(
                                    [level, scope, basis, period_label], sum(rates) / len(rates)
                                )
            g = handlers.guardrails(s, month)
            for element, v in g["waivers_and_deferrals"].items():
                if v["waiver_rate"] is not None:
                    waiver.add_metric([element], v["waiver_rate"])
                    deferral.add_metric([element], v["deferral_rate"])
            if g["failure_to_attend"]["rate"] is not None:
                fta.add_metric([], g["failure_to_attend"]["rate"])
            dist = g["interview_minutes"]
            for stat in ("p10", "p50", "p90", "mean"):
                if stat in dist:
                    minutes.add_metric([stat], dist[stat])
            for cc, v in g["marker_errors_by_contact_centre"].items():
                marker.add_metric([cc], v["rate"])
                marker_claims.add_metric([cc], v["claims"])
            for bdc, v in g["aact_by_bdc"].items():
                aact.add_metric([bdc], v["aact"])
                aact_claims.add_metric([bdc], v["claims"])
            for element, stages in g["missed_by_stage"].items():
                for st, n in stages.items():
                    stage.add_metric([element, st], n)
        yield from (windows, rate, overall, target, business, waiver, deferral, fta, minutes)
        yield from (marker, marker_claims, aact, aact_claims, stage)


def create_app(settings: ScoringSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or ScoringSettings()
    targets = settings.domain_targets()
    runtime = ServiceRuntime(SPEC, settings, appliers=dict(handlers.APPLIERS), clock=clock)
    runtime.metrics.registry.register(ScoresCollector(runtime, targets))
    router = APIRouter(prefix="/v1")

    session = runtime.read_session  # the queries only read

    def period_of(text: str | None) -> domain.Period:
        if text is None:
            # The current business month: what a newcomer and a dashboard want.
            with session() as s:
                as_of = handlers.business_date(s)
            if as_of is None:
                raise HTTPException(
                    422,
                    [{"loc": ["query", "period"], "type": "missing",
                      "msg": "no business date yet (no clock-tick seen): give a period"}],
                )  # fmt: skip
            text = domain.month_of(as_of)
        try:
            return domain.parse_period(text)
        except ValueError as exc:
            raise HTTPException(
                422, [{"loc": ["query", "period"], "msg": str(exc), "type": "invalid"}]
            ) from None

    @router.get("/scores", tags=["scores"])
    async def scores(
        period: Annotated[
            str | None,
            Query(
                description="YYYY-MM or FYyyyy-yy; default: the current business month",
                examples=["2007-08"],
            ),
        ] = None,
        level: Literal["jobcentre", "district", "region", "national"] = "national",
        basis: Literal["measured", "policy"] = "measured",
    ) -> dict[str, Any]:
        """Element counts, rates with 95% Wilson intervals and targets, and the overall
        score, for a period at a level on a basis."""
        q = handlers.ScoresQuery(await asyncio.to_thread(period_of, period), level, basis)

        def read() -> dict[str, Any]:
            with session() as s:
                return handlers.scores(s, q, targets)

        return await asyncio.to_thread(read)

    @router.get("/guardrails", tags=["scores"])
    async def guardrails(
        period: Annotated[
            str | None,
            Query(description="YYYY-MM or FYyyyy-yy; default: the current business month"),
        ] = None,
    ) -> dict[str, Any]:
        """Waiver and deferral rates, failures to attend, interview minutes, marker
        errors per Contact Centre, AACT per BDC and missed windows by stage."""
        p = await asyncio.to_thread(period_of, period)

        def read() -> dict[str, Any]:
            with session() as s:
                return handlers.guardrails(s, p)

        return await asyncio.to_thread(read)

    @router.get("/targets", tags=["scores"])
    def list_targets() -> list[dict[str, Any]]:
        return [json.loads(t.model_dump_json()) for t in settings.targets]

    return build_app(
        runtime,
        title="IDT Scoring",
        description="Live IDT element scores on the policy and measured bases, guard-rails "
        "and Prometheus metrics.",
        routers=[router],
    )
