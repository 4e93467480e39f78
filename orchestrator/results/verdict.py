"""The verdict of one finished container.

It comes from the container's exit status, the engine's OOM flag and why we killed it
(``Kill``: timeout, cancel, disk), never from the log text; its JUnit report (report.py)
may only make it worse (a report that counts failures is never ``passed``), and the reason
names the cause when the report or the log does.
"""

from __future__ import annotations

import re
import signal
from enum import Enum
from typing import TYPE_CHECKING

from orchestrator.models import JobStatus, TestCounts
from orchestrator.results.report import Report
from runner_image import orchestrator_protocol as protocol

if TYPE_CHECKING:
    from orchestrator.backends.base import ContainerState
    from orchestrator.config import RunnerConfig

# Exit statuses of runner_image/entrypoint.py beyond pytest's own 0-5 (the protocol's).
EXIT_NO_TESTS_DIR, EXIT_NO_PYTEST, EXIT_NOT_INSTALLED = (
    protocol.EXIT_NO_TESTS_DIR,
    protocol.EXIT_NO_PYTEST,
    protocol.EXIT_NOT_INSTALLED,
)

_PYTEST_ERRORS = {
    2: "collection error or interrupted run (pytest exit 2)",
    3: "pytest internal error (exit 3)",
    4: "pytest usage error (exit 4)",
    5: "no tests collected (pytest exit 5)",
    EXIT_NO_TESTS_DIR: "tests directory missing in this commit",
    EXIT_NO_PYTEST: "pytest is not installed in the runner image",
    EXIT_NOT_INSTALLED: "the commit could not be installed (install --no-deps; see its log)",
    protocol.EXIT_HAS_NETWORK: (
        "the task had a network interface and runner.swarm_job_networks is false: the workers' engines must "
        "give a task without networks none (dockerd --bridge=none); nothing of the commit ran"
    ),
}


def classify(
    exit_code: int | None, *, oom_killed: bool, timed_out: bool, timeout: float, memory: str
) -> tuple[JobStatus, str | None]:
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


_CAUSES = {
    2: "collection error",
    3: "pytest internal error",
    4: "pytest usage error",
    EXIT_NOT_INSTALLED: "the commit could not be installed",
}
_EXCEPTION = re.compile(r"^E\s+((?:\w+\.)*\w*(?:Error|Exception|Warning|Exit|Interrupt)\b.*)$", re.M)
_PYTEST_ERROR = re.compile(r"^(?:ERROR|error): (.+)$", re.M)


def cause(exit_code: int | None, report: Report, log_head: bytes) -> str | None:
    """The reason in words, naming what went wrong when the report or the log says it
    ("collection error: ModuleNotFoundError: No module named 'hypothesis'"), for the
    exits where pytest or the install did not get to run the tests; None otherwise."""
    if exit_code not in _CAUSES:
        return None
    texts = [node.text or "" for node in report.errors()] + [log_head.decode("utf-8", "replace")]
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


def judge(
    cfg: RunnerConfig,
    final: ContainerState,
    killed: Kill | None,
    report: Report,
    log_head: bytes = b"",
    reruns: int = 0,
) -> tuple[JobStatus, str | None]:
    """The status and reason of one finished container (a job's, or one shard's). A report
    that counts failures or errors is never ``passed``, whatever the exit status says: the
    suite can set its own exit status (a conftest's ``session.exitstatus = 0``), and the
    report is what the tests recorded, so that is ``failed``, with the contradiction said."""
    status, message = classify(
        final.exit_code,
        oom_killed=final.oom_killed,
        timed_out=killed is Kill.TIMEOUT,
        timeout=cfg.timeout,
        memory=cfg.memory,
    )
    if status is JobStatus.ERROR and killed is None and not final.oom_killed:
        message = cause(final.exit_code, report, log_head) or message
    if status is JobStatus.PASSED and (counts := report.counts(reruns)) and (counts.failed or counts.errors):
        status, message = JobStatus.FAILED, f"the suite exited 0 but its report has {_failures(counts)}"
    if killed is Kill.CANCEL:
        status, message = JobStatus.CANCELLED, "cancelled while running"
    elif killed is Kill.DISK:
        status, message = JobStatus.ERROR, f"disk limit exceeded: more than {cfg.disk} written into the workspace"
    elif final.over_disk:  # seen by the task itself (a Swarm), which watches /tmp too
        status, message = (
            JobStatus.ERROR,
            (f"disk limit exceeded: more than {cfg.disk} written into the workspace, or {cfg.tmp_size} into /tmp"),
        )
    return status, message


def _failures(counts: TestCounts) -> str:
    said = [
        f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((counts.failed, "failure"), (counts.errors, "error")) if n
    ]
    return " and ".join(said)
