"""The webhook outbox: each delivery a row, written in the same transaction as the state
change it tells of (a final status, a culprit named), and sent from there, at least once,
by notify.py. A dispatcher killed between the two sends it after its restart; the receiver
tells a repeat by the ``Idempotency-Key`` header."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator.models import iso, parse_iso, utcnow
from orchestrator.store.db import Connection, Database, marks

PENDING, SENT, FAILED = "pending", "sent", "failed"
_COLUMNS = "id, job_id, attempt, event, url, body, key, state, tries, next_at, last_error, created_at, sent_at"


@dataclass(frozen=True)
class News:
    """A delivery to make: what ``Store.on_change`` answers for a change worth telling."""

    job_id: int
    attempt: int
    event: str
    url: str
    body: dict[str, Any]
    key: str | None = None  # the Idempotency-Key; None: job-<id>-attempt-<n>-<event>


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    attempt: int
    event: str
    url: str
    body: dict[str, Any]
    key: str  # the Idempotency-Key: the same for every try of one delivery
    state: str
    tries: int
    next_at: datetime | None
    last_error: str | None
    created_at: datetime | None
    sent_at: datetime | None

    def document(self) -> dict[str, Any]:
        """What the API and the job page show (the body is the job's own document)."""
        shown = "retrying" if self.state == PENDING and self.tries else self.state
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "key": self.key,
            "state": shown,
            "tries": self.tries,
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
            "attempt": self.attempt,
        }


def add(db: Connection, news: News) -> None:
    """Inside the caller's transaction (the state change's own)."""
    key = news.key or f"job-{news.job_id}-attempt-{news.attempt}-{news.event}"
    now = iso(utcnow())
    db.execute(
        "INSERT OR IGNORE INTO outbox (job_id, attempt, event, url, body, key, state, tries, next_at, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (
            news.job_id,
            news.attempt,
            news.event,
            news.url,
            json.dumps(news.body, ensure_ascii=False),
            key,
            PENDING,
            now,
            now,
        ),
    )


class Outbox:
    def __init__(self, db: Database):
        self._db = db

    def due(self, limit: int = 50, url: str | None = None, besides: list[str] | tuple[str, ...] = ()) -> list[Delivery]:
        """Pending deliveries whose time has come, oldest first: all, those to ``url``, or
        those to any receiver but ``besides``."""
        where, args = "state = ? AND next_at <= ?", [PENDING, iso(utcnow())]
        if url is not None:
            where, args = where + " AND url = ?", [*args, url]
        if besides:
            where, args = where + f" AND url NOT IN ({marks(besides)})", [*args, *besides]
        return [
            _row(r)
            for r in self._db.read(f"SELECT {_COLUMNS} FROM outbox WHERE {where} ORDER BY id LIMIT ?", (*args, limit))
        ]

    def pending(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM outbox WHERE state = ?", (PENDING,))[0][0])

    def of_job(self, job_id: int) -> list[Delivery]:
        return [
            _row(r) for r in self._db.read(f"SELECT {_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY id", (job_id,))
        ]

    def sent(self, delivery: Delivery) -> None:
        self._update(delivery, SENT, None, None, sent_at=iso(utcnow()))

    def failed_try(self, delivery: Delivery, error: str, retry_in: float | None) -> None:
        """Another try later (``retry_in`` seconds), or none: failed for good."""
        if retry_in is None:
            self._update(delivery, FAILED, error, None)
        else:
            self._update(delivery, PENDING, error, iso(utcnow() + timedelta(seconds=retry_in)))

    def _update(
        self, delivery: Delivery, state: str, error: str | None, next_at: str | None, sent_at: str | None = None
    ) -> None:
        with self._db.write() as db:
            db.execute(
                "UPDATE outbox SET state = ?, tries = tries + 1, last_error = COALESCE(?, last_error),"
                " next_at = COALESCE(?, next_at), sent_at = ? WHERE id = ?",
                (state, error, next_at, sent_at, delivery.id),
            )


def _row(row: tuple) -> Delivery:
    (id_, job_id, attempt, event, url, body, key, state, tries, next_at, last_error, created_at, sent_at) = row
    return Delivery(
        id_,
        job_id,
        attempt,
        event,
        url,
        json.loads(body),
        key,
        state,
        tries,
        parse_iso(next_at),
        last_error,
        parse_iso(created_at),
        parse_iso(sent_at),
    )
