"""Coalescing and bisection on a real store, with the tests' verdicts given by hand (the
real engine and real Git are in tests/integration/test_bisection.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.dispatch.bisection import ABANDONED, FLAKY, FOUND, Bisector
from orchestrator.dispatch.coalesce import Picker
from orchestrator.models import BISECT_PRIORITY, MANUAL_PRIORITY, Job, JobStatus
from orchestrator.store import NewCommit, Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def sha(i: int) -> str:
    return f"{i:040x}"


def queue_commits(store: Store, first: int, count: int, branch: str = "main") -> list[Job]:
    store.record_commits("demo", [NewCommit(sha(i), f"c{i}", (branch,)) for i in range(first, first + count)])
    return [store.by_commit("demo", sha(i)) for i in range(first, first + count)]


def finish(store: Store, job: Job, status: JobStatus) -> Job:
    running = store.claim(store.get(job.id)) if store.get(job.id).status is JobStatus.QUEUED else store.get(job.id)
    return store.move(running, status)


def test_only_the_newest_of_a_branch_runs_and_the_older_end_skipped(store: Store) -> None:
    skipped: list[Job] = []
    picker = Picker(store, frozenset({"demo"}), skipped=skipped.append)
    jobs = queue_commits(store, 1, 4)
    other = queue_commits(store, 10, 1, branch="feature")[0]
    claimed = picker.claim_next()
    assert claimed.id == jobs[-1].id and claimed.status is JobStatus.RUNNING
    assert [j.id for j in skipped] == [j.id for j in jobs[:3]]
    assert all(store.get(j.id).message == f"covered by {sha(4)[:12]}" for j in jobs[:3])
    assert picker.claim_next().id == other.id  # another branch: its own newest
    assert picker.claim_next() is None


def test_without_coalescing_every_commit_runs_oldest_first(store: Store) -> None:
    picker = Picker(store, frozenset())
    jobs = queue_commits(store, 1, 3)
    assert [picker.claim_next().id for _ in jobs] == [j.id for j in jobs]


def test_a_warm_pick_does_not_choose_what_another_warm_job_will_cover(store: Store) -> None:
    picker = Picker(store, frozenset({"demo"}))
    jobs = queue_commits(store, 1, 5)
    first = picker.pick()
    assert first.id == jobs[-1].id
    assert picker.pick(besides=frozenset({first.id})) is None  # the other four are covered by it


def test_manual_and_bisection_jobs_are_never_coalesced(store: Store) -> None:
    picker = Picker(store, frozenset({"demo"}))
    jobs = queue_commits(store, 1, 3)
    store.record_commits("demo", [NewCommit(sha(9), "asked for", ("main",), MANUAL_PRIORITY)])
    assert picker.claim_next().commit == sha(9)  # a user's first, and alone
    assert all(store.get(j.id).status is JobStatus.QUEUED for j in jobs)


class Bed:
    """A branch whose last tested commit passed, then ``count`` commits pushed at once;
    the newest runs (coalesced) and fails; commits from ``bad_from`` on fail."""

    def __init__(self, store: Store, count: int, bad_from: int, flaky: bool = False):
        self.store, self.bad_from, self.flaky = store, bad_from, flaky
        finish(store, queue_commits(store, 0, 1)[0], JobStatus.PASSED)
        self.jobs = queue_commits(store, 1, count)
        self.named: list[tuple[Job, object]] = []
        self.picker = Picker(store, frozenset({"demo"}))
        self.bisector = Bisector(
            store,
            frozenset({"demo"}),
            lambda repo, good, bad: [sha(i) for i in range(1, count + 1)],
            named=lambda job, b: self.named.append((job, b)),
        )
        newest = self.picker.claim_next()
        self.runs = [newest.commit]
        self.bisection = self.bisector.consider(store.move(newest, JobStatus.FAILED))

    def verdict(self, job: Job) -> JobStatus:
        index = int(job.commit, 16)
        if self.flaky and job.attempts > 1:
            return JobStatus.PASSED  # the failure does not repeat
        return JobStatus.FAILED if index >= self.bad_from else JobStatus.PASSED

    def run(self, limit: int = 50) -> None:
        """Advance, and test what it queued, until it ends."""
        for _ in range(limit):
            self.bisector.advance()
            if not self.bisector.running():
                return
            job = self.picker.claim_next()
            if job is not None:
                assert job.priority == BISECT_PRIORITY
                self.runs.append(job.commit)
                self.store.move(job, self.verdict(job))
        raise AssertionError("the bisection did not end")


@pytest.mark.parametrize(("count", "bad_from"), [(32, 16), (32, 1), (32, 32), (7, 4), (2, 1), (2, 2)])
def test_the_first_failing_commit_is_named_within_the_budget(store: Store, count: int, bad_from: int) -> None:
    bed = Bed(store, count, bad_from)
    assert bed.bisection is not None
    bed.run()
    ((job, bisection),) = bed.named
    assert job.commit == sha(bad_from) and job.culprit["culprit"] == sha(bad_from)
    assert bisection.phase == FOUND and bisection.jobs <= math.ceil(math.log2(count)) + 1
    assert bisection.jobs == len(bed.runs) - 1  # every job it started, and only those
    assert store.get(job.id).culprit["good"] == sha(0)


def test_a_failure_that_does_not_repeat_names_no_culprit(store: Store) -> None:
    bed = Bed(store, 8, 5, flaky=True)
    bed.run()
    assert bed.named == []
    ended = bed.bisector.get(bed.bisection.id)
    assert ended.phase == FLAKY and "flaky" in ended.reason and ended.culprit is None


def test_a_probe_that_errors_abandons_with_the_reason(store: Store) -> None:
    bed = Bed(store, 8, 5)
    bed.bisector.advance()
    probe = bed.picker.claim_next()
    store.move(probe, JobStatus.ERROR)
    bed.bisector.advance()
    ended = bed.bisector.get(bed.bisection.id)
    assert ended.phase == ABANDONED and "gave no verdict" in ended.reason


def test_it_resumes_from_the_store(store: Store) -> None:
    """A new Bisector (a restarted dispatcher) carries on where the last one stopped."""
    bed = Bed(store, 16, 11)
    bed.bisector.advance()
    probe = bed.picker.claim_next()
    store.move(probe, bed.verdict(probe))
    bed.bisector = Bisector(
        store,
        frozenset({"demo"}),
        lambda repo, good, bad: [sha(i) for i in range(1, 17)],
        named=lambda job, b: bed.named.append((job, b)),
    )
    bed.bisector.catch_up()  # finds nothing new to start: the bisection exists
    bed.run()
    assert bed.named[0][0].commit == sha(11)


def test_no_bisection_without_a_pass_before_or_untested_commits(store: Store) -> None:
    bisector = Bisector(store, frozenset({"demo"}), lambda repo, good, bad: [bad])
    job = queue_commits(store, 1, 1)[0]
    assert bisector.consider(finish(store, job, JobStatus.FAILED)) is None  # nothing passed before it
    second = queue_commits(store, 2, 1)[0]
    assert bisector.consider(finish(store, second, JobStatus.FAILED)) is None  # a failure before it


def test_variants_coalesce_together_and_a_bisection_searches_the_failing_python(store: Store) -> None:
    """Two Pythons: the newest commit runs on both, the older ones are skipped on both; it
    passed before on both, fails now on 3.14 only: the bisection re-tests only 3.14's jobs
    and names the culprit for that variant."""
    pythons = ("3.11", "3.14")
    store.record_commits("demo", [NewCommit(sha(0), "c0", ("main",), pythons=pythons)])
    picker = Picker(store, frozenset({"demo"}))
    for _ in pythons:
        finish(store, picker.claim_next(), JobStatus.PASSED)
    store.record_commits("demo", [NewCommit(sha(i), f"c{i}", ("main",), pythons=pythons) for i in range(1, 9)])
    claimed = [picker.claim_next(), picker.claim_next()]
    assert [(j.commit, j.python) for j in claimed] == [(sha(8), "3.11"), (sha(8), "3.14")]
    assert picker.claim_next() is None  # every variant of c1..c7 skipped
    assert {j.status for i in range(1, 8) for j in store.of_commit("demo", sha(i))} == {JobStatus.SKIPPED}
    store.move(claimed[0], JobStatus.PASSED)
    bisector = Bisector(store, frozenset({"demo"}), lambda repo, good, bad: [sha(i) for i in range(1, 9)])
    bisection = bisector.consider(store.move(claimed[1], JobStatus.FAILED))
    assert bisection is not None
    for _ in range(30):
        bisector.advance()
        if not bisector.running():
            break
        job = picker.claim_next()
        if job is not None:
            assert job.python == "3.14" and job.priority == BISECT_PRIORITY
            store.move(job, JobStatus.FAILED if int(job.commit, 16) >= 5 else JobStatus.PASSED)
    ended = bisector.of_job(claimed[1].id)
    assert ended.phase == FOUND and ended.culprit == sha(5)
    assert store.by_commit("demo", sha(5), "3.14").culprit is not None
    assert store.by_commit("demo", sha(5), "3.11").status is JobStatus.SKIPPED  # never re-tested
