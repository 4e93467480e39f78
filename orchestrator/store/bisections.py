"""The bisections: the state of each is a row (its first-parent commits, the known-good
index ``low``, the known-bad index ``high``, the commit under test, its phase), so a
dispatcher that restarts in the middle carries on from there (bisection.py takes the steps)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from orchestrator.models import Job, iso, parse_iso, utcnow
from orchestrator.store.db import Database

SEARCH, VERIFY, FOUND, FLAKY, ABANDONED = "search", "verify", "found", "flaky", "abandoned"
_COLUMNS = (
    "id, repository, branch, bad_job, good, commits, low, high, probe, phase, culprit, jobs, reason, started_at, "
    "finished_at"
)


@dataclass(frozen=True)
class Bisection:
    id: int
    repository: str
    branch: str
    bad_job: int
    good: str  # the last commit of the branch that passed
    commits: tuple[str, ...]  # after ``good`` up to the failing newest, first parents, oldest first
    low: int  # index of the newest commit known good (-1: ``good``)
    high: int  # index of the oldest commit known bad
    probe: str | None  # the commit whose result is awaited
    phase: str  # SEARCH, VERIFY, then FOUND, FLAKY or ABANDONED
    culprit: str | None = None
    jobs: int = 0  # jobs this bisection started
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def budget(self) -> int:
        return math.ceil(math.log2(len(self.commits))) + 1

    def document(self) -> dict:
        """What result.json (of the culprit), the API and the webhook say of it."""
        return {
            "id": self.id,
            "repository": self.repository,
            "branch": self.branch,
            "good": self.good,
            "bad": self.commits[-1],
            "range": len(self.commits),
            "phase": self.phase,
            "culprit": self.culprit,
            "jobs": self.jobs,
            "reason": self.reason,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


class Bisections:
    def __init__(self, db: Database):
        self._db = db

    def start(self, job: Job, branch: str, good: str, commits: list[str]) -> Bisection | None:
        """A new bisection of the failure of ``job``; None if that failure has one already."""
        with self._db.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO bisections (repository, branch, bad_job, good, commits, low, high, phase,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.repository,
                    branch,
                    job.id,
                    good,
                    json.dumps(commits),
                    -1,
                    len(commits) - 1,
                    SEARCH,
                    iso(utcnow()),
                ),
            )
            if cur.rowcount != 1:
                return None
        return self.get(int(cur.lastrowid or 0))

    def running(self) -> list[Bisection]:
        return self._select("WHERE phase IN (?, ?) ORDER BY id", (SEARCH, VERIFY))

    def get(self, bisection_id: int) -> Bisection | None:
        found = self._select("WHERE id = ?", (bisection_id,))
        return found[0] if found else None

    def of_job(self, job_id: int) -> Bisection | None:
        """The bisection started by the failure of job ``job_id``, if any."""
        found = self._select("WHERE bad_job = ?", (job_id,))
        return found[0] if found else None

    def recent(self, repository: str | None = None, limit: int = 20) -> list[Bisection]:
        """Newest first."""
        where, args = ("WHERE repository = ?", [repository]) if repository else ("", [])
        return self._select(f"{where} ORDER BY id DESC LIMIT ?", [*args, limit])

    def save(self, b: Bisection) -> None:
        with self._db.write() as db:
            db.execute(
                "UPDATE bisections SET low = ?, high = ?, probe = ?, phase = ?, culprit = ?, jobs = ?,"
                " reason = ?, finished_at = ? WHERE id = ?",
                (b.low, b.high, b.probe, b.phase, b.culprit, b.jobs, b.reason, iso(b.finished_at), b.id),
            )

    def _select(self, where: str, args: tuple | list) -> list[Bisection]:
        return [_row(r) for r in self._db.read(f"SELECT {_COLUMNS} FROM bisections {where}", args)]


_READ: dict[str, Callable[[Any], Any]] = {
    "commits": lambda v: tuple(json.loads(v)),
    "started_at": parse_iso,
    "finished_at": parse_iso,
}


def _row(row: tuple) -> Bisection:
    return Bisection(**{f.name: _READ.get(f.name, _same)(v) for f, v in zip(fields(Bisection), row, strict=True)})


def _same(value: Any) -> Any:
    return value
