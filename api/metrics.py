"""Prometheus metrics (names prefixed ``fpmon_``, base units, counters end in ``_total``).

Two sources, one registry per app (so several apps can live in one process, e.g. in tests):

* this process's HTTP side: payloads accepted, duplicates, rejections, ingest latency;
* the database, read at scrape time (:class:`DatabaseCollector`): steps processed and failed, queue depth,
  alerts by type, webhook notifications by status, processing latency, and the latest observables per run.
  The compute workers run in other processes (or other replicas), so the database is the one place that
  sees all of their work;
* this process's notifier: webhook delivery attempts by outcome.

A scrape costs the same at any number of stored steps (``/metrics`` ≤ 50 ms at 100,000 steps:
``benchmarks/bench_metrics.py``): it reads one row per run (the counters ``steps_received``,
``steps_processed``, ``steps_failed`` and the latest step's scalars ``latest_scalars``, all kept by the step
writes in the step's own transaction), the alert counts from the ``ix_alerts_type`` index, and the claim and
done times of the last :data:`LATENCY_WINDOW` processed steps from the ``ix_steps_status_processed`` index.
It never reads a step payload (they live in ``step_payloads``) nor counts step rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import Alert, Run, Step, outbox_counts

log = logging.getLogger("fpmon.metrics")

#: observables exported per run (their latest processed value)
EXPORTED_OBSERVABLES = ("C", "W2_ref", "S_dot", "H", "div_q99", "reward_mean")
#: processing latency quantiles are taken over the last this many processed steps
LATENCY_WINDOW = 200
#: the latest observables of at most this many runs (the first by id) are exported
MAX_EXPORTED_RUNS = 500


@dataclass
class Metrics:
    """The HTTP side's metrics, plus the database collector once :meth:`watch_database` is called."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.ingested = Counter("fpmon_steps_ingested_total", "Step payloads accepted (queued)", registry=r)
        self.duplicates = Counter("fpmon_steps_duplicate_total", "Step payloads received again", registry=r)
        self.rejected = Counter("fpmon_requests_rejected_total", "Requests answered 4xx", ["reason"], registry=r)
        self.ingest_latency = Histogram(
            "fpmon_ingest_latency_seconds",
            "Time to validate and store one step payload",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.webhook_attempts = Counter(
            "fpmon_webhook_attempts_total",
            "Webhook delivery attempts of this process's notifier, by outcome (delivered, retry, failed, lost)",
            ["outcome"],
            registry=r,
        )

    def count_webhook_attempt(self, outcome: str) -> None:
        """Count one delivery attempt of the notifier (:class:`api.notify.Notifier`)."""
        self.webhook_attempts.labels(outcome).inc()

    def watch_database(self, sessions: Callable[[], Session], workers_alive: Callable[[], int]) -> None:
        self.registry.register(DatabaseCollector(sessions, workers_alive))


class DatabaseCollector(Collector):
    """Metrics read from the database at each scrape (see the module docstring)."""

    def __init__(self, sessions: Callable[[], Session], workers_alive: Callable[[], int]) -> None:
        self.sessions = sessions
        self.workers_alive = workers_alive

    def describe(self) -> list[Metric]:
        return []  # collected lazily: no database query at registration

    def collect(self) -> Iterator[Metric]:
        alive = GaugeMetricFamily("fpmon_workers_alive", "Compute workers of this process taking steps")
        alive.add_metric([], self.workers_alive())
        yield alive
        try:
            with self.sessions() as session:
                yield from self._from_database(session)
        except Exception:  # the metrics page must answer even when the database does not
            log.exception("database metrics unavailable")

    def _from_database(self, session: Session) -> Iterator[Metric]:
        received, done, failed_steps = session.execute(
            select(
                func.coalesce(func.sum(Run.steps_received), 0),
                func.coalesce(func.sum(Run.steps_processed), 0),
                func.coalesce(func.sum(Run.steps_failed), 0),
            )
        ).one()
        processed = CounterMetricFamily("fpmon_steps_processed", "Steps whose observables were computed")
        processed.add_metric([], done)
        yield processed
        failed = CounterMetricFamily("fpmon_steps_failed", "Steps whose processing failed")
        failed.add_metric([], failed_steps)
        yield failed
        depth = GaugeMetricFamily("fpmon_queue_depth", "Steps received and not processed yet")
        depth.add_metric([], max(0, received - done - failed_steps))
        yield depth
        alerts = CounterMetricFamily("fpmon_alerts", "Alerts raised", labels=["type"])
        for alert_type, count in session.execute(select(Alert.type, func.count()).group_by(Alert.type)):
            alerts.add_metric([alert_type], count)
        yield alerts
        outbox = GaugeMetricFamily("fpmon_webhook_outbox", "Webhook notifications by status", labels=["status"])
        by_status = outbox_counts(session)
        if any(by_status.values()):  # no sample at all while no webhook was ever configured
            for status, count in by_status.items():
                outbox.add_metric([status], count)
        yield outbox
        yield self._latency(session)
        yield self._observables(session)

    @staticmethod
    def _latency(session: Session) -> Metric:
        rows = session.execute(
            select(Step.claimed_at, Step.processed_at)
            .where(Step.status == "done", Step.processed_at.is_not(None))
            .order_by(Step.processed_at.desc())
            .limit(LATENCY_WINDOW)
        ).all()
        durations = sorted((done - claimed).total_seconds() for claimed, done in rows if done and claimed)
        family = GaugeMetricFamily(
            "fpmon_processing_latency_seconds",
            f"Claim-to-done time of the last {LATENCY_WINDOW} processed steps, by quantile",
            labels=["quantile"],
        )
        if durations:
            for q in (0.5, 0.9, 0.99):
                family.add_metric([str(q)], durations[min(len(durations) - 1, int(q * len(durations)))])
        return family

    @staticmethod
    def _observables(session: Session) -> Metric:
        family = GaugeMetricFamily(
            "fpmon_observable", "Latest processed value of an observable, per run", labels=["run", "name"]
        )
        stmt: Any = (
            select(Run.name, Run.latest_scalars)
            .where(Run.latest_step.is_not(None))
            .order_by(Run.id)
            .limit(MAX_EXPORTED_RUNS)
        )
        for run_name, scalars in session.execute(stmt):
            for name in EXPORTED_OBSERVABLES:
                value = (scalars or {}).get(name)
                if value is not None:
                    family.add_metric([run_name, name], float(value))
        return family
