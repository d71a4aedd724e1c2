"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The sidecar's metrics; names are prefixed ``fpmon_``, in base units, counters end in ``_total``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.ingested = Counter("fpmon_steps_ingested_total", "Step payloads accepted (queued)", registry=r)
        self.duplicates = Counter("fpmon_steps_duplicate_total", "Step payloads received again", registry=r)
        self.rejected = Counter("fpmon_requests_rejected_total", "Requests answered 4xx", ["reason"], registry=r)
        self.processed = Counter("fpmon_steps_processed_total", "Steps whose observables were computed", registry=r)
        self.failed = Counter("fpmon_steps_failed_total", "Steps whose processing failed", registry=r)
        self.alerts = Counter("fpmon_alerts_total", "Alerts raised", ["type"], registry=r)
        self.ingest_latency = Histogram(
            "fpmon_ingest_latency_seconds",
            "Time to validate and store one step payload",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.processing_latency = Histogram(
            "fpmon_processing_latency_seconds",
            "Time to compute and store one step's observables",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.queue_depth = Gauge("fpmon_queue_depth", "Steps received but not processed yet", registry=r)
        self.observable = Gauge(
            "fpmon_observable", "Latest value of an observable per run", ["run", "name"], registry=r
        )
        self.workers_alive = Gauge("fpmon_workers_alive", "Compute worker threads alive", registry=r)
