"""A commit on several Pythons: its variants in the store, their verdict, the summary file,
the webhooks they make, and the one row `status` prints for them. Real runs:
tests/integration/test_pythons.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.console import _commit_rows
from orchestrator.config import NotifyConfig
from orchestrator.models import JobStatus, TestCounts
from orchestrator.results.files import ResultFiles, result_document
from orchestrator.results.notify import Notifier
from orchestrator.results.variants import overall
from orchestrator.store import NewCommit, Store

SHA = "a" * 40


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def _end(store: Store, job_id: int, status: JobStatus):
    job = store.claim(store.get(job_id))
    return store.move(job, status, tests=TestCounts(total=1, passed=int(status is JobStatus.PASSED)))


def test_a_commit_queues_a_job_per_python_once(store: Store) -> None:
    commit = NewCommit(SHA, "s", ("main",), pythons=("3.11", "3.14"))
    assert len(store.record_commits("demo", [commit])) == 2
    assert store.record_commits("demo", [NewCommit(SHA, "s", ("dev",), pythons=("3.11", "3.14"))]) == []
    jobs = store.of_commit("demo", SHA)
    assert [j.python for j in jobs] == ["3.11", "3.14"] and all(j.branches == ("dev", "main") for j in jobs)
    assert store.find(SHA[:8], python="3.14").id == jobs[1].id
    with pytest.raises(Exception, match="no variant on Python 3.13"):
        store.find(SHA[:8], python="3.13")


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        (("passed", "passed"), "passed"),
        (("passed", "failed"), "failed"),
        (("failed", "error"), "error"),
        (("passed", "running"), "running"),
        (("passed", "queued"), "queued"),
        (("cancelled", "passed"), "cancelled"),
    ],
)
def test_the_commit_is_its_worst_variant(statuses, verdict) -> None:
    assert overall(JobStatus(s) for s in statuses).value == verdict


def test_the_summary_names_each_variant_and_its_folder(store: Store, tmp_path: Path) -> None:
    store.record_commits("demo", [NewCommit(SHA, "s", ("main",), pythons=("3.14", "pypy3.11"))])
    _end(store, 1, JobStatus.FAILED)
    results = ResultFiles(tmp_path / "results")
    results.summarise(store.of_commit("demo", SHA))
    summary = json.loads((tmp_path / "results" / "demo" / SHA / "result.json").read_text())
    assert summary["status"] == "queued"  # pypy3.11 has not run yet
    assert [(v["python"], v["status"], v["folder"]) for v in summary["variants"]] == [
        ("3.14", "failed", "py3.14"),
        ("pypy3.11", "queued", "pypy3.11"),
    ]
    assert results.path(store.get(1), "result.json") == tmp_path / "results" / "demo" / SHA / "py3.14" / "result.json"


@pytest.mark.parametrize("on", ["all", "failures"])
def test_one_commit_finished_when_the_last_variant_ends(store: Store, on: str) -> None:
    notifier = Notifier(NotifyConfig(webhooks=["http://127.0.0.1:9/hook"], on=on), store)
    store.news = notifier.news
    store.record_commits("demo", [NewCommit(SHA, "s", ("main",), pythons=("3.11", "3.14"))])
    _end(store, 1, JobStatus.PASSED)
    assert [d.event for d in store.outbox.of_job(1)] == (["job.finished"] if on == "all" else [])
    _end(store, 2, JobStatus.FAILED)
    events = {d.event: d.body for d in store.outbox.of_job(2)}
    assert set(events) == {"job.finished", "commit.finished"}
    assert events["job.finished"]["job"]["python"] == "3.14"
    assert events["commit.finished"]["commit"]["status"] == "failed"
    assert [v["status"] for v in events["commit.finished"]["commit"]["variants"]] == ["passed", "failed"]


def test_status_shows_a_commit_s_variants_as_one_row(store: Store) -> None:
    store.record_commits("demo", [NewCommit(SHA, "s", ("main",), pythons=("3.11", "3.14"))])
    store.record_commits("demo", [NewCommit("b" * 40, "single", ("main",))])
    _end(store, 1, JobStatus.PASSED)
    _end(store, 2, JobStatus.FAILED)
    documents = [result_document(j) for j in store.list_jobs()]
    rows = _commit_rows(documents)
    assert [(row["commit"][0], row["status"], len(variants)) for row, variants in rows] == [
        ("b", "queued", 0),
        ("a", "failed", 2),
    ]
    assert rows[1][0]["tests"]["total"] == 2


def _tested(store: Store, sha: str, outcomes: dict[str, str], seconds: float = 1.0) -> list[int]:
    """A commit on each Python of ``outcomes``, its one test ending so on each."""
    ids = store.record_commits("demo", [NewCommit(sha, "s", ("main",), pythons=tuple(outcomes))])
    for job_id, (python, outcome) in zip(ids, outcomes.items(), strict=True):
        job = store.claim(store.get(job_id))
        store.tests.record(
            job.id,
            job.attempts,
            "demo",
            [("t::x", outcome, seconds)],
            [("t::x", seconds)] if outcome == "passed" else [],
            python,
        )
        store.move(job, JobStatus.PASSED if outcome == "passed" else JobStatus.FAILED)
    return ids


def test_a_test_failing_on_one_python_only_says_so_and_keeps_a_history_per_python(store: Store) -> None:
    from orchestrator.results.history import History

    _tested(store, "1" * 40, {"3.11": "passed", "3.13": "passed", "3.14": "failed"})
    ids = _tested(store, "2" * 40, {"3.11": "passed", "3.13": "passed", "3.14": "failed"}, seconds=3.0)
    record = History(store).record_of(store.get(ids[2]), "t::x")
    assert record["pythons"]["words"] == "fails on 3.14 only (passes on 3.11, 3.13)"
    assert record["since"] == {"commit": "1" * 40, "commits": 2}  # on 3.14: failing since the first commit
    assert record["recent"] == ["failed"]  # 3.14's runs only, not 3.11's passes
    assert [r.python for r in History(store).runs("demo", "t::x", python="3.13")] == ["3.13", "3.13"]
    assert store.tests.durations("demo", 10, "3.11") == {"t::x": pytest.approx(1.6)}  # its own moving average
    assert store.tests.durations("demo", 10, "3.14") == {}  # never passed there


def test_flakiness_is_ranked_per_python(store: Store) -> None:
    from orchestrator.results.history import History

    for i, outcome in enumerate(["passed", "failed", "passed", "failed"]):
        _tested(store, f"{i + 3}" * 40, {"3.11": "passed", "3.14": outcome})
    ranked = History(store).flaky("demo")
    assert [(r["python"], r["flips"], r["runs"]) for r in ranked] == [("3.14", 3, 4)]  # 3.11 never flipped
