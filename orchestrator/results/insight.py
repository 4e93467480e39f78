"""What the pictures and the history pages read, as data (``result.json``-like documents):
a repository's or a branch's trends, the last hour's load, flaky tests, one test's runs.
Reads only; the web and the API reach it as ``LocalJobs.insight``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.config import RepositoryConfig
from orchestrator.models import iso
from orchestrator.results import trends
from orchestrator.results.history import History
from orchestrator.store import Store

Document = dict[str, Any]


class Insight:
    def __init__(self, store: Store, repository: Callable[[str | None], RepositoryConfig], repositories: list[str]):
        """``repository(name)``: the configured repository, or the error that names it unknown."""
        self.store = store
        self._repository = repository
        self.repositories = repositories

    def trends(self, repository: str, branch: str | None = None) -> Document:
        """A repository's (or branch's) pictures, as data: each of the last 100 runs, the
        pass rate per day, the 10 slowest tests with their recent durations."""
        name = self._repository(repository).name
        return {
            "repository": name,
            "branch": branch,
            "runs": [
                {
                    "id": j.id,
                    "commit": j.commit,
                    "status": j.status.value,
                    "duration_s": j.duration_s,
                    "coverage": j.coverage,
                }
                for j in trends.runs(self.store, name, branch)
            ],
            "pass_rate": [
                {"day": day, "passed": passed, "tested": tested}
                for day, passed, tested in trends.pass_rate_by_day(self.store, name, branch)
            ],
            "slowest": [
                {"test_id": s.test_id, "mean_s": round(s.mean_s, 4), "recent_s": s.recent_s}
                for s in trends.slowest_tests(self.store, name, branch)
            ],
        }

    def coverage(self, repository: str, branch: str) -> float | None:
        """The line coverage of the branch's newest run that measured it (the badge's)."""
        measured = [
            j.coverage
            for j in trends.runs(self.store, self._repository(repository).name, branch)
            if j.coverage is not None
        ]
        return measured[-1] if measured else None

    def load(self) -> list[Document]:
        """Jobs queued and running, each minute of the last hour."""
        return [{"at": iso(t), "queued": q, "running": r} for t, q, r in trends.load(self.store)]

    def flaky(self, repository: str | None = None) -> list[Document]:
        """Flaky tests of each repository (or of one), ranked by flip rate (history.py)."""
        names = [self._repository(repository).name] if repository else self.repositories
        return [{"repository": name, **t} for name in names for t in History(self.store).flaky(name)]

    def test_runs(
        self, repository: str, test_id: str, branch: str | None = None, limit: int = 100, python: str | None = None
    ) -> list[Document]:
        """A test's outcome and duration in the newest jobs of a branch (of one Python's
        variants, with ``python``), newest first."""
        name = self._repository(repository).name
        return [
            {
                "job": r.job_id,
                "commit": r.commit,
                "outcome": r.outcome,
                "seconds": r.seconds,
                "python": r.python or None,
            }
            for r in History(self.store).runs(name, test_id, branch, limit=limit, python=python)
        ]
