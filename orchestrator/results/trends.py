"""Trends read from the store for the pictures: a branch's run durations and pass rate per
day, its slowest tests with their recent durations, and the queue and running jobs over
the last hour (counted from the jobs' own times: nothing is sampled)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.models import TESTED_STATUSES, Job, JobStatus, iso, parse_iso, utcnow
from orchestrator.store import Store


@dataclass(frozen=True)
class Slow:
    test_id: str
    mean_s: float
    recent_s: list[float]  # oldest first


def runs(store: Store, repository: str, branch: str | None, limit: int = 100) -> list[Job]:
    """The newest tested jobs of a branch (any, if None), oldest first."""
    jobs = [
        j
        for j in store.list_jobs(repository=repository, branch=branch, limit=limit * 2)
        if j.status in TESTED_STATUSES and j.duration_s is not None
    ]
    return list(reversed(jobs[:limit]))


def pass_rate_by_day(store: Store, repository: str, branch: str | None, days: int = 30) -> list[tuple[str, int, int]]:
    """(day, passed, tested) for each of the last ``days`` days that had a run, oldest first."""
    return store.pass_rate_by_day(repository, branch, _iso(utcnow() - timedelta(days=days)))


def slowest_tests(store: Store, repository: str, branch: str | None, count: int = 10, jobs: int = 20) -> list[Slow]:
    """The ``count`` tests with the longest mean duration over the branch's newest ``jobs``
    tested jobs, each with its durations there."""
    ids = [j.id for j in reversed(runs(store, repository, branch, limit=jobs))]
    if not ids:
        return []
    rows = store.tests.seconds_of_jobs(ids)
    series: dict[str, list[float]] = defaultdict(list)
    for test_id, seconds in rows:
        series[test_id].append(seconds)
    ranked = sorted(series.items(), key=lambda item: -sum(item[1]) / len(item[1]))[:count]
    return [Slow(test_id, sum(values) / len(values), values) for test_id, values in ranked]


def load(store: Store, minutes: int = 60, step_s: int = 60) -> list[tuple[datetime, int, int]]:
    """(time, queued, running) every ``step_s`` over the last ``minutes``, from the jobs'
    queued, started and finished times (a job's latest attempt; a retried one counts from
    its first queueing)."""
    now = utcnow()
    start = now - timedelta(minutes=minutes)
    spans = []
    for queued_at, started_at, finished_at, status in store.spans(_iso(start)):
        queued, started, finished = parse_iso(queued_at), parse_iso(started_at), parse_iso(finished_at)
        if status == JobStatus.SKIPPED.value or queued is None:
            continue
        spans.append((queued, started, finished))
    points = []
    for i in range(minutes * 60 // step_s + 1):
        t = start + timedelta(seconds=i * step_s)
        waiting = sum(1 for q, s, f in spans if q <= t and (s or f or now + timedelta(days=1)) > t)
        running = sum(1 for q, s, f in spans if s is not None and s <= t and (f is None or f > t))
        points.append((t, waiting, running))
    return points


def _iso(value: datetime) -> str:
    return iso(value) or ""
