"""Jobs, their status, and the one function that changes a job's status.

A *job* is one commit of one repository tested in one container; each time it is started
is an *attempt*. ``transition`` is pure: it returns a new ``Job`` or raises, and the store
saves its result with a compare-and-swap on the old status, so two actors (a finishing
worker and a cancel request, say) can never both win.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from orchestrator.errors import InvalidTransition


class JobStatus(str, Enum):
    """Stored by value; ``error`` (infrastructure or pytest itself) is kept apart from
    ``failed`` (the tests said no)."""

    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # coalesced: a newer commit of its branch was tested instead ("covered by <sha>")

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def bad(self) -> bool:
        """A verdict that makes ``run --once`` exit 1."""
        return self in (JobStatus.FAILED, JobStatus.ERROR, JobStatus.TIMED_OUT)


FINAL_STATUSES = frozenset(
    {JobStatus.PASSED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.TIMED_OUT, JobStatus.CANCELLED, JobStatus.SKIPPED}
)
TESTED_STATUSES = frozenset({JobStatus.PASSED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.TIMED_OUT})

# running -> queued is a re-queue after an infrastructure failure (a new attempt follows);
# final -> queued is a retry asked for by a user, or a skipped commit that a bisection tests.
_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.SKIPPED}),
    JobStatus.RUNNING: (FINAL_STATUSES - {JobStatus.SKIPPED}) | {JobStatus.QUEUED},
    **{s: frozenset({JobStatus.QUEUED}) for s in FINAL_STATUSES},
}


@dataclass(frozen=True)
class TestCounts:
    """Counts read from the JUnit report, never from the log."""

    __test__ = False  # not a pytest test class

    total: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0


def _of_attempt(default: Any) -> Any:
    """A field of one attempt's outcome: a new attempt starts it afresh (``transition``)."""
    return field(default=default, metadata={"attempt": True})


@dataclass(frozen=True)
class Job:
    id: int
    repository: str
    commit: str
    branches: tuple[str, ...]
    subject: str
    status: JobStatus
    queued_at: datetime
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = _of_attempt(None)
    exit_code: int | None = _of_attempt(None)
    message: str | None = _of_attempt(None)
    container_id: str | None = _of_attempt(None)
    image_tag: str | None = None
    image_id: str | None = None
    tests: TestCounts | None = _of_attempt(None)
    log_truncated: bool = _of_attempt(False)
    environment: dict[str, Any] | None = _of_attempt(None)  # what the attempt's environment was built from
    node: str | None = _of_attempt(None)  # the machine that ran the attempt, on a Swarm
    priority: int = 0  # claimed highest first; a bisection's jobs are BISECT_PRIORITY
    culprit: dict[str, Any] | None = None  # set when a bisection named this commit: the range it bisected
    flaky: tuple[str, ...] = _of_attempt(())  # tests that failed, then passed when re-run in the same container
    coverage: float | None = _of_attempt(None)  # line coverage in percent, from the suite's coverage.xml
    artifacts: dict[str, Any] | None = _of_attempt(None)  # files collected for download: {"files", "refused", "bytes"}
    shards: tuple[dict[str, Any], ...] = _of_attempt(())  # a split suite's containers, one summary each
    python: str = ""  # the Python of this variant of the commit; "" where the repository names one Python
    trigger: str = "push"  # what queued it last (TRIGGERS): set each time it is queued
    quarantined: tuple[str, ...] = _of_attempt(())  # quarantined tests that failed: they did not fail the job
    rerun: dict[str, Any] | None = None  # a re-run of the failed tests alone: of_attempt, tests, counts, shards
    dispatcher: str | None = _of_attempt(None)  # the dispatcher that claimed the attempt (several share a store)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)


_ATTEMPT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Job) if f.metadata.get("attempt")}

MANUAL_PRIORITY = 1  # submitted or retried by a user: before the pushes waiting, never coalesced
NORMAL_PRIORITY = 0  # found by the observer
BISECT_PRIORITY = -1  # a bisection's: after every new push

# What queued a job: the observer found a push; a user asked (submit, retry); a repository's
# schedule came round; a bisection tests a commit; the merge queue tests a candidate.
PUSH, MANUAL, SCHEDULE, BISECTION, MERGE = "push", "manual", "schedule", "bisection", "merge"
TRIGGERS = (PUSH, MANUAL, SCHEDULE, BISECTION, MERGE)

MAX_SUBJECT = 1000  # characters of a commit's subject that are kept, wherever it is read


def subject_line(text: str) -> str:
    """A subject as it is stored: cut to MAX_SUBJECT characters (never a reason to refuse
    a commit), with an ellipsis where it was cut."""
    return text if len(text) <= MAX_SUBJECT else text[: MAX_SUBJECT - 1] + "…"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """The one way times are written (store, result files, API): ISO 8601, UTC, ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_iso(value: object) -> datetime | None:
    """Read what ``iso`` wrote, an older ``+00:00`` form, or the engine's nanosecond
    RFC 3339 times; None for anything else, and for Go's zero time (never)."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def transition(job: Job, new: JobStatus, now: datetime, **changes: object) -> Job:
    """Return ``job`` moved to ``new`` with its timestamps set, or raise InvalidTransition.

    Entering ``running`` starts a new attempt and clears the previous attempt's outcome;
    entering ``queued`` keeps the attempt count so retries stay visible.
    """
    if new not in _ALLOWED[job.status]:
        raise InvalidTransition(f"job {job.id}: cannot go from {job.status.value} to {new.value}")
    if new is JobStatus.RUNNING:
        base: dict[str, Any] = {**_ATTEMPT_DEFAULTS, "attempts": job.attempts + 1, "started_at": now}
    elif new is JobStatus.QUEUED:
        base = dict(started_at=None, finished_at=None, container_id=None)
        if job.status.final:
            base.update(exit_code=None, tests=None, log_truncated=False, message=None)
    else:
        base = dict(finished_at=now)
    base.update(changes)
    return dataclasses.replace(job, status=new, **base)


def after_infrastructure_failure(job: Job, retries: int, reason: str, now: datetime, **changes: object) -> Job:
    """The retry policy: an attempt that the infrastructure ended (never the tests) is
    re-queued as a new attempt until ``retries`` re-attempts are spent, then ends ``error``."""
    if job.attempts > retries:
        return transition(
            job, JobStatus.ERROR, now, message=f"gave up after {job.attempts} attempts: {reason}", **changes
        )
    return transition(job, JobStatus.QUEUED, now, message=f"attempt {job.attempts}: {reason}")
