"""Prometheus metrics of the runtime, in a registry owned by each app (no global
state at import, and several apps can live in one test process)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from redis.exceptions import ResponseError


class RuntimeMetrics:
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The process's own: process_resident_memory_bytes, process_cpu_seconds_total,
        # open file descriptors (read from /proc at each scrape; nothing elsewhere).
        ProcessCollector(registry=r)
        self.consumed = Counter(
            "idt_events_consumed_total",
            "Stream entries a service finished with, by result (applied, duplicate, dead_letter).",
            ["service", "stream", "result"],
            registry=r,
        )
        self.republished = Counter(
            "idt_outbox_republished_total",
            "Outbox events published again after Redis restarted (it may have lost them).",
            ["service"],
            registry=r,
        )
        self.conflicts = Counter(
            "idt_batch_conflicts_total",
            "Batch transactions that lost a race with another replica and were run again.",
            ["service", "stream"],
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
        self.swept = Counter(
            "idt_claims_swept_total",
            "Claims re-evaluated after a clock tick beyond those the tick itself did (scheduler).",
            ["service"],
            registry=r,
        )
        self.outbox_pruned = Counter(
            "idt_outbox_pruned_total",
            "Published outbox rows deleted after the retention period.",
            ["service"],
            registry=r,
        )
        self.sweep_failures = Counter(
            "idt_sweep_failures_total",
            "Claims whose re-evaluation after a clock tick failed; skipped until business "
            "time moves (scheduler).",
            ["service"],
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
        self.trim_released = Counter(
            "idt_memory_trim_released_bytes_total",
            "Resident memory given back to the system by the periodic malloc_trim "
            "(memory threads freed that glibc kept in its arenas).",
            ["service"],
            registry=r,
        )
        self.trim_seconds = Counter(
            "idt_memory_trim_seconds_total",
            "Time spent in the periodic malloc_trim (it holds each malloc arena's lock "
            "in turn while it runs).",
            ["service"],
            registry=r,
        )
        self.wal_frames = Gauge(
            "idt_sqlite_wal_frames",
            "Frames (pages) in the service's SQLite WAL at its last checkpoint: staying "
            "high means the WAL never starts again, and commits will checkpoint it "
            "themselves past 40,000 (SQLite only).",
            ["service"],
            registry=r,
        )
        self.stream_unreadable = Gauge(
            "idt_stream_unreadable",
            "1 while the service cannot read the stream (a key of another type at its "
            "name, a permission missing: /health and the log give Redis's reason); its "
            "other streams are read meanwhile.",
            ["service", "stream"],
            registry=r,
        )
        self.consumer_up = Gauge(
            "idt_consumer_up",
            "1 while every subscriber of the service is reading.",
            ["service"],
            registry=r,
        )


class StreamCollector:
    """Consumer-group health read from Redis at scrape time: pending entries and
    lag per consumed stream (lag needs Redis 7's XINFO GROUPS; Redis 6.2 does not
    report it and the series is left out), and the length of the dead letters."""

    def __init__(self, service: str, redis_url: str, group: str, streams: list[str]) -> None:
        import redis

        self.service = service
        self.group = group
        self.streams = streams
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        pending = GaugeMetricFamily(
            "idt_consumer_pending",
            "Entries delivered to the service's consumer group and not yet acked.",
            labels=["service", "stream"],
        )
        lag = GaugeMetricFamily(
            "idt_consumer_lag",
            "Entries in the stream not yet delivered to the group (Redis 7).",
            labels=["service", "stream"],
        )
        dead = GaugeMetricFamily(
            "idt_dead_letters", "Entries in idt:dead-letters (all services' rejections)."
        )
        try:
            for stream in self.streams:
                try:
                    groups = self.client.xinfo_groups(stream)
                except ResponseError:  # not a stream: the others are still counted
                    continue
                for g in groups:
                    if g["name"].decode() != self.group:
                        continue
                    pending.add_metric([self.service, stream], g["pending"])
                    if g.get("lag") is not None:
                        lag.add_metric([self.service, stream], g["lag"])
            dead.add_metric([], self.client.xlen("idt:dead-letters"))
        except Exception:  # noqa: S110 - Redis down: the scrape still answers; health says why
            pass
        yield pending
        yield lag
        yield dead

    def close(self) -> None:
        self.client.close()
