"""Re-running only the tests that failed (``retry --failed``): a new attempt of a failed job
that runs the failing tests of its current attempt, and nothing else, in a fresh container
of the same environment.

The tests are named by their ids in the test history (the current attempt's report); the
runner keeps only those of what it collects (the protocol's ONLY file). A split suite runs
them on as many shards as had failures, never more. The new attempt's counts are the earlier
attempt's with the re-run tests' new outcomes in place of their failures, and its status is
what the re-run gave them: a test that fails again fails the job, "failed again".
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from orchestrator.errors import Conflict
from orchestrator.models import Job, JobStatus, TestCounts
from orchestrator.store import Store

MAX_TESTS = 1000  # more failures than that is not a few flaky tests: retry the whole suite


def plan(store: Store, job: Job, command: bool) -> dict[str, Any]:
    """The ``rerun`` of a new attempt of ``job`` that runs only its failing tests."""
    if job.status is not JobStatus.FAILED:
        raise Conflict(
            f"job {job.id} ({job.commit[:12]}) is {job.status.value}: only a failed job's tests re-run alone"
        )
    if command:
        raise Conflict(f"{job.repository} runs a command (repositories[].command), not pytest: retry the whole suite")
    tests = store.tests.failed_in(job.id, job.attempts, limit=MAX_TESTS + 1)
    if not tests:
        raise Conflict(f"job {job.id} has no failing test in its report: retry the whole suite")
    if len(tests) > MAX_TESTS:
        raise Conflict(f"job {job.id} has more than {MAX_TESTS} failing tests: retry the whole suite")
    failing_shards = sum(1 for s in job.shards if _bad(s))
    return {
        "of_attempt": job.attempts,
        "tests": tests,
        "counts": dict((job.tests or TestCounts()).__dict__),
        "shards": max(1, min(failing_shards, len(tests))),
    }


def _bad(shard: dict[str, Any]) -> bool:
    tests = shard.get("tests") or {}
    return bool(tests.get("failed") or tests.get("errors")) or shard.get("status") not in ("passed", "running")


def only_file(job: Job) -> bytes | None:
    """What the runner reads to keep only these tests (protocol.ONLY_FILE), or None."""
    return json.dumps(job.rerun["tests"]).encode() if job.rerun else None


def combined(job: Job) -> Job:
    """A re-run attempt's job (judged, not saved) with the whole suite's counts and a reason
    that says what the re-run gave; any other job as it is."""
    plan_ = job.rerun
    if not plan_ or job.status not in (JobStatus.PASSED, JobStatus.FAILED):
        return job
    before = TestCounts(**plan_["counts"])
    got = job.tests or TestCounts()
    asked = len(plan_["tests"])
    counts = TestCounts(
        total=before.total,
        passed=before.passed + got.passed,
        failed=got.failed,
        errors=got.errors,
        skipped=before.skipped + got.skipped,
    )
    bad = got.failed + got.errors
    missing = f"; {asked - got.total} of them were not found" if got.total < asked else ""
    of = plan_["of_attempt"]
    if job.status is JobStatus.FAILED:
        message = f"failed again: {bad} of the {asked} failed tests of attempt {of} re-run{missing}"
    else:
        message = job.message or f"the {asked} failed tests of attempt {of} passed when re-run{missing}"
    return dataclasses.replace(job, tests=counts, message=message)
