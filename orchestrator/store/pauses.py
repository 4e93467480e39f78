"""Repositories an operator paused: still observed, their commits still queued, but none of
their jobs starts until they are resumed (the store's ``next_queued`` and the picker's claim
both ask). A row each, so a pause outlives a restart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.models import iso, parse_iso, utcnow
from orchestrator.store.db import Database

TABLE = (
    "CREATE TABLE IF NOT EXISTS pauses (repository TEXT PRIMARY KEY, reason TEXT NOT NULL,"
    " paused_by TEXT NOT NULL, since TEXT NOT NULL)"
)
NOT_PAUSED = "repository NOT IN (SELECT repository FROM pauses)"  # a condition on jobs.repository


@dataclass(frozen=True)
class Pause:
    repository: str
    reason: str
    paused_by: str
    since: datetime | None

    def document(self) -> dict[str, Any]:
        return {"repository": self.repository, "reason": self.reason, "by": self.paused_by, "since": iso(self.since)}


class Pauses:
    def __init__(self, db: Database):
        self._db = db

    def pause(self, repository: str, reason: str, by: str) -> Pause:
        """Pause ``repository`` (again: the reason is replaced, ``since`` kept)."""
        with self._db.write() as db:
            db.execute(
                "INSERT INTO pauses (repository, reason, paused_by, since) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (repository) DO UPDATE SET reason = excluded.reason, paused_by = excluded.paused_by",
                (repository, reason, by, iso(utcnow())),
            )
        found = self.of(repository)
        assert found is not None
        return found

    def resume(self, repository: str) -> bool:
        """Whether it was paused."""
        with self._db.write() as db:
            return bool(db.execute("DELETE FROM pauses WHERE repository = ?", (repository,)).rowcount == 1)

    def of(self, repository: str) -> Pause | None:
        rows = self._db.read(
            "SELECT repository, reason, paused_by, since FROM pauses WHERE repository = ?", (repository,)
        )
        return _pause(rows[0]) if rows else None

    def all(self) -> dict[str, Pause]:
        rows = self._db.read("SELECT repository, reason, paused_by, since FROM pauses ORDER BY repository")
        return {r[0]: _pause(r) for r in rows}


def _pause(row: tuple) -> Pause:
    return Pause(row[0], row[1], row[2], parse_iso(row[3]))
