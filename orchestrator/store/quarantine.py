"""Quarantined tests: a row per (repository, test), with who or what put it there, why, and
until when. A quarantined test still runs and is recorded; its failure does not fail its
job (quarantine.py decides that). An entry past its ``until`` is no longer in force, and is
dropped the next time entries are written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.models import iso, parse_iso, utcnow
from orchestrator.store import outbox
from orchestrator.store.db import Database
from orchestrator.store.outbox import News

TABLE = (
    "CREATE TABLE IF NOT EXISTS quarantine (repository TEXT NOT NULL, test_id TEXT NOT NULL,"
    " reason TEXT NOT NULL, added_by TEXT NOT NULL, added_at TEXT NOT NULL, until TEXT NOT NULL,"
    " PRIMARY KEY (repository, test_id))"
)
_COLUMNS = "repository, test_id, reason, added_by, added_at, until"


@dataclass(frozen=True)
class Entry:
    repository: str
    test_id: str
    reason: str
    added_by: str  # "cli", "api", "dashboard", or "auto: flip rate ..."
    added_at: datetime | None
    until: datetime | None

    def document(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "test": self.test_id,
            "reason": self.reason,
            "by": self.added_by,
            "added_at": iso(self.added_at),
            "until": iso(self.until),
        }


def _entry(row: tuple) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], parse_iso(row[4]), parse_iso(row[5]))


class Quarantine:
    def __init__(self, db: Database):
        self._db = db
        # the deliveries an automatic entry makes (test.quarantined), written with it
        self.news: Callable[[Entry, int, int], Sequence[News]] | None = None

    def add(self, repository: str, test_id: str, reason: str, by: str, until: datetime) -> Entry:
        """Quarantine a test (again: its reason, author and end are replaced)."""
        now = iso(utcnow())
        with self._db.write() as db:
            db.execute("DELETE FROM quarantine WHERE until <= ?", (now,))
            db.execute(
                f"INSERT OR REPLACE INTO quarantine ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (repository, test_id, reason, by, now, iso(until)),
            )
        return Entry(repository, test_id, reason, by, parse_iso(now), until)

    def add_new(
        self, repository: str, test_id: str, reason: str, by: str, until: datetime, job_id: int, attempt: int
    ) -> Entry | None:
        """Quarantine a test unless it is already (automatic quarantine: never shortens or
        rewrites an operator's entry), for what job ``job_id`` showed; the entry made, whose
        webhooks are written in its transaction."""
        now = iso(utcnow())
        with self._db.write() as db:
            if db.execute(
                "SELECT 1 FROM quarantine WHERE repository = ? AND test_id = ? AND until > ?",
                (repository, test_id, now),
            ).fetchone():
                return None
            db.execute(
                f"INSERT OR REPLACE INTO quarantine ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (repository, test_id, reason, by, now, iso(until)),
            )
            entry = Entry(repository, test_id, reason, by, parse_iso(now), until)
            for news in self.news(entry, job_id, attempt) if self.news is not None else ():
                outbox.add(db, news)
            return entry

    def remove(self, repository: str, test_id: str) -> bool:
        """Whether it was quarantined (and in force)."""
        with self._db.write() as db:
            removed: int = db.execute(
                "DELETE FROM quarantine WHERE repository = ? AND test_id = ? AND until > ?",
                (repository, test_id, iso(utcnow())),
            ).rowcount
            return removed == 1

    def active(self, repository: str | None = None, now: datetime | None = None) -> list[Entry]:
        """The entries in force at ``now``, by repository and test."""
        sql, args = f"SELECT {_COLUMNS} FROM quarantine WHERE until > ?", [iso(now or utcnow())]
        if repository is not None:
            sql, args = sql + " AND repository = ?", [*args, repository]
        return [_entry(r) for r in self._db.read(sql + " ORDER BY repository, test_id", args)]

    def tests(self, repository: str, now: datetime | None = None) -> frozenset[str]:
        return frozenset(e.test_id for e in self.active(repository, now))
