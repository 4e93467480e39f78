"""Quarantine: a flaky test stops failing its jobs while it is still run and recorded.

A job whose only failures are quarantined tests is ``passed``, and says so: its
``quarantined`` lists them, its counts keep them as failures (``tests.quarantined`` says how
many of those are quarantined), and its reason names them. It is never silently green.
Only a verdict of the tests (``failed``) is changed: a suite that errs, times out or runs
out of memory is not the tests' word, and a quarantine does not speak for it.

Entries are made by an operator (``orchestrator quarantine add``, the API, the dashboard) or,
with ``quarantine.auto``, for a test whose flip rate crosses ``quarantine.flip_rate``; each
ends after ``quarantine.days`` (14 by default) unless given its own end.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from orchestrator.config import QuarantineConfig
from orchestrator.errors import UnknownCommit, UsageError
from orchestrator.models import Job, JobStatus, utcnow
from orchestrator.results.report import Report
from orchestrator.store import Store
from orchestrator.store.quarantine import Entry

log = logging.getLogger("orchestrator.results.quarantine")

MAX_REASON = 500
AUTO = "auto"  # who added an automatic entry


def judged(job: Job, report: Report, reruns: int, quarantined: frozenset[str]) -> Job:
    """``job`` (just judged, not saved) with its quarantined failures said, and ``passed``
    if they were its only ones."""
    failing = report.failing(reruns)
    caught = tuple(sorted(failing & quarantined))
    if not caught:
        return job
    if job.status is not JobStatus.FAILED or not failing <= quarantined:
        return dataclasses.replace(job, quarantined=caught)
    names = ", ".join(caught[:3]) + (f" and {len(caught) - 3} more" if len(caught) > 3 else "")
    message = f"passed with {len(caught)} quarantined test{'' if len(caught) == 1 else 's'} failing: {names}"
    return dataclasses.replace(job, status=JobStatus.PASSED, quarantined=caught, message=message)


def add(
    store: Store,
    config: QuarantineConfig,
    repository: str,
    test_id: str,
    reason: str,
    by: str,
    until: datetime | None = None,
) -> Entry:
    """Quarantine a test the repository's history knows (an unknown id is a typo that
    would quarantine nothing); until ``until``, else for ``config.days``."""
    reason = " ".join(reason.split())[:MAX_REASON]
    if not reason:
        raise UsageError("a quarantine needs a reason (--reason)")
    if not store.tests.known(repository, test_id):
        raise UnknownCommit(f"no test {test_id[:200]!r} in the history of {repository}")
    now = utcnow()
    end = until or now + timedelta(days=config.days)
    if end <= now:
        raise UsageError(f"--until {end.date()} is not in the future")
    return store.quarantine.add(repository, test_id, reason, by, end)


def automatic(store: Store, config: QuarantineConfig, job: Job, ranked: list[dict]) -> list[Entry]:
    """With ``quarantine.auto``: quarantine each test of ``job`` that failed or was flaky and
    whose flip rate (``ranked``: history.flaky) is at least the threshold, over enough runs;
    the entries made (an entry in force is left as it is)."""
    if not config.auto:
        return []
    mine = set(job.flaky) | set(store.tests.failed_in(job.id, job.attempts, limit=1000))
    made = []
    for row in ranked:
        test = row["test_id"]
        if test not in mine or row["runs"] < config.min_runs or row["flip_rate"] < config.flip_rate:
            continue
        until = utcnow() + timedelta(days=config.days)
        reason = f"flip rate {row['flip_rate']:.2f} over its last {row['runs']} runs"
        entry = store.quarantine.add_new(job.repository, test, reason, AUTO, until, job.id, job.attempts)
        if entry is not None:
            log.info("%s: quarantined %s automatically (%s)", job.repository, test, reason)
            made.append(entry)
    return made
