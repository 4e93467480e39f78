"""The verdict of one finished container, and what its JUnit report says.

The verdict (``judge``) comes from the container's exit status, the engine's OOM flag and why we
killed it (``Kill``: timeout, cancel, disk), never from the log text; test counts come from the JUnit
report (read elsewhere as a regular file, size-capped: the code under test could have
replaced it), and the reason names the cause when the report or the log does.
"""

from __future__ import annotations

import re
import signal
import xml.etree.ElementTree as ET

from enum import Enum
from collections.abc import Iterator
from typing import TYPE_CHECKING

from orchestrator.models import JobStatus, TestCounts
from runner_image import orchestrator_protocol as protocol

if TYPE_CHECKING:
    from orchestrator.backends.base import ContainerState
    from orchestrator.config import RunnerConfig

# Exit statuses of runner_image/entrypoint.py beyond pytest's own 0-5 (the protocol's).
EXIT_NO_TESTS_DIR, EXIT_NO_PYTEST, EXIT_NOT_INSTALLED = (protocol.EXIT_NO_TESTS_DIR, protocol.EXIT_NO_PYTEST,
                                                         protocol.EXIT_NOT_INSTALLED)
RERUN_SUITE = protocol.RERUN_SUITE

_PYTEST_ERRORS = {
    2: "collection error or interrupted run (pytest exit 2)",
    3: "pytest internal error (exit 3)",
    4: "pytest usage error (exit 4)",
    5: "no tests collected (pytest exit 5)",
    EXIT_NO_TESTS_DIR: "tests directory missing in this commit",
    EXIT_NO_PYTEST: "pytest is not installed in the runner image",
    EXIT_NOT_INSTALLED: "the commit could not be installed (pip install --no-deps; see its log)",
}


def classify(exit_code: int | None, *, oom_killed: bool, timed_out: bool, timeout: float,
             memory: str) -> tuple[JobStatus, str | None]:
    """Status and reason for one finished container."""
    if timed_out:
        return JobStatus.TIMED_OUT, f"killed after the {timeout:g} s timeout"
    if oom_killed:
        return JobStatus.ERROR, f"out of memory: killed at the {memory} memory limit"
    if exit_code == 0:
        return JobStatus.PASSED, None
    if exit_code == 1:
        return JobStatus.FAILED, None
    if exit_code in _PYTEST_ERRORS:
        return JobStatus.ERROR, _PYTEST_ERRORS[exit_code]
    if exit_code is not None and exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return JobStatus.ERROR, f"killed by {name} (exit {exit_code})"
    return JobStatus.ERROR, f"the runner exited with status {exit_code}"


_CAUSES = {2: "collection error", 3: "pytest internal error", 4: "pytest usage error",
           EXIT_NOT_INSTALLED: "the commit could not be installed"}
_EXCEPTION = re.compile(r"^E\s+((?:\w+\.)*\w*(?:Error|Exception|Warning|Exit|Interrupt)\b.*)$", re.M)
_PYTEST_ERROR = re.compile(r"^(?:ERROR|error): (.+)$", re.M)


def cause(exit_code: int | None, junit: bytes | None, log_head: bytes) -> str | None:
    """The reason in words, naming what went wrong when the report or the log says it
    ("collection error: ModuleNotFoundError: No module named 'hypothesis'"), for the
    exits where pytest or the install did not get to run the tests; None otherwise."""
    if exit_code not in _CAUSES:
        return None
    texts = [node.text or "" for node in _errors(junit)] + [log_head.decode("utf-8", "replace")]
    for pattern in (_EXCEPTION, _PYTEST_ERROR):
        for text in texts:
            if found := pattern.search(text):
                return f"{_CAUSES[exit_code]}: {found.group(1).strip()[:300]}"
    return None


