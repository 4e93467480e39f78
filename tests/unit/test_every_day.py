"""An operator's controls, on a real store: a paused repository starts nothing and survives
a reopening; a quarantine forgives only a verdict of the tests, and expires; a re-run of the
failed tests plans from the history and counts with the suite's other outcomes; a schedule
runs once per slot on an injected clock, a missed one once, and never coalesces a push
away; the search index numbers a long log's lines across its gap and refuses a query it
cannot parse with a UsageError (a 422)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.config import QuarantineConfig, load_config
from orchestrator.dispatch.coalesce import Picker
from orchestrator.errors import Conflict, UnknownCommit, UsageError
from orchestrator.models import MANUAL, PUSH, SCHEDULE, JobStatus, TestCounts, transition, utcnow
from orchestrator.observe.schedule import Scheduler
from orchestrator.results import quarantine, rerun, search
from orchestrator.results.report import Report
from orchestrator.store import NewCommit, Store
from tests.helpers import write_config


@pytest.fixture
def store(store_location):
    s = Store(store_location)
    yield s
    s.close()


def _ended(store: Store, job_id: int, status: JobStatus, **changes: object):
    job = store.claim(store.get(job_id))
    return store.apply(job, transition(job, status, utcnow(), **changes))


# -- pause ----------------------------------------------------------------------------------


def test_a_paused_repository_starts_nothing_and_stays_paused_when_reopened(store_location) -> None:
    path = store_location
    store = Store(path)
    store.record_commits("demo", [NewCommit("a" * 40, "", ("main",))])
    store.record_commits("other", [NewCommit("b" * 40, "", ("main",))])
    waiting = store.get(1)
    store.pauses.pause("demo", "database migration", "cli")
    assert store.next_queued().repository == "other"  # the other repository goes on
    assert store.claim(waiting) is None  # a claim in flight is refused too (a warm start's)
    store.claim(store.get(2))
    assert not store.has_queued()  # nothing that may start: `run --once` ends
    store.close()
    store = Store(path)  # a restart
    paused = store.pauses.of("demo")
    assert paused is not None and paused.reason == "database migration" and paused.since is not None
    assert store.get(1).status is JobStatus.QUEUED and store.next_queued() is None
    assert store.pauses.resume("demo") and not store.pauses.resume("demo")
    assert store.claim_next().id == 1
    store.close()


# -- quarantine -----------------------------------------------------------------------------

REPORT = b"""<testsuite tests="3" failures="1" errors="1">
<testcase classname="tests.test_a" name="test_flaky"><failure message="boom">x</failure></testcase>
<testcase classname="tests.test_a" name="test_error"><error message="setup">y</error></testcase>
<testcase classname="tests.test_a" name="test_ok"/>
</testsuite>"""


def _failed(store: Store):
    store.record_commits("demo", [NewCommit("c" * 40, "", ("main",))])
    job = store.claim(store.get(1))
    return transition(job, JobStatus.FAILED, utcnow(), exit_code=1, tests=TestCounts(3, 1, 1, 1, 0))


def test_a_job_whose_only_failures_are_quarantined_passes_and_says_so(store: Store) -> None:
    job = _failed(store)
    both = frozenset({"tests.test_a::test_flaky", "tests.test_a::test_error"})
    forgiven = quarantine.judged(job, Report(REPORT), 0, both)
    assert forgiven.status is JobStatus.PASSED and forgiven.quarantined == tuple(sorted(both))
    assert forgiven.message.startswith("passed with 2 quarantined tests failing")
    assert forgiven.tests.failed == 1 and forgiven.tests.errors == 1  # the counts keep them
    one = quarantine.judged(job, Report(REPORT), 0, frozenset({"tests.test_a::test_flaky"}))
    assert one.status is JobStatus.FAILED and one.quarantined == ("tests.test_a::test_flaky",)
    timed_out = dataclasses.replace(job, status=JobStatus.TIMED_OUT)
    assert quarantine.judged(timed_out, Report(REPORT), 0, both).status is JobStatus.TIMED_OUT


def test_quarantine_entries_need_a_known_test_and_expire(store: Store) -> None:
    config = QuarantineConfig()
    with pytest.raises(UnknownCommit, match="no test 'tests.nope::x' in the history of demo"):
        quarantine.add(store, config, "demo", "tests.nope::x", "flaky", "cli")
    store.tests.record(1, 1, "demo", [("tests.test_a::test_flaky", "failed", 0.1)], [])
    with pytest.raises(UsageError, match="needs a reason"):
        quarantine.add(store, config, "demo", "tests.test_a::test_flaky", "  ", "cli")
    entry = quarantine.add(store, config, "demo", "tests.test_a::test_flaky", "flaky on CI", "cli")
    assert timedelta(days=13.9) < entry.until - utcnow() <= timedelta(days=14)  # the default, 14 days
    assert store.quarantine.tests("demo") == {"tests.test_a::test_flaky"}
    assert store.quarantine.tests("demo", now=utcnow() + timedelta(days=15)) == frozenset()  # expired on its own
    soon = utcnow() + timedelta(hours=1)
    quarantine.add(store, config, "demo", "tests.test_a::test_flaky", "until the fix", "api", until=soon)
    assert store.quarantine.active("demo")[0].until == soon and store.quarantine.active("demo")[0].added_by == "api"
    assert store.quarantine.remove("demo", "tests.test_a::test_flaky")
    assert not store.quarantine.remove("demo", "tests.test_a::test_flaky")


def test_automatic_quarantine_is_off_by_default_and_never_rewrites_an_entry(store: Store) -> None:
    job = _failed(store)
    store.tests.record(job.id, job.attempts, "demo", [("tests.test_a::test_flaky", "failed", 0.1)], [])
    ranked = [{"test_id": "tests.test_a::test_flaky", "runs": 10, "flip_rate": 0.5}]
    assert quarantine.automatic(store, QuarantineConfig(), job, ranked) == []
    auto = QuarantineConfig(auto=True, flip_rate=0.4)
    told = []
    store.quarantine.news = lambda entry, job_id, attempt: told.append((entry.test_id, job_id)) or []
    made = quarantine.automatic(store, auto, job, ranked)
    assert [e.test_id for e in made] == ["tests.test_a::test_flaky"] and made[0].added_by == "auto"
    assert "flip rate 0.50 over its last 10 runs" in made[0].reason and told == [("tests.test_a::test_flaky", 1)]
    assert quarantine.automatic(store, auto, job, ranked) == []  # in force already: left as it is
    calm = [{"test_id": "tests.test_a::test_flaky", "runs": 10, "flip_rate": 0.2}]
    store.quarantine.remove("demo", "tests.test_a::test_flaky")
    assert quarantine.automatic(store, auto, job, calm) == []


# -- re-run only what failed ----------------------------------------------------------------


def test_a_rerun_plans_the_failing_tests_and_counts_with_the_suite(store: Store) -> None:
    job = _failed(store)
    job = store.apply(store.get(1), job)
    store.tests.record(
        1,
        1,
        "demo",
        [("t::flaky", "failed", 0.1), ("t::error", "error", 0.1), ("t::ok", "passed", 0.1)],
        [("t::ok", 0.1)],
    )
    plan = rerun.plan(store, job, command=False)
    assert plan == {
        "of_attempt": 1,
        "tests": ["t::error", "t::flaky"],
        "counts": {"total": 3, "passed": 1, "failed": 1, "errors": 1, "skipped": 0},
        "shards": 1,
    }
    with pytest.raises(Conflict, match="runs a command"):
        rerun.plan(store, job, command=True)
    queued = store.move(job, JobStatus.QUEUED, rerun=plan, trigger=MANUAL)
    running = store.claim(queued)
    again = transition(running, JobStatus.FAILED, utcnow(), exit_code=1, tests=TestCounts(2, 1, 1, 0, 0))
    done = rerun.combined(again)
    assert done.tests == TestCounts(total=3, passed=2, failed=1, errors=0, skipped=0)
    assert done.message == "failed again: 1 of the 2 failed tests of attempt 1 re-run"
    passed = rerun.combined(transition(running, JobStatus.PASSED, utcnow(), exit_code=0, tests=TestCounts(2, 2)))
    assert passed.tests == TestCounts(total=3, passed=3) and "passed when re-run" in passed.message
    with pytest.raises(Conflict, match="only a failed job's tests re-run alone"):
        rerun.plan(store, store.apply(running, transition(running, JobStatus.PASSED, utcnow())), command=False)


def test_a_split_rerun_runs_on_as_many_shards_as_failed(store: Store) -> None:
    job = _failed(store)
    shards = (
        {"index": 1, "status": "failed", "tests": {"failed": 1, "errors": 0}},
        {"index": 2, "status": "passed", "tests": {"failed": 0, "errors": 0}},
        {"index": 3, "status": "failed", "tests": {"failed": 2, "errors": 0}},
    )
    job = store.apply(store.get(1), dataclasses.replace(job, shards=shards))
    store.tests.record(1, 1, "demo", [(f"t::{n}", "failed", 0.1) for n in "abc"], [])
    assert rerun.plan(store, job, command=False)["shards"] == 2


# -- schedules -------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_schedule_runs_each_slot_once_and_a_missed_one_once(tmp_path: Path, store: Store) -> None:
    config = load_config(write_config(tmp_path, {"demo": tmp_path}, repository={"schedule": "0 3 * * *"}))
    head = "e" * 40
    store.record_commits("demo", [NewCommit(head, "", ("main", "dev"))], {"main": head, "dev": head})
    _ended(store, 1, JobStatus.PASSED)
    zone = datetime.now().astimezone().tzinfo
    clock = Clock(datetime(2026, 12, 1, 2, 59, tzinfo=zone))
    scheduler = Scheduler(store, config.repositories, clock=clock)
    assert scheduler.tick() == 0  # first sight: from now on, nothing for a slot before it was set
    clock.now = datetime(2026, 12, 1, 3, 0, 30, tzinfo=zone)
    assert scheduler.tick() == 1  # one job, though two branches have that head
    job = store.get(1)
    assert job.status is JobStatus.QUEUED and job.trigger == SCHEDULE and job.attempts == 1
    assert scheduler.tick() == 0  # the same slot
    _ended(store, 1, JobStatus.PASSED)
    clock.now = datetime(2026, 12, 4, 9, 0, tzinfo=zone)  # three slots missed while down
    restarted = Scheduler(store, config.repositories, clock=clock)
    assert restarted.tick() == 1 and restarted.tick() == 0
    assert store.get(1).attempts == 2


def test_a_scheduled_run_never_coalesces_a_push_away(store: Store) -> None:
    old, head = "1" * 40, "2" * 40
    store.record_commits("demo", [NewCommit(head, "", ("main",))], {"main": head})
    _ended(store, 1, JobStatus.PASSED)
    store.record_commits("demo", [NewCommit(old, "", ("main",))])  # a push, still queued
    store.move(store.get(1), JobStatus.QUEUED, trigger=SCHEDULE)  # the head, re-queued by its schedule
    picker = Picker(store, frozenset({"demo"}))
    first = picker.claim_next()
    second = picker.claim_next()
    assert {first.id, second.id} == {1, 2}  # both run: nothing ended skipped
    assert store.get(2).trigger == PUSH and store.count(JobStatus.SKIPPED) == 0


def test_a_bad_cron_expression_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError

    path = write_config(tmp_path, {"demo": tmp_path}, repository={"schedule": "every night"})
    with pytest.raises(ConfigError, match=r"repositories\[0\]\.schedule: .*'every night' is not a cron expression"):
        load_config(path)


# -- search ---------------------------------------------------------------------------------


def test_a_long_log_is_indexed_at_both_ends_with_its_own_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 100_001)))
    lines, read = search.log_lines(log, 10_000)
    assert lines[0] == (1, "line 1") and lines[-1] == (100_000, "line 100000")
    numbers = [n for n, _ in lines]
    assert all(text == f"line {n}" for n, text in lines)  # the numbers are the log's own, past the gap
    assert numbers == sorted(numbers) and len(lines) < 3000 and read <= 20_000


def test_search_finds_logs_tests_and_reasons_and_refuses_what_fts5_cannot_parse(tmp_path: Path, store: Store) -> None:
    store.record_commits("demo", [NewCommit("f" * 40, "", ("main",))])
    job = _ended(store, 1, JobStatus.FAILED, message="1 failure")
    log = tmp_path / "output.log"
    log.write_text("collected 3 items\n\nsetting up\nConnectionResetError: peer went away\nteardown\nend\n")
    search.index(store, job, log, Report(REPORT), 1)
    hit = search.search(store, "ConnectionResetError")[0]
    assert hit["line"] == 4 and hit["link"] == "/jobs/1/log#L4" and hit["commit"] == "f" * 40
    assert [n["line"] for n in hit["before"]] == [1, 3] and [n["line"] for n in hit["after"]] == [5, 6]
    assert search.search(store, "boom")[0]["kind"] == "test"  # a failure message, with its test's id
    assert search.search(store, "test_flaky")[0]["text"].startswith("tests.test_a::test_flaky")
    assert search.search(store, '"peer went away"', repository="other") == []
    assert search.search(store, '"peer went away"', repository="demo")[0]["line"] == 4
    assert search.search(store, "demo") == []  # the repository's own name is not in the text
    assert search.search(store, "peer", since=(utcnow() + timedelta(days=1)).isoformat()) == []
    if store.dialect == "sqlite":  # FTS5's syntax; PostgreSQL reads any text as a web search
        with pytest.raises(UsageError, match="search query 'ConnectionResetError: peer'"):
            search.search(store, "ConnectionResetError: peer")
    else:
        assert search.search(store, "ConnectionResetError: peer")[0]["line"] == 4
    search.index(store, dataclasses.replace(job, attempts=2), log, Report(None), 1)  # a new attempt replaces
    assert len(search.search(store, "ConnectionResetError")) == 1 and store.search.indexed(1)[0] == 2


# -- charts -----------------------------------------------------------------------------------


def test_a_chart_has_round_ticks_and_labels_that_never_overlap() -> None:
    from orchestrator.web.charts import Bar, bar_chart

    bars = [Bar(f"run {n}: {n / 10} s", n / 10, "passed", tick=f"{n:07x}") for n in range(1, 61)]
    svg = bar_chart(bars, "durations", width=720)
    ticks = [t.split(">")[1].split("<")[0] for t in svg.split('class="tick"')[1:]]
    assert ticks == ["0 s", "2.5 s", "5 s", "7.5 s", "10 s"]  # 6 s rounded up to 10, in 4 round steps
    labels = [float(t.split('x="')[1].split('"')[0]) for t in svg.split('class="label"')[1:]]
    assert 5 <= len(labels) < 60 and min(b - a for a, b in zip(labels, labels[1:], strict=False)) >= 7 * 6.2
    assert svg.count("<title>") == 60  # every bar's value on hover
