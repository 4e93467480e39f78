from datetime import timedelta

import pytest

from orchestrator.errors import InvalidTransition
from orchestrator.models import Job, JobStatus, TestCounts, transition, utcnow


def job(status: JobStatus = JobStatus.QUEUED, **kw) -> Job:
    return Job(
        id=1,
        repository="demo",
        commit="a" * 40,
        branches=("main",),
        subject="s",
        status=status,
        queued_at=utcnow(),
        **kw,
    )


def test_status_is_stored_by_value() -> None:
    assert JobStatus("timed_out") is JobStatus.TIMED_OUT
    assert JobStatus.PASSED.value == "passed" and JobStatus.PASSED == "passed"


def test_running_starts_a_new_attempt() -> None:
    now = utcnow()
    started = transition(job(), JobStatus.RUNNING, now)
    assert started.attempts == 1 and started.started_at == now and started.finished_at is None


def test_finish_sets_time_and_outcome() -> None:
    now = utcnow()
    running = transition(job(), JobStatus.RUNNING, now)
    later = now + timedelta(seconds=3)
    done = transition(running, JobStatus.FAILED, later, exit_code=1, tests=TestCounts(2, 1, 1, 0, 0))
    assert done.finished_at == later and done.duration_s == 3.0 and done.exit_code == 1


def test_requeue_keeps_attempts_and_retry_clears_outcome() -> None:
    running = transition(job(), JobStatus.RUNNING, utcnow())
    requeued = transition(running, JobStatus.QUEUED, utcnow(), message="engine gone")
    assert requeued.attempts == 1 and requeued.started_at is None and requeued.message == "engine gone"
    failed = transition(transition(requeued, JobStatus.RUNNING, utcnow()), JobStatus.FAILED, utcnow(), exit_code=1)
    assert failed.attempts == 2
    retried = transition(failed, JobStatus.QUEUED, utcnow())
    assert retried.exit_code is None and retried.attempts == 2


@pytest.mark.parametrize(
    "source, target",
    [
        (JobStatus.QUEUED, JobStatus.PASSED),
        (JobStatus.QUEUED, JobStatus.QUEUED),
        (JobStatus.PASSED, JobStatus.FAILED),
        (JobStatus.PASSED, JobStatus.RUNNING),
        (JobStatus.CANCELLED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.RUNNING),
    ],
)
def test_illegal_transitions_are_rejected(source: JobStatus, target: JobStatus) -> None:
    with pytest.raises(InvalidTransition):
        transition(job(source), target, utcnow())


def test_final_and_bad() -> None:
    assert {s for s in JobStatus if s.final} == {
        JobStatus.PASSED,
        JobStatus.FAILED,
        JobStatus.ERROR,
        JobStatus.TIMED_OUT,
        JobStatus.CANCELLED,
        JobStatus.SKIPPED,
    }
    assert {s for s in JobStatus if s.bad} == {JobStatus.FAILED, JobStatus.ERROR, JobStatus.TIMED_OUT}


def test_skipped_comes_only_from_queued_and_goes_back_to_queued() -> None:
    """A coalesced commit ends skipped without running; a bisection (or a user) queues it again."""
    now = utcnow()
    job = Job(
        id=1, repository="r", commit="a" * 40, branches=("main",), subject="", status=JobStatus.QUEUED, queued_at=now
    )
    skipped = transition(job, JobStatus.SKIPPED, now, message="covered by bbbbbbbbbbbb")
    assert skipped.status is JobStatus.SKIPPED and skipped.finished_at == now and skipped.attempts == 0
    requeued = transition(skipped, JobStatus.QUEUED, now, priority=-1)
    assert requeued.status is JobStatus.QUEUED and requeued.message is None and requeued.priority == -1
    running = transition(job, JobStatus.RUNNING, now)
    with pytest.raises(InvalidTransition):
        transition(running, JobStatus.SKIPPED, now)


def test_a_backoff_counted_elsewhere_gives_the_same_delays() -> None:
    from orchestrator.backoff import Backoff

    looping = Backoff(0.5, 30.0)
    assert [Backoff(0.5, 30.0).after(n) for n in range(1, 9)] == [looping.next() for _ in range(8)]
