"""What the test history keeps: each test case of each job's attempt (``test_cases``), and
each test's duration as a moving average over its passing runs (``test_durations``), for
the history pages, the flaky ranking, the trends and the splitting of suites."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.store.db import Database, marks

AVERAGE_WEIGHT = 0.3  # the newest run's weight in a test's moving average duration

# A test's duration for splitting a suite (sharding.py): a moving average over its
# passing runs, each job counted once, however often it is recorded.
_DURATION = (
    "INSERT INTO test_durations (repository, python, test_id, seconds, runs, job_id) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (repository, python, test_id) DO UPDATE SET"
    f" seconds = test_durations.seconds * {1 - AVERAGE_WEIGHT} + excluded.seconds * {AVERAGE_WEIGHT},"
    " runs = test_durations.runs + 1, job_id = excluded.job_id WHERE excluded.job_id > test_durations.job_id"
)
_CURRENT = "t.attempt = j.attempts"  # a job's current attempt's cases
# Every read of a test's history is of one variant (j.python: "" where the repository has one Python).
_ON_BRANCH = "EXISTS (SELECT 1 FROM json_each(j.branches) WHERE value = ?)"


@dataclass(frozen=True)
class Run:
    job_id: int
    commit: str
    outcome: str
    seconds: float
    python: str = ""


class Tests:
    def __init__(self, db: Database):
        self._db = db

    def record(
        self,
        job_id: int,
        attempt: int,
        repository: str,
        cases: Sequence[tuple[str, str, float]],
        passed: Sequence[tuple[str, float]],
        python: str = "",
    ) -> None:
        """The (test id, outcome, seconds) of one attempt, and the (test id, seconds) of those
        that passed, which join their tests' moving averages: in one transaction."""
        with self._db.write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO test_cases (job_id, attempt, repository, test_id, outcome, seconds)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(job_id, attempt, repository, test, outcome, seconds) for test, outcome, seconds in cases],
            )
            db.executemany(_DURATION, [(repository, python, test, seconds, job_id) for test, seconds in passed])

    def carry(self, job_id: int, source: int, target: int, besides: Sequence[str]) -> None:
        """Copy attempt ``source``'s cases of a job to attempt ``target``, but ``besides``
        (re-run alone: the new attempt's own): a re-run of the failed tests keeps the
        suite's other outcomes in the job's current history."""
        with self._db.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO test_cases (job_id, attempt, repository, test_id, outcome, seconds)"
                " SELECT job_id, ?, repository, test_id, outcome, seconds FROM test_cases"
                f" WHERE job_id = ? AND attempt = ? AND test_id NOT IN ({marks(besides)})",
                [target, job_id, source, *besides],
            )

    def known(self, repository: str, test_id: str) -> bool:
        """Whether the repository's history has this test."""
        return bool(
            self._db.read(
                "SELECT 1 FROM test_cases WHERE repository = ? AND test_id = ? LIMIT 1", (repository, test_id)
            )
        )

    def count(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM test_cases")[0][0])

    def runs(
        self,
        repository: str,
        test_id: str,
        branch: str | None = None,
        before: int | None = None,
        limit: int = 100,
        python: str | None = None,
    ) -> list[Run]:
        """The test's outcome in the newest jobs of ``branch`` (any, if None), of the variant
        on ``python`` (any, if None), newest first."""
        sql = (
            "SELECT j.id, j.commit_sha, t.outcome, t.seconds, j.python FROM test_cases t JOIN jobs j ON j.id = t.job_id"
            f" WHERE t.repository = ? AND t.test_id = ? AND {_CURRENT}"
        )
        args: list[object] = [repository, test_id]
        if python is not None:
            sql, args = sql + " AND j.python = ?", [*args, python]
        if branch is not None:
            sql, args = sql + f" AND {_ON_BRANCH}", [*args, branch]
        if before is not None:
            sql, args = sql + " AND j.id < ?", [*args, before]
        return [Run(*row) for row in self._db.read(sql + " ORDER BY j.id DESC LIMIT ?", [*args, limit])]

    def failed_in(self, job_id: int, attempt: int, limit: int = 5) -> list[str]:
        """The tests that failed or erred in one attempt of a job, by id (at most ``limit``)."""
        rows = self._db.read(
            "SELECT test_id FROM test_cases WHERE job_id = ? AND attempt = ? AND outcome IN ('failed', 'error')"
            " ORDER BY test_id LIMIT ?",
            (job_id, attempt, limit),
        )
        return [r[0] for r in rows]

    def failing_tests_runs(self, repository: str, jobs: int) -> list[tuple[str, str, str, str]]:
        """(test id, python, outcome, commit) of every run, within the newest ``jobs`` jobs,
        of each test that failed, erred or was flaky there at least once; by test and
        variant, oldest first."""
        newest = self._db.read("SELECT COALESCE(MAX(id), 0) FROM jobs WHERE repository = ?", (repository,))[0][0]
        return [
            tuple(r)
            for r in self._db.read(
                "SELECT t.test_id, j.python, t.outcome, j.commit_sha FROM test_cases t JOIN jobs j ON j.id = t.job_id"
                f" WHERE t.repository = ? AND {_CURRENT} AND j.id > ? AND t.test_id IN"
                " (SELECT DISTINCT test_id FROM test_cases WHERE repository = ? AND job_id > ?"
                "  AND outcome IN ('failed', 'error', 'flaky')) ORDER BY t.test_id, j.python, j.id",
                (repository, newest - jobs, repository, newest - jobs),
            )
        ]

    def outcomes(self, repository: str, test_id: str, commits: Sequence[str], python: str = "") -> dict[str, str]:
        """The test's outcome at each of ``commits`` that was tested on ``python`` (its
        job's current attempt)."""
        if not commits:
            return {}
        return dict(
            self._db.read(
                "SELECT j.commit_sha, t.outcome FROM test_cases t JOIN jobs j ON j.id = t.job_id WHERE t.repository = ?"
                f" AND t.test_id = ? AND {_CURRENT} AND j.python = ? AND j.commit_sha IN ({marks(commits)})",
                [repository, test_id, python, *commits],
            )
        )

    def by_python(self, repository: str, test_id: str, commit: str) -> dict[str, str]:
        """The test's outcome in each variant of ``commit`` (its python -> outcome)."""
        return dict(
            self._db.read(
                "SELECT j.python, t.outcome FROM test_cases t JOIN jobs j ON j.id = t.job_id"
                f" WHERE t.repository = ? AND t.test_id = ? AND {_CURRENT} AND j.commit_sha = ?",
                (repository, test_id, commit),
            )
        )

    def seconds_of_jobs(self, job_ids: Sequence[int]) -> list[tuple[str, float]]:
        """(test id, seconds) of each case of these jobs' current attempts, by job."""
        return [
            tuple(r)
            for r in self._db.read(
                f"SELECT t.test_id, t.seconds FROM test_cases t JOIN jobs j ON j.id = t.job_id"
                f" WHERE t.job_id IN ({marks(job_ids)}) AND {_CURRENT} ORDER BY t.job_id",
                list(job_ids),
            )
        ]

    def durations(self, repository: str, limit: int, python: str = "") -> dict[str, float]:
        """Each test's moving average duration on ``python`` (for splitting a suite)."""
        return dict(
            self._db.read(
                "SELECT test_id, seconds FROM test_durations WHERE repository = ? AND python = ? LIMIT ?",
                (repository, python, limit),
            )
        )

    def suite_seconds(self, repository: str, python: str = "") -> float | None:
        """The test time of the newest passing run of ``repository`` on ``python`` (None: none yet)."""
        rows = self._db.read(
            f"SELECT SUM(t.seconds) FROM test_cases t JOIN jobs j ON j.id = t.job_id AND {_CURRENT}"
            " WHERE j.id = (SELECT MAX(id) FROM jobs WHERE repository = ? AND python = ? AND status = 'passed')",
            (repository, python),
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    def overheads(self, repository: str, limit: int = 20, python: str = "") -> list[float]:
        """What each of the newest unsplit passing runs on ``python`` took beyond its tests, in seconds."""
        rows = self._db.read(
            "SELECT (julianday(j.finished_at) - julianday(j.started_at)) * 86400 - SUM(t.seconds)"
            f" FROM jobs j JOIN test_cases t ON t.job_id = j.id AND {_CURRENT}"
            " WHERE j.repository = ? AND j.python = ? AND j.status = 'passed' AND j.shards IS NULL"
            " GROUP BY j.id ORDER BY j.id DESC LIMIT ?",
            (repository, python, limit),
        )
        return [row[0] for row in rows if row[0] is not None]