class Kill(Enum):
    """Why the dispatcher killed a container (a killed container exits 137 either way)."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"
    DISK = "disk"


def judge(cfg: RunnerConfig, final: ContainerState, killed: Kill | None, junit: bytes | None,
          log_head: bytes = b"", reruns: int = 0) -> tuple[JobStatus, str | None]:
    """The status and reason of one finished container (a job's, or one shard's). A report
    that counts failures or errors is never ``passed``, whatever the exit status says: the
    suite can set its own exit status (a conftest's ``session.exitstatus = 0``), and the
    report is what the tests recorded, so that is ``failed``, with the contradiction said."""
    status, message = classify(final.exit_code, oom_killed=final.oom_killed, timed_out=killed is Kill.TIMEOUT,
                               timeout=cfg.timeout, memory=cfg.memory)
    if status is JobStatus.ERROR and killed is None and not final.oom_killed:
        message = cause(final.exit_code, junit, log_head) or message
    if status is JobStatus.PASSED and junit and (counts := parse_junit(junit, reruns)) and \
            (counts.failed or counts.errors):
        status, message = JobStatus.FAILED, f"the suite exited 0 but its report has {_failures(counts)}"
    if killed is Kill.CANCEL:
        status, message = JobStatus.CANCELLED, "cancelled while running"
    elif killed is Kill.DISK:
        status, message = JobStatus.ERROR, f"disk limit exceeded: more than {cfg.disk} written into the workspace"
    elif final.over_disk:   # seen by the task itself (a Swarm), which watches /tmp too
        status, message = JobStatus.ERROR, (f"disk limit exceeded: more than {cfg.disk} written into the "
                                            f"workspace, or {cfg.tmp_size} into /tmp")
    return status, message


def _failures(counts: TestCounts) -> str:
    said = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((counts.failed, "failure"), (counts.errors, "error"))
            if n]
    return " and ".join(said)


def _errors(junit: bytes | None) -> list[ET.Element]:
    try:
        return list(ET.fromstring(junit).iter("error")) if junit else []
    except ET.ParseError:
        return []


def suites(root: ET.Element, reruns: int) -> tuple[list[ET.Element], list[ET.Element]]:
    """The report's own test suites, and the re-runs of its failed tests that the entrypoint
    appended: a suite counts as a re-run only when ``reruns`` are configured, only if it is
    named ``orchestrator-rerun-<k>`` for k from 1 to ``reruns``, and each k only once (the
    first); any other suite is the suite's own, whatever its name."""
    found = [root] if root.tag == "testsuite" else root.findall("testsuite")
    own: list[ET.Element] = []
    rerun: dict[int, ET.Element] = {}
    for suite in found:
        name = suite.get("name") or ""
        k = name.removeprefix(RERUN_SUITE)
        if reruns and name.startswith(RERUN_SUITE) and k.isdigit() and 1 <= int(k) <= reruns and int(k) not in rerun:
            rerun[int(k)] = suite
        else:
            own.append(suite)
    return own, [rerun[k] for k in sorted(rerun)]


def parse_junit(data: bytes, reruns: int = 0) -> TestCounts | None:
    """The counts of a report; a test that failed and then passed when re-run (only the
    re-runs ``suites`` counts) is counted as passed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    if root.tag not in ("testsuite", "testsuites"):
        return None
    own, rerun = suites(root, reruns)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in own:
        for key in totals:
            try:
                totals[key] += int(suite.get(key, "0"))
            except ValueError:
                return None
    passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    counts = TestCounts(total=totals["tests"], passed=max(passed, 0), failed=totals["failures"],
                        errors=totals["errors"], skipped=totals["skipped"])
    recovered = _recovered(own, rerun)   # failed, then passed when re-run: counted as they ended
    if recovered:
        failed = sum(1 for kind in recovered.values() if kind == "failed")
        errors = len(recovered) - failed
        counts = TestCounts(total=counts.total, passed=counts.passed + len(recovered),
                            failed=max(counts.failed - failed, 0), errors=max(counts.errors - errors, 0),
                            skipped=counts.skipped)
    return counts


def flaky(data: bytes | None, reruns: int = 0) -> list[str]:
    """The tests that failed and then passed when re-run in the same container."""
    try:
        root = ET.fromstring(data) if data else None
    except ET.ParseError:
        return []
    return sorted(_recovered(*suites(root, reruns))) if root is not None else []


def test_id(case: ET.Element) -> str:
    """A test case's id, as everything here names it: ``<classname>::<name>`` (the protocol's rule)."""
    return protocol.test_id(case.get("classname") or "", case.get("name") or "")


def outcome(case: ET.Element) -> str:
    """passed, failed, error or skipped."""
    return next((o for tag, o in (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))
                 if case.find(tag) is not None), "passed")


def cases_as_ended(root: ET.Element, reruns: int) -> Iterator[tuple[ET.Element, bool]]:
    """Every test case of the report, and whether it is a counted re-run's: its own suites'
    first, then the re-runs' (so that, read in order, a re-run's outcome comes last)."""
    own, rerun = suites(root, reruns)
    for suite in own:
        yield from ((case, False) for case in suite.iter("testcase"))
    for suite in rerun:
        yield from ((case, True) for case in suite.iter("testcase"))


def _recovered(own: list[ET.Element], rerun: list[ET.Element]) -> dict[str, str]:
    """test id -> how it failed first ("failed" or "error"), for each test whose last re-run passed."""
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for suite in own:
        for case in suite.iter("testcase"):
            if (ended := outcome(case)) in ("failed", "error"):
                first[test_id(case)] = ended
    for suite in rerun:
        for case in suite.iter("testcase"):
            last[test_id(case)] = outcome(case)
    return {test: kind for test, kind in first.items() if last.get(test) == "passed"}


def failures(data: bytes, limit: int = 50) -> list[dict[str, object]]:
    """The failed and errored tests of a JUnit report, each once with how many of its runs
    failed (``tries``: a test that failed again when re-run is one entry, not two), with the
    first failure's message, for the job page: what a user wants to see first."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return []
    found: dict[str, dict[str, object]] = {}
    for case in root.iter("testcase"):
        node = next((n for n in (case.find("failure"), case.find("error")) if n is not None), None)
        if node is None:
            continue
        test = test_id(case)
        if test in found:
            found[test]["tries"] = int(found[test]["tries"]) + 1   # type: ignore[call-overload]
        elif len(found) < limit:
            found[test] = {"test": test, "kind": node.tag, "message": (node.get("message") or "")[:2000],
                           "details": (node.text or "")[:8000], "tries": 1}
    return list(found.values())
