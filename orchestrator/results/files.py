"""The files users read: ``<results_dir>/<repo>/<sha>/``, each written atomically,
``result.json`` last; an earlier attempt's files kept in ``attempts/<n>/``. A commit
that runs on several Pythons has a folder per variant below it (``py3.14/``,
``pypy3.11/``), each laid out as a single Python's, and a summary ``result.json`` beside
them: the commit's status (the worst of its variants') and each variant's. The JUnit
report is read back as a regular file without following links and with a size cap, since
the code under test could have replaced it. (The verdict they hold: ``verdict.py``.)"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator import pythons
from orchestrator.backends.base import MAX_REPORT_BYTES
from orchestrator.models import Job, JobStatus, TestCounts, iso, parse_iso, transition, utcnow
from orchestrator.workspace import read_regular_file

RESULT_FILES = ("result.json", "output.log", "junit.xml", "environment.log", "artifacts")
SHARD_LOGS = "output.*.log"  # output.<k>.log: one per shard of a split suite
_FINAL = {s.value for s in JobStatus if s.final}
_COUNTS = ("total", "passed", "failed", "errors", "skipped")


def result_document(job: Job, history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The ``result.json`` object; also what ``--json`` and the API return for a job.
    ``history`` lists the earlier attempts (why each was retried)."""
    tests = job.tests or TestCounts()
    return {
        "id": job.id,
        "repository": job.repository,
        "commit": job.commit,
        "branches": list(job.branches),
        "subject": job.subject,
        "status": job.status.value,
        "exit_code": job.exit_code,
        "tests": {
            "total": tests.total,
            "passed": tests.passed,
            "failed": tests.failed,
            "errors": tests.errors,
            "skipped": tests.skipped,
            "quarantined": len(job.quarantined),  # failures of quarantined tests, among those counted
        },
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "duration_s": job.duration_s,
        "attempts": job.attempts,
        "image": {"tag": job.image_tag, "id": job.image_id},
        "container": job.container_id,
        "node": job.node,
        "log_truncated": job.log_truncated,
        "environment": job.environment,
        "message": job.message,
        "attempt_history": [h for h in history if h["attempt"] < job.attempts],
        "flaky": list(job.flaky),  # failed, then passed when re-run (repositories[].rerun_failures)
        "coverage": job.coverage,  # line coverage in percent, if the suite wrote coverage.xml
        "artifacts": job.artifacts,  # what was collected for download, and what was refused
        "culprit": job.culprit is not None,  # a bisection named this commit the first failing one
        "bisection": job.culprit,  # ... the range it bisected, and what it spent
        "shards": list(job.shards),  # a split suite's containers (repositories[].shards), else []
        "python": job.python or None,  # the variant's Python; null where the repository names one
        "trigger": job.trigger,  # what queued it: push, manual, schedule, bisection or merge
        "quarantined": list(job.quarantined),  # quarantined tests that failed: they did not fail the job
        "rerun": job.rerun,  # a re-run of only the failed tests: which, of which attempt; else null
        "dispatcher": job.dispatcher,  # the dispatcher that ran the attempt, where several share a store
    }


def commit_document(jobs: Sequence[Job]) -> dict[str, Any]:
    """The summary ``result.json`` of a commit's variants: its status and each variant's."""
    from orchestrator.results import variants

    first = jobs[0]
    return {
        "repository": first.repository,
        "commit": first.commit,
        "branches": sorted({b for j in jobs for b in j.branches}),
        "subject": first.subject,
        "status": variants.overall(j.status for j in jobs).value,
        "variants": [
            {
                "python": j.python,
                "id": j.id,
                "status": j.status.value,
                "tests": result_document(j)["tests"],
                "folder": variants.folder(j),
            }
            for j in variants.ordered(jobs)
        ],
    }


