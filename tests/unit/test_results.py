import io
import json
import os
import threading
from pathlib import Path

import pytest

from orchestrator.models import Job, JobStatus, TestCounts, transition, utcnow
from orchestrator.results import history, verdict
from orchestrator.results.files import ResultFiles
from orchestrator.results.logcapture import CappedLog
from orchestrator.results.report import Report
from orchestrator.results.verdict import cause, classify
from orchestrator.workspace import read_regular_file, remove_tree

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="7" time="0.1">
<testcase classname="t" name="a"/></testsuite></testsuites>"""


def test_junit_counts() -> None:
    assert Report(JUNIT).counts() == TestCounts(total=7, passed=3, failed=2, errors=1, skipped=1)
    single = b'<testsuite tests="2" failures="0" errors="0" skipped="0"/>'
    assert Report(single).counts() == TestCounts(total=2, passed=2)


@pytest.mark.parametrize("data", [b"", b"not xml", b"<html/>", b'<testsuite tests="many"/>'])
def test_junit_garbage_is_no_counts(data: bytes) -> None:
    assert Report(data).counts() is None


def test_junit_billion_laughs_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(8))
        + b']><testsuite tests="&i;"/>'
    )
    assert Report(bomb).counts() is None


def test_junit_read_refuses_links_and_oversize(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(JUNIT)
    link = tmp_path / "junit.xml"
    link.symlink_to(secret)
    assert read_regular_file(link, 1 << 20) is None
    big = tmp_path / "big.xml"
    big.write_bytes(b"x" * 2048)
    assert read_regular_file(big, 1024) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_regular_file(tmp_path / "fifo", 1024) is None
    assert read_regular_file(secret, 1 << 20) == JUNIT


@pytest.mark.parametrize(
    "exit_code, oom, timed_out, status, words",
    [
        (0, False, False, JobStatus.PASSED, None),
        (1, False, False, JobStatus.FAILED, None),
        (2, False, False, JobStatus.ERROR, "collection error"),
        (3, False, False, JobStatus.ERROR, "internal error"),
        (4, False, False, JobStatus.ERROR, "usage error"),
        (5, False, False, JobStatus.ERROR, "no tests collected"),
        (100, False, False, JobStatus.ERROR, "tests directory missing"),
        (105, False, False, JobStatus.ERROR, "the task had a network interface"),
        (137, True, False, JobStatus.ERROR, "out of memory"),
        (137, False, True, JobStatus.TIMED_OUT, "timeout"),
        (137, False, False, JobStatus.ERROR, "killed by SIGKILL"),
        (143, False, False, JobStatus.ERROR, "SIGTERM"),
        (42, False, False, JobStatus.ERROR, "status 42"),
    ],
)
def test_status_from_outcome(exit_code, oom, timed_out, status, words) -> None:
    got, message = classify(exit_code, oom_killed=oom, timed_out=timed_out, timeout=10, memory="256m")
    assert got is status
    assert (message is None) if words is None else (words in message)


def test_capped_log_keeps_head_and_tail(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "spool", 1000)
    for i in range(1000):
        log.write(f"line {i:04d}\n".encode())
    out = io.BytesIO()
    log.write_to(out)
    log.close()
    text = out.getvalue().decode()
    assert log.truncated and text.startswith("line 0000\n") and text.endswith("line 0999\n")
    assert "log truncated" in text and len(out.getvalue()) < 1100
    assert not (tmp_path / "spool").exists()


def test_capped_log_small_output_is_whole(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "spool", 1000)
    log.write(b"hello\n")
    out = io.BytesIO()
    log.write_to(out)
    assert out.getvalue() == b"hello\n" and not log.truncated


def _job(attempts: int = 1) -> Job:
    job = Job(
        id=3,
        repository="demo",
        commit="b" * 40,
        branches=("main",),
        subject="s",
        status=JobStatus.QUEUED,
        queued_at=utcnow(),
        attempts=attempts - 1,
    )
    running = transition(job, JobStatus.RUNNING, utcnow())
    return transition(running, JobStatus.FAILED, utcnow(), exit_code=1, tests=TestCounts(2, 1, 1, 0, 0))


def test_result_files_written_and_older_attempt_archived(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    first = files.write(_job(1), lambda fh: fh.write(b"first log\n"), JUNIT)
    doc = json.loads((first / "result.json").read_text())
    assert doc["status"] == "failed" and doc["commit"] == "b" * 40 and doc["attempts"] == 1
    assert doc["tests"] == {"total": 2, "passed": 1, "failed": 1, "errors": 0, "skipped": 0, "quarantined": 0}
    assert set(doc) >= {
        "repository",
        "branches",
        "subject",
        "exit_code",
        "queued_at",
        "started_at",
        "finished_at",
        "duration_s",
        "image",
        "container",
        "log_truncated",
        "message",
    }
    assert oct((first / "result.json").stat().st_mode & 0o777) == "0o644"
    files.write(_job(2), lambda fh: fh.write(b"second log\n"), None)
    assert (first / "output.log").read_bytes() == b"second log\n"
    assert not (first / "junit.xml").exists()
    assert (first / "attempts" / "1" / "output.log").read_bytes() == b"first log\n"
    assert (first / "attempts" / "1" / "junit.xml").read_bytes() == JUNIT
    assert not [p for p in first.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_no_half_file(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)

    def explode(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.write(_job(1), explode, None)
    directory = files.directory("demo", "b" * 40)
    assert list(directory.iterdir()) == []


def test_a_write_cut_short_by_a_crash_leaves_no_litter_after_the_next(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    directory = files.directory("demo", "b" * 40)
    directory.mkdir(parents=True)
    (directory / ".result.json.abc123.tmp").write_bytes(b'{"half')  # SIGKILL mid-write
    files.write(_job(1), lambda fh: fh.write(b"log\n"), None)
    assert sorted(p.name for p in directory.iterdir()) == ["output.log", "result.json"]


FLOOD = [f"line {i:05d} ".encode() + b"x" * 40 + b"\n" for i in range(4000)]  # 4000 lines of 51 bytes


def _saved(log: CappedLog) -> bytes:
    out = io.BytesIO()
    log.write_to(out)
    log.close()
    return out.getvalue()


def test_a_copy_that_is_the_whole_output_keeps_the_count_exact(tmp_path: Path) -> None:
    whole = CappedLog(tmp_path / "a", 10_000)
    for line in FLOOD:
        whole.write(line)
    expected = _saved(whole)
    cut = CappedLog(tmp_path / "b", 10_000)
    for line in FLOOD[:300]:
        cut.write(line)
    cut.restart()  # the stream was cut: the engine, which kept everything, is read again
    for line in FLOOD:
        cut.write(line)
    assert _saved(cut) == expected and b"bytes omitted]" in expected


def test_a_rotated_copy_keeps_the_head_and_an_honest_count(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "spool", 10_000)
    for line in FLOOD[:1000]:
        log.write(line)
    log.restart()  # the engine kept only the last 1000 lines
    for line in FLOOD[3000:]:
        log.write(line)
    saved = _saved(log)
    assert saved.startswith(FLOOD[0]) and saved.endswith(FLOOD[-1])
    marker = next(line for line in saved.split(b"\n") if line.startswith(b"[orchestrator"))
    at_least = int(marker.split(b"at least ")[1].split(b" ")[0])
    kept = len(saved) - len(marker) - 2
    assert 0 < at_least <= 4000 * 51 - kept  # a lower bound of what is really missing


def test_a_successor_keeps_the_head_a_crashed_process_captured(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("orchestrator.results.logcapture._NOTE_EVERY", 1024)  # the count is noted every KiB
    first = CappedLog(tmp_path / "spool", 10_000)
    for line in FLOOD[:2500]:
        first.write(line)
    first._spool.flush()  # then SIGKILL: nothing more is written, the spool and its note stay
    successor = CappedLog(tmp_path / "spool", 10_000, resume=True)
    for line in FLOOD[3500:]:  # what the engine still has
        successor.write(line)
    saved = _saved(successor)
    assert saved.startswith(FLOOD[0]) and saved.endswith(FLOOD[-1])
    marker = next(line for line in saved.split(b"\n") if line.startswith(b"[orchestrator"))
    at_least = int(marker.split(b"at least ")[1].split(b" ")[0])
    assert 2000 * 51 - 10_000 <= at_least <= 4000 * 51 - (len(saved) - len(marker) - 2)


COLLECTION = b"""<testsuites><testsuite errors="1" tests="0"><testcase classname="" name="tests.test_a">
<error message="collection failure">tests/test_a.py:1: in &lt;module&gt;
    import hypothesis
