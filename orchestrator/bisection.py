"""Automatic bisection: when coalescing (coalesce.py) skipped commits and the newest one
failed right after a commit of its branch that passed, the skipped range is tested by
halves until the first failing commit is named; then that commit is tested once more
before it is named (a failure that does not repeat is flaky: no culprit, and it says so).

The state of each bisection is a row of ``bisections`` (its first-parent commits, the
known-good index ``low``, the known-bad index ``high``, the commit under test), and each
step is taken from what the store says, so a dispatcher that restarts in the middle
carries on from there. Its jobs run at BISECT_PRIORITY, after every new push, and a new
push does not cancel it. At most ceil(log2(range)) + 1 jobs: the halving, and the re-run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from orchestrator.errors import InvalidTransition
from orchestrator.models import BISECT_PRIORITY, NORMAL_PRIORITY, Job, JobStatus, iso, parse_iso, utcnow
from orchestrator.store import Store

log = logging.getLogger("orchestrator.bisection")

SEARCH, VERIFY, FOUND, FLAKY, ABANDONED = "search", "verify", "found", "flaky", "abandoned"
_COLUMNS = "id, repository, branch, bad_job, good, commits, low, high, probe, phase, culprit, jobs, reason, " \
           "started_at, finished_at"


@dataclass(frozen=True)
class Bisection:
    id: int
    repository: str
    branch: str
    bad_job: int
    good: str                 # the last commit of the branch that passed
    commits: tuple[str, ...]  # after ``good`` up to the failing newest, first parents, oldest first
    low: int                  # index of the newest commit known good (-1: ``good``)
    high: int                 # index of the oldest commit known bad
    probe: str | None         # the commit whose result is awaited
    phase: str
    culprit: str | None = None
    jobs: int = 0             # jobs this bisection started
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def budget(self) -> int:
        return math.ceil(math.log2(len(self.commits))) + 1

    def document(self) -> dict:
        """What result.json (of the culprit), the API and the webhook say of it."""
        return {"id": self.id, "repository": self.repository, "branch": self.branch, "good": self.good,
                "bad": self.commits[-1],
                "range": len(self.commits), "phase": self.phase, "culprit": self.culprit, "jobs": self.jobs,
                "reason": self.reason, "started_at": iso(self.started_at), "finished_at": iso(self.finished_at)}


class Bisector:
    def __init__(self, store: Store, coalescing: frozenset[str], first_parent: Callable[[str, str, str], list[str]],
                 named: Callable[[Job, Bisection], None] = lambda job, b: None):
        """``first_parent(repository, good, bad)``: the commits between (mirror.py);
        ``named(job, bisection)``: told when a bisection ends with a culprit."""
        self.store = store
        self.coalescing = coalescing
        self.first_parent = first_parent
        self.named = named

    # -- starting one ------------------------------------------------------------------

    def consider(self, job: Job) -> Bisection | None:
        """Start a bisection if ``job`` (final) is a coalesced newest commit that failed
        right after a pass on one of its branches, with untested commits between."""
        if job.repository not in self.coalescing or job.priority != NORMAL_PRIORITY or job.status is not JobStatus.FAILED:
            return None
        for branch in job.branches:
            last = self.store.latest_on_branch(job.repository, branch, final=True, before=job.id)
            if last is None or last.status is not JobStatus.PASSED:
                continue
            commits = self.first_parent(job.repository, last.commit, job.commit)
            if len(commits) < 2 or commits[-1] != job.commit:
                continue
            return self._insert(job, branch, last.commit, commits)
        return None

    def _insert(self, job: Job, branch: str, good: str, commits: list[str]) -> Bisection | None:
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO bisections (repository, branch, bad_job, good, commits, low, high, phase,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.repository, branch, job.id, good, json.dumps(commits), -1, len(commits) - 1, SEARCH,
                 iso(utcnow())))
            if cur.rowcount != 1:
                return None
        log.info("%s/%s: bisecting %d commits after %s to find where it began to fail",
                 job.repository, branch, len(commits), good[:12])
        return self.get(cur.lastrowid)

    def catch_up(self) -> None:
        """After a restart: the newest tested job of each branch, in case the process
        stopped between its failure and the start of its bisection."""
        for repository in sorted(self.coalescing):
            for branch in sorted(self.store.heads(repository) or {}):
                job = self.store.latest_on_branch(repository, branch, final=True)
                if job is not None and job.status is JobStatus.FAILED and self.of_job(job.id) is None:
                    self.consider(job)

    # -- taking steps ------------------------------------------------------------------

    def advance(self) -> None:
        """One step of every bisection whose awaited result is in (cheap when none runs)."""
        for bisection in self.running():
            try:
                self._advance(bisection)
            except InvalidTransition as exc:   # a job changed underneath (a user retried it): next time
                log.debug("bisection %s: %s", bisection.id, exc)

    def _advance(self, b: Bisection) -> None:
        if b.probe is not None:
            job = self.store.by_commit(b.repository, b.probe)
            if job is None:
                return self._end(b, ABANDONED, reason=f"the job of {b.probe[:12]} is gone")
            if not job.status.final or job.status is JobStatus.SKIPPED:
                return None
            if b.phase == VERIFY:
                return self._verified(b, job)
            index = b.commits.index(b.probe)
            if job.status is JobStatus.PASSED:
                b = replace(b, low=index, probe=None)
            elif job.status is JobStatus.FAILED:
                b = replace(b, high=index, probe=None)
            else:
                return self._end(b, ABANDONED, reason=f"{b.probe[:12]} ended {job.status.value}: "
                                                      "its tests gave no verdict to bisect on")
        if b.high - b.low > 1:
            return self._probe(b, SEARCH, b.commits[(b.low + b.high) // 2])
        return self._probe(b, VERIFY, b.commits[b.high])

    def _probe(self, b: Bisection, phase: str, sha: str) -> None:
        """Test ``sha``: a commit already tested in the search (not for the re-run) is read
        as it is; a skipped one is queued at the bisection's priority."""
        job = self.store.by_commit(b.repository, sha)
        if job is None:
            return self._end(b, ABANDONED, reason=f"{sha[:12]} has no job")
        started = 0
        if phase == VERIFY or job.status in (JobStatus.SKIPPED, JobStatus.CANCELLED, JobStatus.ERROR,
                                             JobStatus.TIMED_OUT):
            if job.status.final:
                self.store.move(job, JobStatus.QUEUED, priority=BISECT_PRIORITY,
                                message=f"bisecting {b.good[:12]}..{b.commits[-1][:12]}")
                started = 1
        self._save(replace(b, phase=phase, probe=sha, jobs=b.jobs + started))

    def _verified(self, b: Bisection, job: Job) -> None:
        if job.status is JobStatus.FAILED:
            found = self._end(b, FOUND, culprit=job.commit)
            marked = self.store.apply(job, replace(job, culprit=found.document()))
            log.info("%s/%s: %s is the first failing commit (%d jobs)", b.repository, b.branch, job.commit[:12],
                     found.jobs)
            self.named(marked, found)
        elif job.status is JobStatus.PASSED:
            self._end(b, FLAKY, reason=f"{job.commit[:12]} failed, then passed when tested again: "
                                       "the failure is flaky, no culprit is named")
        else:
            self._end(b, ABANDONED, reason=f"the re-run of {job.commit[:12]} ended {job.status.value}")

    def _end(self, b: Bisection, phase: str, culprit: str | None = None, reason: str | None = None) -> Bisection:
        ended = replace(b, phase=phase, culprit=culprit, reason=reason, probe=None, finished_at=utcnow())
        if phase != FOUND:
            log.warning("%s/%s: bisection %s ended %s: %s", b.repository, b.branch, b.id, phase, reason)
        self._save(ended)
        return ended

    # -- the table ---------------------------------------------------------------------

    def running(self) -> list[Bisection]:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM bisections WHERE phase IN (?, ?) ORDER BY id", (SEARCH, VERIFY))
        return [_row(r) for r in rows]

    def get(self, bisection_id: int) -> Bisection | None:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM bisections WHERE id = ?", (bisection_id,))
        return _row(rows[0]) if rows else None

    def of_job(self, job_id: int) -> Bisection | None:
        """The bisection started by the failure of job ``job_id``, if any."""
        rows = self.store.query(f"SELECT {_COLUMNS} FROM bisections WHERE bad_job = ?", (job_id,))
        return _row(rows[0]) if rows else None

    def _save(self, b: Bisection) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE bisections SET low = ?, high = ?, probe = ?, phase = ?, culprit = ?, jobs = ?,"
                       " reason = ?, finished_at = ? WHERE id = ?",
                       (b.low, b.high, b.probe, b.phase, b.culprit, b.jobs, b.reason, iso(b.finished_at), b.id))


def recent(store: Store, repository: str | None = None, limit: int = 20) -> list[Bisection]:
    """Newest first."""
    where, args = ("WHERE repository = ?", [repository]) if repository else ("", [])
    rows = store.query(f"SELECT {_COLUMNS} FROM bisections {where} ORDER BY id DESC LIMIT ?", [*args, limit])
    return [_row(r) for r in rows]


def _row(row: tuple) -> Bisection:
    (id_, repository, branch, bad_job, good, commits, low, high, probe, phase, culprit, jobs, reason,
     started_at, finished_at) = row
    return Bisection(id_, repository, branch, bad_job, good, tuple(json.loads(commits)), low, high, probe, phase,
                     culprit, jobs, reason, parse_iso(started_at), parse_iso(finished_at))
