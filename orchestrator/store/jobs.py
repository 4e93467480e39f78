"""The job table: its fields, listed once, and every read and write of jobs and of the
observer's progress.

Every status change goes through ``models.transition`` and is saved with a compare-and-swap
on the previous status and attempt, in its own transaction, before the caller acts on it.
The observer's progress (the last seen head of each branch) is saved in the same
transaction as the jobs it produced, so a crash can neither skip a commit nor queue it twice.

A job's fields are listed once, in fields.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.errors import InvalidTransition, UnknownCommit, UsageError
from orchestrator.models import (
    NORMAL_PRIORITY,
    PUSH,
    TESTED_STATUSES,
    Job,
    JobStatus,
    iso,
    transition,
    utcnow,
)
from orchestrator.store.db import Connection, Database, marks
from orchestrator.store.fields import COLUMNS, SAVED, UPDATE, job_of
from orchestrator.store.pauses import NOT_PAUSED

_TESTED = tuple(s.value for s in TESTED_STATUSES)
_ON_BRANCH = "EXISTS (SELECT 1 FROM json_each(jobs.branches) WHERE value = ?)"


@dataclass(frozen=True)
class NewCommit:
    """A commit to queue: what the observer found, or what a user submitted."""

    sha: str
    subject: str
    branches: tuple[str, ...]
    priority: int = NORMAL_PRIORITY
    pythons: tuple[str, ...] = ("",)  # a job for each: the variants of a repository with several Pythons
    trigger: str = PUSH


Changed = Callable[[Connection, Job, Job], None]


class Jobs:
    """The jobs and the observer's progress in ``db``. ``changed(db, old, new)`` is told
    of every saved change inside its transaction (the webhook outbox is written with the
    state change it tells of)."""

    def __init__(self, db: Database, changed: Changed | None = None):
        self._db = db
        self._changed = changed
        self.holder: str | None = None  # this dispatcher's name, where several share the store

    def instance_id(self) -> str:
        return self._db.instance_id()

    # -- observer progress ------------------------------------------------------------

    def heads(self, repository: str) -> dict[str, str] | None:
        """The branch heads seen last, or None if the repository was never observed."""
        if not self._db.read("SELECT 1 FROM repositories WHERE name = ?", (repository,)):
            return None
        return dict(self._db.read("SELECT branch, sha FROM heads WHERE repository = ?", (repository,)))

    def record_commits(
        self, repository: str, commits: Sequence[NewCommit], heads: dict[str, str] | None = None
    ) -> list[int]:
        """Queue each commit once (a known commit gains the new branch names) and, when
        ``heads`` is given, make it the repository's observed progress, atomically.
        Returns the ids of the jobs that were created."""
        now = iso(utcnow())
        created: list[int] = []
        with self._db.write() as db:
            for commit in commits:
                for python in commit.pythons:
                    row = db.execute(
                        "SELECT id, branches FROM jobs WHERE repository = ? AND commit_sha = ? AND python = ?",
                        (repository, commit.sha, python),
                    ).fetchone()
                    if row is None:
                        cur = db.execute(
                            "INSERT INTO jobs (repository, commit_sha, branches, subject, status, queued_at, priority,"
                            " python, trigger_kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                repository,
                                commit.sha,
                                json.dumps(sorted(set(commit.branches))),
                                commit.subject,
                                JobStatus.QUEUED.value,
                                now,
                                commit.priority,
                                python,
                                commit.trigger,
                            ),
                        )
                        created.append(int(cur.lastrowid or 0))
                    else:
                        merged = sorted(set(json.loads(row[1])) | set(commit.branches))
                        db.execute("UPDATE jobs SET branches = ? WHERE id = ?", (json.dumps(merged), row[0]))
            if heads is not None:
                db.execute("INSERT OR IGNORE INTO repositories (name, first_seen_at) VALUES (?, ?)", (repository, now))
                db.execute("DELETE FROM heads WHERE repository = ?", (repository,))
                db.executemany(
                    "INSERT INTO heads (repository, branch, sha) VALUES (?, ?, ?)",
                    [(repository, b, s) for b, s in heads.items()],
                )
        return created

    # -- reading jobs -------------------------------------------------------------------

    def _jobs(self, where: str = "", args: Sequence[object] = (), tail: str = "") -> list[Job]:
        return [job_of(r) for r in self._db.read(f"SELECT {COLUMNS} FROM jobs {where} {tail}", args)]

    def get(self, job_id: int) -> Job | None:
        found = self._jobs("WHERE id = ?", (job_id,))
        return found[0] if found else None

    def find(self, prefix: str, repository: str | None = None, python: str | None = None) -> Job:
        """The one job whose commit starts with ``prefix``: the variant on ``python``, or
        (None) the commit's first; raise if none, or if several commits match."""
        found = self.variants(prefix, repository)
        if python is None:
            return found[0]
        for job in found:
            if job.python == python:
                return job
        ran = ", ".join(j.python for j in found if j.python) or "its repository's one Python"
        raise UnknownCommit(f"commit {found[0].commit[:12]} has no variant on Python {python[:20]} (it ran on {ran})")

    def variants(self, prefix: str, repository: str | None = None) -> list[Job]:
        """Every job of the one commit whose sha starts with ``prefix`` (a variant per
        Python, or its one job), in the order they were queued; raise if none or several."""
        prefix = prefix.lower()
        if not (4 <= len(prefix) <= 40) or any(c not in "0123456789abcdef" for c in prefix):
            raise UsageError(f"{prefix[:50]!r} is not a commit sha or a prefix of one (4 to 40 hex digits)")
        where, args = "WHERE commit_sha >= ? AND commit_sha < ?", [prefix, prefix + "g"]
        if repository:
            where, args = where + " AND repository = ?", [*args, repository]
        found = self._jobs(where, args, "ORDER BY id LIMIT 65")
        if not found:
            raise UnknownCommit(f"no job for a commit starting with {prefix}")
        if len({(j.repository, j.commit) for j in found}) > 1:
            raise UnknownCommit(f"commit prefix {prefix} is ambiguous: give more digits or --repo")
        return found

    def list_jobs(
        self,
        repository: str | None = None,
        status: JobStatus | None = None,
        branch: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        """Newest first."""
        where: list[str] = []
        args: list[object] = []
        for condition, value in (
            ("repository = ?", repository),
            ("status = ?", status.value if status else None),
            (_ON_BRANCH, branch),
        ):
            if value:
                where.append(condition)
                args.append(value)
        return self._jobs(
            "WHERE " + " AND ".join(where) if where else "", [*args, limit, offset], "ORDER BY id DESC LIMIT ? OFFSET ?"
        )

    def with_status(self, *statuses: JobStatus) -> list[Job]:
        """Oldest first."""
        return self._jobs(f"WHERE status IN ({marks(statuses)})", [s.value for s in statuses], "ORDER BY id")

    def by_commit(self, repository: str, sha: str, python: str = "") -> Job | None:
        """The job of a commit on ``python`` ("": its repository's one Python)."""
        found = self._jobs("WHERE repository = ? AND commit_sha = ? AND python = ?", (repository, sha, python))
        return found[0] if found else None

    def of_commit(self, repository: str, sha: str) -> list[Job]:
        """Every variant of a commit, in the order they were queued."""
        return self._jobs("WHERE repository = ? AND commit_sha = ?", (repository, sha), "ORDER BY id")

    def attempt_history(self, job_id: int) -> list[dict[str, object]]:
        """Every ended attempt of a job, oldest first: why each retry happened."""
        rows = self._db.read(
            "SELECT attempt, outcome, message, container_id, started_at, ended_at FROM attempts"
            " WHERE job_id = ? ORDER BY attempt",
            (job_id,),
        )
        keys = ("attempt", "outcome", "message", "container", "started_at", "ended_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def count(self, status: JobStatus) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,))[0][0])

    def has_queued(self) -> bool:
        """Whether a job waits that may start (not of a paused repository): cheap enough to
        ask many times a second."""
        return bool(self._db.read(f"SELECT 1 FROM jobs WHERE status = 'queued' AND {NOT_PAUSED} LIMIT 1"))

    def cancel_requested(self, job_id: int) -> bool:
        rows = self._db.read("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def latest_on_branch(
        self, repository: str, branch: str, final: bool = False, before: int | None = None, python: str | None = None
    ) -> Job | None:
        """The newest job of ``branch`` (optionally only tested ones, older than ``before``,
        of the variant on ``python``)."""
        where, args = f"WHERE repository = ? AND {_ON_BRANCH}", list[object]([repository, branch])
        if python is not None:
            where, args = where + " AND python = ?", [*args, python]
        if final:
            where, args = where + f" AND status IN ({marks(_TESTED)})", [*args, *_TESTED]
        if before is not None:
            where, args = where + " AND id < ?", [*args, before]
        found = self._jobs(where, args, "ORDER BY id DESC LIMIT 1")
        return found[0] if found else None

    def next_queued(self, besides: frozenset[int] = frozenset()) -> Job | None:
        """The job ``claim_next`` would take, without taking it; the next after ``besides``
        (jobs already started warm). A paused repository's jobs wait."""
        found = self._jobs(
            f"WHERE status = 'queued' AND {NOT_PAUSED} AND id NOT IN ({marks(tuple(besides))})",
            tuple(besides),
            "ORDER BY priority DESC, id LIMIT 1",
        )
        return found[0] if found else None

    def queued_on_branches(self, repository: str, branches: Sequence[str], priority: int) -> list[Job]:
        """Queued jobs of ``repository`` at ``priority`` on any of ``branches``, oldest first."""
        return self._jobs(
            f"WHERE status = 'queued' AND repository = ? AND priority = ? AND EXISTS (SELECT 1 FROM "
            f"json_each(jobs.branches) WHERE value IN ({marks(branches)}))",
            (repository, priority, *branches),
            "ORDER BY id",
        )

    def previous_verdict(self, job: Job) -> JobStatus | None:
        """The final status of the newest earlier job on any of ``job``'s branches, on its
        Python (what a notification calls a recovery from)."""
        earlier = [
            self.latest_on_branch(job.repository, b, final=True, before=job.id, python=job.python) for b in job.branches
        ]
        newest = max((j for j in earlier if j is not None), key=lambda j: j.id, default=None)
        return newest.status if newest else None

    # -- what the pictures read ----------------------------------------------------------

    def pass_rate_by_day(self, repository: str, branch: str | None, since: str) -> list[tuple[str, int, int]]:
        """(day, passed, tested) for each day since ``since`` that had a run, oldest first."""
        sql = (
            "SELECT substr(finished_at, 1, 10), SUM(status = 'passed'), COUNT(*) FROM jobs WHERE repository = ?"
            f" AND status IN ({marks(_TESTED)}) AND finished_at >= ?"
        )
        args: list[object] = [repository, *_TESTED, since]
        if branch is not None:
            sql, args = sql + f" AND {_ON_BRANCH}", [*args, branch]
        return [
            (day, int(passed), int(total)) for day, passed, total in self._db.read(sql + " GROUP BY 1 ORDER BY 1", args)
        ]

    def spans(self, since: str) -> list[tuple[str | None, str | None, str | None, str]]:
        """(queued_at, started_at, finished_at, status) of every job not finished before ``since``."""
        return [
            tuple(r)
            for r in self._db.read(
                "SELECT queued_at, started_at, finished_at, status FROM jobs"
                " WHERE finished_at IS NULL OR finished_at >= ?",
                (since,),
            )
        ]

    # -- changing jobs ------------------------------------------------------------------

    def request_cancel(self, job: Job) -> Job:
        """Cancel a job: at once if queued; if running, flag it for the dispatcher, which
        kills the container and records the result."""
        if job.status is JobStatus.QUEUED:
            return self.move(job, JobStatus.CANCELLED, message="cancelled before it ran")
        if job.status is not JobStatus.RUNNING:
            raise InvalidTransition(f"job {job.id} is already {job.status.value}")
        with self._db.write() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job.id,))
        return job

    def claim(self, job: Job) -> Job | None:
        """Move this queued job to running (a new attempt), unless it changed meanwhile or
        its repository was paused."""
        try:
            return self.move(job, JobStatus.RUNNING, dispatcher=self.holder)
        except InvalidTransition:
            return None

    def claim_next(self) -> Job | None:
        """Move the oldest queued job to running (a new attempt) and return it."""
        while (found := self.next_queued()) is not None:
            claimed = self.claim(found)
            if claimed is not None:
                return claimed
        return None

    def move(self, old: Job, status: JobStatus, **changes: object) -> Job:
        """Apply one transition, if nobody else changed the job meanwhile."""
        with self._db.write() as db:
            current = job_of(db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (old.id,)).fetchone())
            if current.status is not old.status or current.attempts != old.attempts:
                raise InvalidTransition(
                    f"job {old.id} is {current.status.value} (attempt {current.attempts}), "
                    f"not {old.status.value} (attempt {old.attempts})"
                )
            if (
                status is JobStatus.RUNNING
                and db.execute("SELECT 1 FROM pauses WHERE repository = ?", (current.repository,)).fetchone()
            ):
                raise InvalidTransition(f"job {old.id}: {current.repository} is paused")
            new = transition(current, status, utcnow(), **changes)
            self._save(db, current, new)
            return new

    def apply(self, old: Job, new: Job) -> Job:
        """Save ``new`` (a transition made by ``models.transition``, or facts about a running
        attempt: its container, image, start) if the job is still ``old`` in the store."""
        with self._db.write() as db:
            self._save(db, old, new)
        return new

    def _save(self, db: Connection, old: Job, new: Job) -> None:
        """The compare-and-swap write of ``new`` over ``old`` (status and attempt); an attempt
        that ends is recorded in ``attempts``; then ``changed``, in the same transaction."""
        values = [f.write(getattr(new, f.attribute)) for f in SAVED]
        cur = db.execute(UPDATE, (*values, new.status.value, old.id, old.status.value, old.attempts))
        if cur.rowcount != 1:
            raise InvalidTransition(f"job {old.id} changed underneath (was {old.status.value})")
        if old.status is JobStatus.RUNNING and new.status is not JobStatus.RUNNING:
            db.execute(
                "INSERT OR REPLACE INTO attempts (job_id, attempt, outcome, message, container_id,"
                " started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    old.id,
                    old.attempts,
                    "retried" if new.status is JobStatus.QUEUED else new.status.value,
                    new.message,
                    old.container_id,
                    iso(old.started_at),
                    iso(new.finished_at or utcnow()),
                ),
            )
        if self._changed is not None:
            self._changed(db, old, new)
