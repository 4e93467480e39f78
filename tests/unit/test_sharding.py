"""Splitting a suite: the runner image's split (longest first), how many containers the
planner asks for, and how the shards' reports become one. The real runs are in
tests/integration/test_shards.py."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.backends.base import LABEL_ATTEMPT, LABEL_JOB, LABEL_SHARD, ContainerState, Phase
from orchestrator.config import load_config
from orchestrator.models import Job, JobStatus, transition, utcnow
from orchestrator.results import history
from orchestrator.results.report import Report, merge
from orchestrator.run.recovery import Discard, Requeue, plan
from orchestrator.run.sharding import Planner, mismatch, worst
from orchestrator.store import NewCommit, Store
from runner_image import orchestrator_shard as plugin
from tests.helpers import write_config


def test_test_ids_are_what_the_junit_report_calls_them() -> None:
    assert plugin.test_id("tests/test_a.py::test_x") == "tests.test_a::test_x"
    assert plugin.test_id("tests/sub/test_b.py::TestK::test_y[1-a/b]") == "tests.sub.test_b.TestK::test_y[1-a/b]"


def test_the_split_is_longest_first_balanced_and_a_partition_whatever_the_order() -> None:
    rng = random.Random(7)
    nodeids = [f"tests/test_{f}.py::test_{i}" for f in "abcde" for i in range(20)]
    durations = {plugin.test_id(n): rng.choice([0.01, 0.1, 0.5, 2.0, 7.0]) for n in nodeids}
    groups = plugin.split(nodeids, 4, durations)
    assert sorted(itertools.chain(*groups)) == sorted(nodeids)  # none missed, none twice
    loads = [sum(durations[plugin.test_id(n)] for n in g) for g in groups]
    assert max(loads) - min(loads) <= max(durations.values())  # LPT's bound
    shuffled = nodeids[:]
    rng.shuffle(shuffled)
    assert [set(g) for g in plugin.split(shuffled, 4, durations)] == [set(g) for g in groups]


def test_unknown_tests_weigh_the_median_and_no_history_splits_by_file() -> None:
    nodeids = ["t/test_a.py::test_1", "t/test_a.py::test_2", "t/test_b.py::test_3", "t/test_c.py::test_new"]
    known = {"t.test_a::test_1": 1.0, "t.test_a::test_2": 1.0, "t.test_b::test_3": 3.0}
    groups = plugin.split(nodeids, 2, known)
    assert {frozenset(g) for g in groups} == {
        frozenset(["t/test_b.py::test_3"]),
        frozenset(["t/test_a.py::test_1", "t/test_a.py::test_2", "t/test_c.py::test_new"]),
    }
    by_file = plugin.split(nodeids, 3, {})
    assert {frozenset(g) for g in by_file} == {
        frozenset(["t/test_a.py::test_1", "t/test_a.py::test_2"]),
        frozenset(["t/test_b.py::test_3"]),
        frozenset(["t/test_c.py::test_new"]),
    }


def test_a_class_or_a_module_is_kept_together_when_asked() -> None:
    nodeids = [
        "t/test_a.py::TestK::test_1",
        "t/test_a.py::TestK::test_2[x]",
        "t/test_a.py::test_3",
        "t/test_b.py::test_4",
    ]
    durations = {plugin.test_id(n): 1.0 for n in nodeids}
    by_class = plugin.split(nodeids, 4, durations, "class")
    assert ["t/test_a.py::TestK::test_1", "t/test_a.py::TestK::test_2[x]"] in by_class
    by_module = plugin.split(nodeids, 4, durations, "module")
    assert ["t/test_a.py::TestK::test_1", "t/test_a.py::TestK::test_2[x]", "t/test_a.py::test_3"] in by_module
    assert [] in by_module  # fewer units than shards: a shard may have nothing to do


# -- the planner ---------------------------------------------------------------------


def _report(cases: dict[str, float]) -> bytes:
    body = "".join(
        f'<testcase classname="tests.test_a" name="{name}" time="{seconds}"/>' for name, seconds in cases.items()
    )
    return f'<testsuites><testsuite tests="{len(cases)}">{body}</testsuite></testsuites>'.encode()


@pytest.fixture
def planned(tmp_path: Path):
    def make(shards: object, parallelism: int = 4, runs: list[tuple[dict[str, float], float]] = ()):
        directory = tmp_path / str(len(made))
        directory.mkdir()
        config = load_config(
            write_config(
                directory, {"demo": tmp_path}, runner={"parallelism": parallelism}, repository={"shards": shards}
            )
        )
        store = Store(config.db_path)
        for i, (cases, wall) in enumerate(runs):
            sha = f"{i + 1:040x}"
            store.record_commits("demo", [NewCommit(sha, "s", ("main",))])
            job = store.claim_next()
            done = transition(job, JobStatus.PASSED, utcnow(), finished_at=job.started_at + timedelta(seconds=wall))
            done = store.apply(job, done)
            history.record(store, done, Report(_report(cases)))
        made.append(store)
        return Planner(config.repositories, config.runner.parallelism, store)

    made: list[Store] = []
    yield make
    for store in made:
        store.close()


def test_a_fixed_count_is_bounded_by_parallelism_and_a_suite_shorter_than_a_container_is_not_split(planned) -> None:
    assert planned(8, parallelism=4).count("demo", free=4) == 4  # no history: as asked, bounded
    assert planned(3, runs=[({"a": 20.0, "b": 20.0}, 43.0)]).count("demo", free=1) == 3
    short = planned(3, runs=[({"a": 0.5, "b": 0.5}, 4.0)])  # 1 s of tests, 3 s per container
    assert short.overhead("demo") == pytest.approx(3.0, abs=0.01) and short.count("demo", free=4) == 1


def test_auto_aims_at_a_minute_a_shard_within_the_free_slots(planned) -> None:
    assert planned("auto").count("demo", free=4) == 1  # nothing recorded: not split
    long = planned("auto", runs=[({f"t{i}": 30.0 for i in range(5)}, 152.0)])  # 150 s of tests
    assert long.count("demo", free=4) == 3 and long.count("demo", free=2) == 2
    assert planned("auto", runs=[({"a": 40.0}, 42.0)]).count("demo", free=4) == 1


def test_durations_are_a_moving_average_of_passing_runs(planned) -> None:
    planner = planned(2, runs=[({"a": 1.0, "b": 2.0}, 5.0), ({"a": 2.0, "b": 2.0}, 6.0)])
    durations = planner.plan("demo", 2).durations
    assert durations == {"tests.test_a::a": pytest.approx(1.3), "tests.test_a::b": pytest.approx(2.0)}


# -- one result from the shards -------------------------------------------------------


def _shard_report(index: int, names: list[str], failed: str | None = None, collected: str = "3:abc") -> bytes:
    failure = '<failure message="x"/>'
    cases = "".join(
        f'<testcase classname="tests.t" name="{n}" time="0.1">{failure if n == failed else ""}</testcase>'
        for n in names
    )
    return (
        f'<testsuites><testsuite name="pytest" tests="{len(names)}" failures="{int(failed in names)}">'
        f'<properties><property name="orchestrator-shard" value="{index}/2"/>'
        f'<property name="orchestrator-collected" value="{collected}"/></properties>{cases}</testsuite>'
        f"</testsuites>"
    ).encode()


def test_the_merged_report_counts_every_shard_and_the_worst_status_wins() -> None:
    merged = merge([Report(_shard_report(1, ["a", "b"])), Report(None), Report(_shard_report(2, ["c"], failed="c"))])
    counts = merged.counts()
    assert (counts.total, counts.passed, counts.failed) == (3, 2, 1)
    assert worst([JobStatus.PASSED, JobStatus.FAILED, JobStatus.PASSED]) is JobStatus.FAILED
    assert worst([JobStatus.FAILED, JobStatus.ERROR, JobStatus.TIMED_OUT]) is JobStatus.ERROR
    assert not merge([Report(None), Report(b"not xml")])


def test_shards_that_collected_different_tests_are_told() -> None:
    assert mismatch([Report(_shard_report(1, ["a"])), Report(_shard_report(2, ["b", "c"]))]) is None
    why = mismatch([Report(_shard_report(1, ["a"])), Report(_shard_report(2, ["b"], collected="4:def"))])
    assert why is not None and "3 vs 4" in why and "stable ids" in why


def test_recovery_never_re_attaches_a_split_attempt() -> None:
    job = Job(
        id=1,
        repository="demo",
        commit="1" * 40,
        branches=("main",),
        subject="",
        status=JobStatus.RUNNING,
        queued_at=utcnow(),
        attempts=1,
        shards=({"index": 1, "status": "running"},),
    )
    boxes = [
        ContainerState(f"s{k}", Phase.RUNNING, {LABEL_JOB: "1", LABEL_ATTEMPT: "1", LABEL_SHARD: f"{k}/2"})
        for k in (1, 2)
    ]
    decisions = plan([job], boxes, released=lambda job, state: True, completed=lambda job: None)
    assert sorted(d.container.id for d in decisions if isinstance(d, Discard)) == ["s1", "s2"]
    assert [d.reason for d in decisions if isinstance(d, Requeue)] == [
        "the dispatcher stopped while its shards ran: a split suite runs again whole"
    ]
    assert dataclasses.replace(job, shards=()).shards == ()


def test_more_shards_than_slots_is_said_once_at_start(planned, caplog) -> None:
    with caplog.at_level("WARNING", logger="orchestrator.run.sharding"):
        planner = planned(8, parallelism=4)
    assert planner.count("demo", free=4) == 4
    assert "demo: shards 8 is more than runner.parallelism 4: its suite is split 4 ways" in caplog.text