class ResultFiles:
    """Writes one attempt's files; ``result.json`` last, each one atomically."""

    def __init__(self, results_dir: Path):
        self.root = results_dir

    def directory(self, repository: str, commit: str, python: str = "") -> Path:
        """A commit's folder; with ``python``, its variant's below it."""
        base = self.root / repository / commit
        return base / pythons.folder(python) if python else base

    def of(self, job: Job) -> Path:
        return self.directory(job.repository, job.commit, job.python)

    def path(self, job: Job, name: str) -> Path:
        """One of ``job``'s result files (``RESULT_FILES``)."""
        return self.of(job) / name

    def summarise(self, jobs: Sequence[Job]) -> None:
        """The summary ``result.json`` of a commit's variants, beside their folders (nothing
        for a single Python's job, whose own ``result.json`` is there)."""
        if not jobs or not any(j.python for j in jobs):
            return
        document = json.dumps(commit_document(jobs), indent=2, ensure_ascii=False).encode() + b"\n"
        directory = self.directory(jobs[0].repository, jobs[0].commit)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic(directory / "result.json", lambda fh: fh.write(document))

    def report(self, job: Job) -> bytes | None:
        """The saved JUnit report, read as a regular file with a size cap."""
        return read_regular_file(self.path(job, "junit.xml"), MAX_REPORT_BYTES)

    def read(self, repository: str, commit: str, python: str = "") -> dict[str, Any] | None:
        return _read_document(self.directory(repository, commit, python))

    def completed(self, job: Job) -> Job | None:
        """``job`` (running) finished as its complete result files say, if they are this
        attempt's: a crash came after ``result.json`` was written, before the store knew."""
        doc = self.read(job.repository, job.commit, job.python)
        if not doc or doc.get("attempts") != job.attempts or doc.get("status") not in _FINAL:
            return None
        tests = doc["tests"] if isinstance(doc.get("tests"), dict) else {}
        counts = {k: int(tests.get(k, 0)) if isinstance(tests.get(k, 0), int) else 0 for k in _COUNTS}
        return transition(
            job,
            JobStatus(doc["status"]),
            utcnow(),
            exit_code=doc.get("exit_code"),
            message=doc.get("message"),
            log_truncated=bool(doc.get("log_truncated")),
            tests=TestCounts(**counts),
            finished_at=parse_iso(doc.get("finished_at")) or utcnow(),
            started_at=parse_iso(doc.get("started_at")) or job.started_at,
        )

    def write(
        self,
        job: Job,
        log: Callable[[BinaryIO], None],
        junit: bytes | None,
        history: Sequence[dict[str, Any]] = (),
        timings: dict[str, float] | None = None,
        environment_log: Path | None = None,
        artifacts: Path | None = None,
        shard_logs: Sequence[Callable[[BinaryIO], None]] = (),
    ) -> Path:
        """Write ``job``'s files (with ``environment_log``, the log of its environment's
        build, as ``environment.log``; ``artifacts``, a folder collected for it, moved to
        ``artifacts/``; ``shard_logs``, each shard's own log of a split suite, as
        ``output.<k>.log``, ``log`` then being their combined view); an earlier attempt's
        files move to ``attempts/<n>/``."""
        directory = self.of(job)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.tmp"):  # a write a crash cut short; this job is its only writer
            stale.unlink(missing_ok=True)
        self._archive_older(directory, job.attempts)
        shutil.rmtree(directory / "artifacts", ignore_errors=True)
        if artifacts is not None and artifacts.is_dir():
            shutil.move(str(artifacts), str(directory / "artifacts"))
        _atomic(directory / "output.log", log)
        for stale in directory.glob(SHARD_LOGS):
            stale.unlink(missing_ok=True)
        for index, shard_log in enumerate(shard_logs, start=1):
            _atomic(directory / f"output.{index}.log", shard_log)
        if junit is not None:
            _atomic(directory / "junit.xml", lambda fh: fh.write(junit))
        else:
            (directory / "junit.xml").unlink(missing_ok=True)
        if environment_log is not None and environment_log.is_file():
            _atomic(
                directory / "environment.log", lambda fh: fh.write(environment_log.read_bytes()[-MAX_REPORT_BYTES:])
            )
        else:
            (directory / "environment.log").unlink(missing_ok=True)
        document = (
            json.dumps(
                {**result_document(job, history), "timings": timings or {}}, indent=2, ensure_ascii=False
            ).encode()
            + b"\n"
        )
        _atomic(directory / "result.json", lambda fh: fh.write(document))
        return directory

    def write_without_run(
        self,
        job: Job,
        history: Sequence[dict[str, Any]] = (),
        environment_log: Path | None = None,
        timings: dict[str, float] | None = None,
    ) -> Path:
        """Files for a job that ended with no verdict from a container (image missing,
        retries spent, cancelled before it ran, its environment broken): its reason is its log."""

        def reason(fh: BinaryIO) -> None:
            fh.write(f"[orchestrator: {job.message}]\n".encode())

        return self.write(
            job,
            reason,
            None,
            history,
            timings,
            environment_log,
        )

    def annotate(self, job: Job, history: Sequence[dict[str, Any]] = ()) -> None:
        """Rewrite ``job``'s ``result.json`` with what is known of it now (a bisection named
        it the culprit), keeping its timings and every other file."""
        directory = self.of(job)
        timings = (_read_document(directory) or {}).get("timings") or {}
        document = (
            json.dumps({**result_document(job, history), "timings": timings}, indent=2, ensure_ascii=False).encode()
            + b"\n"
        )
        directory.mkdir(parents=True, exist_ok=True)
        _atomic(directory / "result.json", lambda fh: fh.write(document))

    def _archive_older(self, directory: Path, attempt: int) -> None:
        previous = _read_document(directory)
        if not previous or not isinstance(previous.get("attempts"), int) or not 0 < previous["attempts"] < attempt:
            return  # nothing earlier, or only the notice of a job that never ran (skipped, cancelled before)
        target = directory / "attempts" / str(previous["attempts"])
        target.mkdir(parents=True, exist_ok=True)
        for path in [directory / name for name in RESULT_FILES] + list(directory.glob(SHARD_LOGS)):
            if path.exists():
                os.replace(path, target / path.name)


def _read_document(directory: Path) -> dict[str, Any] | None:
    data = read_regular_file(directory / "result.json", 1 << 20)
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _atomic(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
