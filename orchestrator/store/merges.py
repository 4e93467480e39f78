"""The merge queue's requests: a row each, in the order they are to be merged, with the
candidate under test (the target plus the request, and the requests ahead of it), so that a
dispatcher that restarts in the middle carries on from there (merge_queue.py takes the
steps).

A request's life: ``queued`` (waiting for a candidate), ``testing`` (its candidate made and
its job queued), ``merging`` (its candidate passed, and the push of the target to it is
about to be made or was made: written before the push, so that recovery asks the repository
which), then ``merged``, ``rejected`` or ``cancelled``. Every change is a compare-and-swap on
the state it was read in, so two steps never act on one request twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from orchestrator.models import iso, parse_iso, utcnow
from orchestrator.store import outbox
from orchestrator.store.db import Database

QUEUED, TESTING, MERGING = "queued", "testing", "merging"
MERGED, REJECTED, CANCELLED = "merged", "rejected", "cancelled"
OPEN = (QUEUED, TESTING, MERGING)
STATES = (*OPEN, MERGED, REJECTED, CANCELLED)

TABLE = """
CREATE TABLE IF NOT EXISTS merges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    target TEXT NOT NULL,
    sha TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL,
    base TEXT,
    candidate TEXT,
    job_id INTEGER,
    message TEXT,
    requested_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    ended_at TEXT
)
"""


@dataclass(frozen=True)
class Merge:
    id: int
    repository: str
    branch: str  # the branch whose commits are asked for
    target: str  # the branch they go into
    sha: str  # the branch's head when asked (a later push makes a new request of it)
    state: str
    position: int  # the order of the queue: the lowest open one is at its head
    base: str | None = None  # what the candidate was made on: the target, or the candidate ahead
    candidate: str | None = None  # the commit under test, made in the mirror
    job_id: int | None = None
    message: str | None = None  # why it was rejected or cancelled
    requested_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN

    def document(self, now: datetime | None = None) -> dict[str, Any]:
        """What the API, `orchestrator merges` and the webhooks say of it."""
        end = self.ended_at or now or utcnow()
        return {
            "id": self.id,
            "repository": self.repository,
            "branch": self.branch,
            "target": self.target,
            "sha": self.sha,
            "state": self.state,
            "candidate": self.candidate,
            "base": self.base,
            "job_id": self.job_id,
            "message": self.message,
            "requested_at": iso(self.requested_at),
            "ended_at": iso(self.ended_at),
            "waited_s": round((end - self.requested_at).total_seconds(), 1) if self.requested_at else None,
        }


_COLUMNS = ", ".join(f.name for f in fields(Merge))


def _merge(row: tuple) -> Merge:
    values = dict(zip([f.name for f in fields(Merge)], row, strict=True))
    for name in ("requested_at", "updated_at", "ended_at"):
        values[name] = parse_iso(values[name])
    return Merge(**values)


class Merges:
    def __init__(self, db: Database):
        self._db = db
        # what a change makes news of (webhook deliveries), written in the change's transaction
        self.news: Callable[[Merge, Merge], Sequence[outbox.News]] | None = None

    def request(self, repository: str, branch: str, target: str, sha: str) -> tuple[Merge, bool]:
        """Ask for ``branch`` at ``sha`` to enter ``target``: a new request at the back of
        the queue, or, for a branch with one open already, that one at ``sha`` now and moved
        to the back (its candidate is dropped: a request never changes silently). Whether
        anything changed (the same branch at the same sha, asked again, changes nothing)."""
        now = iso(utcnow())
        with self._db.write() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM merges WHERE repository = ? AND branch = ? AND target = ? AND state IN"
                " (?, ?, ?) ORDER BY id DESC LIMIT 1",
                (repository, branch, target, *OPEN),
            ).fetchone()
            back = (db.execute("SELECT COALESCE(MAX(position), 0) FROM merges").fetchone()[0] or 0) + 1
            if row is not None:
                found = _merge(row)
                if found.sha == sha:
                    return found, False
                db.execute(
                    "UPDATE merges SET sha = ?, state = ?, position = ?, base = NULL, candidate = NULL, job_id = NULL,"
                    " message = ?, updated_at = ? WHERE id = ?",
                    (sha, QUEUED, back, f"updated to {sha[:12]}: back to the end of the queue", now, found.id),
                )
                merge_id = found.id
            else:
                cur = db.execute(
                    "INSERT INTO merges (repository, branch, target, sha, state, position, requested_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (repository, branch, target, sha, QUEUED, back, now, now),
                )
                merge_id = int(cur.lastrowid or 0)
            made = db.execute(f"SELECT {_COLUMNS} FROM merges WHERE id = ?", (merge_id,)).fetchone()
        return _merge(made), True

    def get(self, merge_id: int) -> Merge | None:
        rows = self._db.read(f"SELECT {_COLUMNS} FROM merges WHERE id = ?", (merge_id,))
        return _merge(rows[0]) if rows else None

    def open_requests(self, repository: str | None = None) -> list[Merge]:
        """The open requests in queue order (of every repository, or of one)."""
        where, args = "state IN (?, ?, ?)", list(OPEN)
        if repository is not None:
            where, args = where + " AND repository = ?", [*args, repository]
        rows = self._db.read(f"SELECT {_COLUMNS} FROM merges WHERE {where} ORDER BY position", args)
        return [_merge(r) for r in rows]

    def has_open(self) -> bool:
        return bool(self._db.read("SELECT 1 FROM merges WHERE state IN (?, ?, ?) LIMIT 1", OPEN))

    def recent(self, repository: str | None = None, limit: int = 50) -> list[Merge]:
        """Open requests in queue order, then the ended ones, newest first."""
        args: list[object] = [] if repository is None else [repository]
        where = "" if repository is None else "WHERE repository = ?"
        rows = self._db.read(
            f"SELECT {_COLUMNS} FROM merges {where} ORDER BY state NOT IN ('queued', 'testing', 'merging'),"
            " CASE WHEN state IN ('queued', 'testing', 'merging') THEN position ELSE -id END LIMIT ?",
            [*args, limit],
        )
        return [_merge(r) for r in rows]

    def last_for(self, repository: str, branch: str) -> Merge | None:
        rows = self._db.read(
            f"SELECT {_COLUMNS} FROM merges WHERE repository = ? AND branch = ? ORDER BY id DESC LIMIT 1",
            (repository, branch),
        )
        return _merge(rows[0]) if rows else None

    def move(self, old: Merge, state: str, **changes: Any) -> Merge | None:
        """``old`` in ``state`` with ``changes``, if it is still as it was read (its state and
        candidate); None if it changed meanwhile (the caller reads it again)."""
        new = replace(old, state=state, updated_at=utcnow(), **changes)
        if state not in OPEN and new.ended_at is None:
            new = replace(new, ended_at=new.updated_at)
        with self._db.write() as db:
            cur = db.execute(
                "UPDATE merges SET state = ?, base = ?, candidate = ?, job_id = ?, message = ?, updated_at = ?,"
                " ended_at = ?, position = ? WHERE id = ? AND state = ? AND sha = ? AND candidate IS ?",
                (
                    new.state,
                    new.base,
                    new.candidate,
                    new.job_id,
                    new.message,
                    iso(new.updated_at),
                    iso(new.ended_at),
                    new.position,
                    old.id,
                    old.state,
                    old.sha,
                    old.candidate,
                ),
            )
            if cur.rowcount == 1:
                for news in self.news(old, new) if self.news is not None else ():
                    outbox.add(db, news)
        return new if cur.rowcount == 1 else None
