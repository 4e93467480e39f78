"""Where each repository's schedule stands: the last slot it ran for, and the expression
that slot was of (a changed expression starts afresh). Written after the slot's jobs are
queued: a crash between queues nothing twice (a queued job is not queued again) and never
skips the slot."""

from __future__ import annotations

from datetime import datetime

from orchestrator.models import iso, parse_iso
from orchestrator.store.db import Database

TABLE = (
    "CREATE TABLE IF NOT EXISTS schedules (repository TEXT PRIMARY KEY, expression TEXT NOT NULL,"
    " last_slot TEXT NOT NULL)"
)


class Schedules:
    def __init__(self, db: Database):
        self._db = db

    def last_slot(self, repository: str, expression: str) -> datetime | None:
        """The last slot run of this expression (None: never, or a different expression)."""
        rows = self._db.read("SELECT expression, last_slot FROM schedules WHERE repository = ?", (repository,))
        return parse_iso(rows[0][1]) if rows and rows[0][0] == expression else None

    def ran(self, repository: str, expression: str, slot: datetime) -> None:
        with self._db.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO schedules (repository, expression, last_slot) VALUES (?, ?, ?)",
                (repository, expression, iso(slot)),
            )
