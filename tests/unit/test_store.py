import threading
from pathlib import Path

import pytest

from orchestrator.errors import InvalidTransition, UnknownCommit, UsageError
from orchestrator.models import JobStatus, transition, utcnow
from orchestrator.store import NewCommit, Store


@pytest.fixture
def store(store_location):
    s = Store(store_location)
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


def test_a_state_dir_of_version_0_1_is_brought_up_to_date(tmp_path: Path) -> None:
    """The job table as 0.1.0 made it, with a job in it: opened, every field's column is
    added, the schema's version is set, and the job reads and saves as any other."""
    import sqlite3

    from orchestrator.store.fields import FIELDS
    from orchestrator.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, repository TEXT NOT NULL,"
        " commit_sha TEXT NOT NULL, branches TEXT NOT NULL, subject TEXT NOT NULL, status TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, queued_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
        " exit_code INTEGER, message TEXT, container_id TEXT, image_tag TEXT, image_id TEXT, tests TEXT,"
        " log_truncated INTEGER NOT NULL DEFAULT 0, UNIQUE (repository, commit_sha))"
    )
    db.execute(
        "INSERT INTO jobs (repository, commit_sha, branches, subject, status, queued_at)"
        " VALUES ('demo', 'abcd1234', '[\"main\"]', 'old', 'queued', '2026-01-01T00:00:00Z')"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        job = store.claim_next()
        assert job is not None and job.commit == "abcd1234" and job.flaky == () and job.shards == ()
        assert store.cancel_requested(job.id) is False
        store.request_cancel(job)
        assert store.cancel_requested(job.id) is True
        assert job.python == ""  # its one Python, as before variants
        variants = store.record_commits("demo", [NewCommit("abcd1234", "old", ("main",), pythons=("3.13", "3.14"))])
        assert len(variants) == 2 and [store.get(i).python for i in variants] == ["3.13", "3.14"]
        assert store.get(job.id).status is JobStatus.RUNNING  # kept, with its id, through the table's renewal
    finally:
        store.close()
    db = sqlite3.connect(path)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    assert {f.column for f in FIELDS} | {"cancel_requested"} <= columns
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


def test_a_job_field_added_later_gets_its_column_on_a_store_that_exists(store_location, monkeypatch) -> None:
    """A store made before a field was added to FIELDS (store/jobs.py) gains its column when
    opened, on both databases: without it every write of a job would fail there."""
    import orchestrator.store as store_module

    old = Store(store_location)
    old.record_commits("demo", [NewCommit("a" * 40, "before", ("main",))])
    old.close()
    added = ("lint_warnings", "INTEGER NOT NULL DEFAULT 0")
    monkeypatch.setattr(store_module, "ALL_COLUMNS", [*store_module.ALL_COLUMNS, added])
    reopened = Store(store_location)
    try:
        with reopened._database.write() as db:
            assert db.execute("SELECT lint_warnings FROM jobs").fetchall() == [(0,)]  # the old job, the default
        reopened.record_commits("demo", [NewCommit("b" * 40, "after", ("main",))])
        assert reopened.claim_next().commit == "a" * 40
    finally:
        reopened.close()
