"""Prometheus metrics of the runtime, in a registry owned by each app (no global
state at import, and several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RuntimeMetrics:
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "idt_events_consumed_total",
            "Stream entries a service finished with, by result (applied, duplicate, dead_letter).",
            ["service", "stream", "result"],
            registry=r,
        )
        self.handler_failures = Counter(
            "idt_handler_failures_total",
            "Entries whose handler raised; they stay pending and are retried.",
            ["service", "stream"],
            registry=r,
        )
        self.reclaimed = Counter(
            "idt_entries_reclaimed_total",
            "Pending entries claimed from idle consumers (XAUTOCLAIM).",
            ["service", "stream"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "idt_batch_seconds",
            "Time to decode, commit and ack one batch.",
            ["service", "stream"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.published = Counter(
            "idt_events_published_total",
            "Events written to Redis from the outbox.",
            ["service", "stream"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "idt_outbox_pending",
            "Committed events not yet on Redis.",
            ["service"],
            registry=r,
        )
        self.consumer_up = Gauge(
            "idt_consumer_up",
            "1 while every subscriber of the service is reading.",
            ["service"],
            registry=r,
        )