E   ModuleNotFoundError: No module named 'hypothesis'</error></testcase></testsuite></testsuites>"""


@pytest.mark.parametrize(
    "exit_code, junit, log, expected",
    [
        (2, COLLECTION, b"", "collection error: ModuleNotFoundError: No module named 'hypothesis'"),
        (
            4,
            None,
            b"ERROR: usage: pytest [options]\nERROR: file or directory not found: tests\n",
            "pytest usage error: usage: pytest [options]",
        ),
        (
            102,
            None,
            b"ERROR: Could not find a version that satisfies the requirement hatchling\n",
            "the commit could not be installed: Could not find a version that satisfies the requirement hatchling",
        ),
        (
            2,
            None,
            b"E   pytest.PytestCollectionWarning: cannot collect test class 'TestSuite'\n",
            "collection error: pytest.PytestCollectionWarning: cannot collect test class 'TestSuite'",
        ),
        (2, b"not xml", b"", None),
        (1, COLLECTION, b"", None),  # failed tests speak for themselves
    ],
)
def test_the_reason_names_the_cause(exit_code, junit, log, expected) -> None:
    assert cause(exit_code, Report(junit), log) == expected


# -- a report must not contradict the status ------------------------------------------------

FAILED_ONCE = (
    b'<testsuites><testsuite name="pytest" tests="2" failures="1">'
    b'<testcase classname="tests.test_a" name="test_x"><failure message="no"/></testcase>'
    b'<testcase classname="tests.test_a" name="test_y"/></testsuite>'
)
FORGED_RERUN = (
    b'<testsuite name="orchestrator-rerun-1" tests="1"><testcase classname="tests.test_a" name="test_x"/></testsuite>'
)


def test_a_rerun_suite_counts_only_when_re_runs_are_configured_and_only_as_many() -> None:
    """The suite can append a `orchestrator-rerun-1` of its own making: with re-runs off it
    is the suite's own suite (the failure stands, nothing is flaky); with N re-runs, only
    orchestrator-rerun-1..N count, each once."""
    forged = FAILED_ONCE + FORGED_RERUN + b"</testsuites>"
    assert Report(forged).flaky() == [] and Report(forged).counts().failed == 1
    assert not any(c.rerun for c in history.cases(Report(forged)))  # the history records the failure (history.record)
    assert Report(forged).flaky(reruns=1) == ["tests.test_a::test_x"]
    beyond = FAILED_ONCE + FORGED_RERUN.replace(b"rerun-1", b"rerun-3") + b"</testsuites>"
    assert Report(beyond).flaky(reruns=2) == [] and Report(beyond).counts(reruns=2).failed == 1
    twice = (
        FAILED_ONCE
        + FORGED_RERUN.replace(b'name="test_x"/>', b'name="test_x"><failure/></testcase>')
        + FORGED_RERUN
        + b"</testsuites>"
    )
    assert Report(twice).flaky(reruns=2) == []  # rerun-1 counted once: the first, which failed


def test_a_passing_exit_with_failures_in_the_report_is_failed() -> None:
    """A conftest that sets ``session.exitstatus = 0`` with a test failing."""
    from orchestrator.backends.base import ContainerState, Phase
    from orchestrator.config import RunnerConfig

    exited = ContainerState("c", Phase.EXITED, {}, exit_code=0)
    report = FAILED_ONCE + b"</testsuites>"
    assert verdict.judge(RunnerConfig(), exited, None, Report(report)) == (
        JobStatus.FAILED,
        "the suite exited 0 but its report has 1 failure",
    )
    recovered = FAILED_ONCE + FORGED_RERUN + b"</testsuites>"
    assert verdict.judge(RunnerConfig(), exited, None, Report(recovered), reruns=1) == (JobStatus.PASSED, None)
    assert verdict.judge(RunnerConfig(), exited, None, Report(recovered))[0] is JobStatus.FAILED


def test_a_test_that_failed_again_on_its_re_run_is_listed_once_with_its_tries() -> None:
    report = (
        FAILED_ONCE
        + FORGED_RERUN.replace(b'name="test_x"/>', b'name="test_x"><failure message="again"/></testcase>')
        + b"</testsuites>"
    )
    (listed,) = Report(report).failures()
    assert listed["test"] == "tests.test_a::test_x" and listed["tries"] == 2 and listed["message"] == "no"


def test_the_history_records_a_forged_rerun_as_the_failure_it_hides(tmp_path: Path) -> None:
    from orchestrator.store import NewCommit, Store

    store = Store(tmp_path / "db")
    store.record_commits("demo", [NewCommit("a" * 40, "s", ("main",))])
    job = store.claim_next()
    forged = FAILED_ONCE + FORGED_RERUN + b"</testsuites>"
    history.record(store, job, Report(forged))  # re-runs off
    (run,) = store.tests.runs("demo", "tests.test_a::test_x")
    outcome = run.outcome
    store.close()
    assert outcome == "failed"


def test_a_tree_removed_by_two_at_once_is_removed_without_an_error(tmp_path: Path) -> None:
    """Recovery's sweep of set-aside workspaces and the cleaner of a job it adopted may
    remove the same folder at once (a fault test's restart died of it): what vanished
    meanwhile is gone as wanted."""
    errors: list[BaseException] = []

    def remove(path: Path) -> None:
        try:
            remove_tree(path)
        except BaseException as exc:  # collected, for the assertion
            errors.append(exc)

    for round_ in range(10):
        root = tmp_path / f"ws{round_}"
        for i in range(200):
            (root / f"d{i}").mkdir(parents=True)
            (root / f"d{i}" / "f").write_text("x")
        threads = [threading.Thread(target=remove, args=(root,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not root.exists()
    assert errors == []
