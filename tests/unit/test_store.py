import threading
from pathlib import Path

import pytest

from orchestrator.errors import InvalidTransition, UnknownCommit, UsageError
from orchestrator.models import JobStatus, transition, utcnow
from orchestrator.store import NewCommit, Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "orchestrator.db")
    yield s
    s.close()


def test_commit_queued_once_and_gains_branches(store: Store) -> None:
    sha = "c" * 40
    assert store.record_commits("demo", [NewCommit(sha, "subj", ("main",))]) == [1]
    assert store.record_commits("demo", [NewCommit(sha, "subj", ("dev",))]) == []
    job = store.get(1)
    assert job.branches == ("dev", "main") and job.status is JobStatus.QUEUED
    assert job.queued_at is not None


def test_heads_saved_with_jobs(store: Store) -> None:
    assert store.heads("demo") is None
    store.record_commits("demo", [], {"main": "a" * 40})
    assert store.heads("demo") == {"main": "a" * 40}
    store.record_commits("demo", [], {})
    assert store.heads("demo") == {}


def test_claim_is_oldest_first_and_exclusive(store: Store) -> None:
    store.record_commits("demo", [NewCommit(f"{i:040x}", "", ()) for i in range(20)])
    claimed: list[int] = []

    def worker() -> None:
        while (job := store.claim_next()) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(claimed) == list(range(1, 21))  # each exactly once
    assert store.count(JobStatus.RUNNING) == 20


def test_stale_writer_loses(store: Store) -> None:
    store.record_commits("demo", [NewCommit("d" * 40, "", ())])
    job = store.claim_next()
    store.apply(job, transition(job, JobStatus.PASSED, utcnow(), exit_code=0))
    with pytest.raises(InvalidTransition):
        store.apply(job, transition(job, JobStatus.FAILED, utcnow(), exit_code=1))
    assert store.get(job.id).status is JobStatus.PASSED


def test_a_branch_added_while_running_is_kept(store: Store) -> None:
    store.record_commits("demo", [NewCommit("f" * 40, "", ("main",))])
    job = store.claim_next()
    store.record_commits("demo", [NewCommit("f" * 40, "", ("feature",))])  # pushed meanwhile
    store.apply(job, transition(job, JobStatus.PASSED, utcnow(), exit_code=0))
    assert store.get(job.id).branches == ("feature", "main")


def test_find_by_prefix(store: Store) -> None:
    store.record_commits("demo", [NewCommit("abcd1" + "0" * 35, "", ()), NewCommit("abcd2" + "0" * 35, "", ())])
    assert store.find("ABCD1").commit.startswith("abcd1")
    with pytest.raises(UnknownCommit, match="ambiguous"):
        store.find("abcd")
    with pytest.raises(UnknownCommit):
        store.find("ffff")
    with pytest.raises(UsageError):
        store.find("../../etc/passwd")


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = Store(path)
    first.record_commits("demo", [NewCommit("e" * 40, "", ("main",))], {"main": "e" * 40})
    instance = first.instance_id()
    first.close()
    again = Store(path)
    assert again.get(1).commit == "e" * 40 and again.instance_id() == instance
    again.close()
