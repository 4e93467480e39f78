"""Prometheus metrics of one dispatcher, in its own registry (no process-global state).

Queue depth and running jobs are read from the store at scrape time, so they are right
even when another process queued the work; finished jobs, durations and engine errors are
counted as they happen in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.models import Job, JobStatus
from orchestrator.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StoreGauges(Collector):
    def __init__(self, store: Store):
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "orchestrator_queue_depth", "Jobs queued and not yet started", value=self._store.count(JobStatus.QUEUED)
        )
        yield GaugeMetricFamily(
            "orchestrator_running_jobs", "Jobs whose container is running", value=self._store.count(JobStatus.RUNNING)
        )


class _RepositoryHealth(Collector):
    """Per repository: whether its last poll worked, and how many polls failed."""

    def __init__(self, health: Callable[[], dict[str, Any]], failures: Callable[[], dict[str, int]]):
        self._health, self._failures = health, failures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily(
            "orchestrator_repository_up", "1 if the last poll of the repository worked", labels=["repository"]
        )
        for name, state in self._health().items():
            up.add_metric([name], 1.0 if state.ok else 0.0)
        yield up
        failed = CounterMetricFamily(
            "orchestrator_repository_poll_errors", "Polls of the repository that failed", labels=["repository"]
        )
        for name, count in self._failures().items():
            failed.add_metric([name], count)
        yield failed


class _Leadership(Collector):
    """Of a dispatcher sharing its store: whether it is the active one, and the lease's age."""

    def __init__(self, role: Callable[[], dict[str, Any]]):
        self._role = role

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        role = self._role()
        active = GaugeMetricFamily(
            "orchestrator_dispatcher_active", "1 if this dispatcher holds the active lease", labels=["dispatcher"]
        )
        active.add_metric([role["name"]], 1.0 if role["role"] == "active" else 0.0)
        yield active
        age = GaugeMetricFamily(
            "orchestrator_lease_age_seconds", "Seconds since the active's lease was last renewed, as last read"
        )
        age.add_metric([], float(role["lease_age_s"]) if role["lease_age_s"] is not None else float("nan"))
        yield age


class Metrics:
    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "orchestrator_jobs_finished_total", "Jobs finished, by final status", ["status"], registry=self.registry
        )
        self.per_node = Counter(
            "orchestrator_node_jobs_finished_total",
            "Jobs finished, by the Swarm node that ran them",
            ["node"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "orchestrator_job_duration_seconds",
            "Container run time of finished jobs",
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "orchestrator_engine_errors_total", "Docker engine calls that failed", registry=self.registry
        )
        self.registry.register(_StoreGauges(store))

    def watch_repositories(self, health: Callable[[], dict[str, Any]], failures: Callable[[], dict[str, int]]) -> None:
        """Export an observer's per-repository state (``Observer.health``, ``.failures``)."""
        self.registry.register(_RepositoryHealth(health, failures))

    def watch_leadership(self, role: Callable[[], dict[str, Any]]) -> None:
        """Export this dispatcher's place among those sharing a store (leadership.py)."""
        self.registry.register(_Leadership(role))

    def job_finished(self, job: Job) -> None:
        self.finished.labels(status=job.status.value).inc()
        if job.node:
            self.per_node.labels(node=job.node).inc()
        if job.duration_s is not None:
            self.duration.observe(job.duration_s)

    def engine_error(self) -> None:
        self.engine_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
