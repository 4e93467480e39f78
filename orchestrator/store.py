"""SQLite (WAL): the job queue and the only source of truth for job state.

A job row is written when its commit is queued. Every status change goes through
``models.transition`` and is saved with a compare-and-swap on the previous status, in its
own transaction, before the caller acts on it. Observer progress (the last seen head of
each branch) is saved in the same transaction as the jobs it produced, so a crash can
neither skip a commit nor queue it twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator import schema
from orchestrator.errors import InvalidTransition, UnknownCommit, UsageError
from orchestrator.models import NORMAL_PRIORITY, Job, JobStatus, iso, transition, utcnow


@dataclass(frozen=True)
class NewCommit:
    """A commit to queue: what the observer found, or what a user submitted."""

    sha: str
    subject: str
    branches: tuple[str, ...]
    priority: int = NORMAL_PRIORITY


class Store:
    """One connection shared by the threads of one process, serialised by a lock;
    other processes (``orchestrator submit`` beside a running dispatcher) wait on
    SQLite's own lock through ``busy_timeout``."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        schema.create(self._db)
        # told of every saved change (the connection, the job before and after) inside its
        # transaction: the webhook outbox is written with the state change it tells of
        self.on_change: Callable[[sqlite3.Connection, Job, Job], None] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- identity ---------------------------------------------------------------------

    def instance_id(self) -> str:
        """A random id made once per state_dir: the ``orchestrator.instance`` label."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
            if row:
                return row[0]
            value = uuid.uuid4().hex[:16]
            db.execute("INSERT INTO meta (key, value) VALUES ('instance', ?)", (value,))
            return value

    # -- observer progress ------------------------------------------------------------

    def heads(self, repository: str) -> dict[str, str] | None:
        """The branch heads seen last, or None if the repository was never observed."""
        with self._lock:
            if not self._db.execute("SELECT 1 FROM repositories WHERE name = ?", (repository,)).fetchone():
                return None
            rows = self._db.execute("SELECT branch, sha FROM heads WHERE repository = ?", (repository,))
            return dict(rows.fetchall())

    def record_commits(
        self, repository: str, commits: Sequence[NewCommit], heads: dict[str, str] | None = None
    ) -> list[int]:
        """Queue each commit once (a known commit gains the new branch names) and, when
        ``heads`` is given, make it the repository's observed progress, atomically.
        Returns the ids of the jobs that were created."""
        now = iso(utcnow())
        created: list[int] = []
        with self._tx() as db:
            for commit in commits:
                row = db.execute(
                    "SELECT id, branches FROM jobs WHERE repository = ? AND commit_sha = ?",
                    (repository, commit.sha),
                ).fetchone()
                if row is None:
                    cur = db.execute(
                        "INSERT INTO jobs (repository, commit_sha, branches, subject, status, queued_at, priority)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (repository, commit.sha, json.dumps(sorted(set(commit.branches))),
                         commit.subject, JobStatus.QUEUED.value, now, commit.priority),
                    )
                    created.append(cur.lastrowid)
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

    # -- jobs ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {schema.COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return schema.job(row) if row else None

    def find(self, prefix: str, repository: str | None = None) -> Job:
        """The one job whose commit starts with ``prefix``; raise if none or several."""
        prefix = prefix.lower()
        if not (4 <= len(prefix) <= 40) or any(c not in "0123456789abcdef" for c in prefix):
            raise UsageError(f"{prefix[:50]!r} is not a commit sha or a prefix of one (4 to 40 hex digits)")
        sql = f"SELECT {schema.COLUMNS} FROM jobs WHERE commit_sha >= ? AND commit_sha < ?"
        args: list[object] = [prefix, prefix + "g"]
        if repository:
            sql += " AND repository = ?"
            args.append(repository)
        with self._lock:
            rows = self._db.execute(sql + " LIMIT 2", args).fetchall()
        if not rows:
            raise UnknownCommit(f"no job for a commit starting with {prefix}")
        if len(rows) > 1:
            raise UnknownCommit(f"commit prefix {prefix} is ambiguous: give more digits or --repo")
        return schema.job(rows[0])

    def list_jobs(
        self, repository: str | None = None, status: JobStatus | None = None,
        branch: str | None = None, limit: int = 50, offset: int = 0,
    ) -> list[Job]:
        """Newest first."""
        where, args = [], []
        if repository:
            where.append("repository = ?")
            args.append(repository)
        if status:
            where.append("status = ?")
            args.append(status.value)
        if branch:
            where.append("EXISTS (SELECT 1 FROM json_each(jobs.branches) WHERE value = ?)")
            args.append(branch)
        sql = f"SELECT {schema.COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit, offset)).fetchall()
        return [schema.job(r) for r in rows]

    def with_status(self, *statuses: JobStatus) -> list[Job]:
        """Oldest first."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {schema.COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY id",
                [s.value for s in statuses],
            ).fetchall()
        return [schema.job(r) for r in rows]

    def attempt_history(self, job_id: int) -> list[dict[str, object]]:
        """Every ended attempt of a job, oldest first: why each retry happened."""
        with self._lock:
            rows = self._db.execute(
                "SELECT attempt, outcome, message, container_id, started_at, ended_at FROM attempts"
                " WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        keys = ("attempt", "outcome", "message", "container", "started_at", "ended_at")
        return [dict(zip(keys, row)) for row in rows]

    def count(self, status: JobStatus) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)).fetchone()[0]

    def has_queued(self) -> bool:
        """A read without the write lock: cheap enough to ask many times a second."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is not None

    def request_cancel(self, job: Job) -> Job:
        """Cancel a job: at once if queued; if running, flag it for the dispatcher, which
        kills the container and records the result."""
        if job.status is JobStatus.QUEUED:
            return self.move(job, JobStatus.CANCELLED, message="cancelled before it ran")
        if job.status is not JobStatus.RUNNING:
            raise InvalidTransition(f"job {job.id} is already {job.status.value}")
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job.id,))
        return job

    def cancel_requested(self, job_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def latest_on_branch(self, repository: str, branch: str, final: bool = False, before: int | None = None) -> Job | None:
        """The newest job of ``branch`` (optionally only final ones, older than ``before``)."""
        sql = (f"SELECT {schema.COLUMNS} FROM jobs WHERE repository = ? AND "
               "EXISTS (SELECT 1 FROM json_each(jobs.branches) WHERE value = ?)")
        args: list[object] = [repository, branch]
        if final:
            sql += " AND status IN ('passed', 'failed', 'error', 'timed_out')"
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        with self._lock:
            row = self._db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return schema.job(row) if row else None

    def next_queued(self, besides: frozenset[int] = frozenset()) -> Job | None:
        """The job ``claim_next`` would take, without taking it; the next after ``besides``
        (jobs already started warm)."""
        marks = ",".join("?" * len(besides))
        with self._lock:
            row = self._db.execute(
                f"SELECT {schema.COLUMNS} FROM jobs WHERE status = 'queued' AND id NOT IN ({marks}) "
                "ORDER BY priority DESC, id LIMIT 1", tuple(besides)).fetchone()
        return schema.job(row) if row else None

    def queued_on_branches(self, repository: str, branches: Sequence[str], priority: int) -> list[Job]:
        """Queued jobs of ``repository`` at ``priority`` on any of ``branches``, oldest first."""
        marks = ",".join("?" * len(branches))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {schema.COLUMNS} FROM jobs WHERE status = 'queued' AND repository = ? AND priority = ? "
                f"AND EXISTS (SELECT 1 FROM json_each(jobs.branches) WHERE value IN ({marks})) ORDER BY id",
                (repository, priority, *branches)).fetchall()
        return [schema.job(r) for r in rows]

    def transaction(self):
        """One write transaction, for a module that owns a table of its own (bisection.py)."""
        return self._tx()

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        """A read, for a module that owns a table of its own."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def by_commit(self, repository: str, sha: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {schema.COLUMNS} FROM jobs WHERE repository = ? AND commit_sha = ?",
                                   (repository, sha)).fetchone()
        return schema.job(row) if row else None

    def claim(self, job: Job) -> Job | None:
        """Move this queued job to running (a new attempt), unless it changed meanwhile."""
        try:
            return self.move(job, JobStatus.RUNNING)
        except InvalidTransition:
            return None

    def claim_next(self) -> Job | None:
        """Move the oldest queued job to running (a new attempt) and return it."""
        while (job := self.next_queued()) is not None:
            claimed = self.claim(job)
            if claimed is not None:
                return claimed
        return None

    def move(self, job: Job, status: JobStatus, **changes: object) -> Job:
        """Apply one transition, if nobody else changed the job meanwhile."""
        with self._tx() as db:
            current = schema.job(db.execute(f"SELECT {schema.COLUMNS} FROM jobs WHERE id = ?", (job.id,)).fetchone())
            if current.status is not job.status or current.attempts != job.attempts:
                raise InvalidTransition(
                    f"job {job.id} is {current.status.value} (attempt {current.attempts}), "
                    f"not {job.status.value} (attempt {job.attempts})"
                )
            new = transition(current, status, utcnow(), **changes)
            schema.save(db, current, new)
            if self.on_change is not None:
                self.on_change(db, current, new)
            return new

    def apply(self, old: Job, new: Job) -> Job:
        """Save ``new`` (a transition made by ``models.transition``, or facts about a running
        attempt: its container, image, start) if the job is still ``old`` in the store."""
        with self._tx() as db:
            schema.save(db, old, new)
            if self.on_change is not None:
                self.on_change(db, old, new)
        return new

    def previous_verdict(self, job: Job) -> JobStatus | None:
        """The final status of the newest earlier job on any of ``job``'s branches (what a
        notification calls a recovery from)."""
        earlier = [self.latest_on_branch(job.repository, b, final=True, before=job.id) for b in job.branches]
        newest = max((j for j in earlier if j is not None), key=lambda j: j.id, default=None)
        return newest.status if newest else None
