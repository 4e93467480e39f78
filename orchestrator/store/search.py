"""The full-text index of every job's log, its failing tests' ids and messages, and its
reason: SQLite FTS5, a row per log line, written when the job ends (search.py chooses what
goes in). Only each job's current attempt is indexed: a new attempt's rows replace the
old ones.

The lines of one job are inserted together, so their rowids follow each other: a hit's
neighbours are the rows beside it, and a job's rows are the range ``indexed`` keeps (a
delete by range, not a scan of the whole index for a job id). Each row carries its
repository as an indexed column, and a search of one repository asks the index for it
(``repository : "name"``) rather than reading every match to filter it; the user's query is
kept to the text (``text : (...)``). Rows are written in the order jobs end, so a search
``since`` a time starts at the first row indexed since then.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.store.db import Database

LOG, TEST, MESSAGE = "log", "test", "message"

TABLES = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5("
    "text, repository, job_id UNINDEXED, line UNINDEXED, kind UNINDEXED, tokenize = 'unicode61')",
    "CREATE TABLE IF NOT EXISTS search_indexed (job_id INTEGER PRIMARY KEY, attempt INTEGER NOT NULL,"
    " first_row INTEGER NOT NULL, last_row INTEGER NOT NULL, lines INTEGER NOT NULL, bytes INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class Hit:
    row: int
    job_id: int
    repository: str
    commit: str
    python: str
    status: str
    kind: str  # log, test or message
    line: int  # the log's line number, from 1 (0 for a test or the reason)
    text: str

    def document(self, before: Sequence[tuple[int, str]] = (), after: Sequence[tuple[int, str]] = ()) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "repository": self.repository,
            "commit": self.commit,
            "python": self.python or None,
            "status": self.status,
            "kind": self.kind,
            "line": self.line or None,
            "text": self.text,
            "before": [{"line": n, "text": t} for n, t in before],
            "after": [{"line": n, "text": t} for n, t in after],
        }


class SearchIndex:
    def __init__(self, db: Database):
        self._db = db

    def replace(
        self, job_id: int, attempt: int, repository: str, rows: Sequence[tuple[str, int, str]], indexed_bytes: int
    ) -> None:
        """The job's rows ((kind, line, text) each) in place of those of its earlier attempt."""
        with self._db.write() as db:
            old = db.execute("SELECT first_row, last_row FROM search_indexed WHERE job_id = ?", (job_id,)).fetchone()
            if old is not None:
                db.execute("DELETE FROM search WHERE rowid BETWEEN ? AND ?", old)
            first = last = 0
            for kind, line, text in rows:
                last = (
                    db.execute(
                        "INSERT INTO search (text, repository, job_id, line, kind) VALUES (?, ?, ?, ?, ?)",
                        (text, repository, job_id, line, kind),
                    ).lastrowid
                    or 0
                )
                first = first or last
            db.execute(
                "INSERT OR REPLACE INTO search_indexed (job_id, attempt, first_row, last_row, lines, bytes)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, first, last, len(rows), indexed_bytes),
            )

    def indexed(self, job_id: int) -> tuple[int, int, int] | None:
        """(attempt, rows, log bytes) indexed of a job, or None."""
        rows = self._db.read("SELECT attempt, lines, bytes FROM search_indexed WHERE job_id = ?", (job_id,))
        return tuple(rows[0]) if rows else None

    def count(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM search_indexed")[0][0])

    def search(self, query: str, repository: str | None = None, since: str | None = None, limit: int = 50) -> list[Hit]:
        """The newest hits first. ``query`` is FTS5's syntax (words, "a phrase", AND, OR,
        NOT, prefix*): one it cannot parse is a UsageError naming what it said."""
        sql = (
            "SELECT s.rowid, s.job_id, j.repository, j.commit_sha, j.python, j.status, s.kind, s.line, s.text"
            " FROM search s JOIN jobs j ON j.id = s.job_id WHERE search MATCH ?"
        )
        if self._db.dialect == "postgres":  # PostgreSQL's own full-text search: web search syntax
            sql, match = sql.replace("search MATCH ?", "s.words @@ websearch_to_tsquery('simple', ?)"), query
        else:
            match = f"text : ({query})"
        args: list[object] = []
        if repository is not None:
            if self._db.dialect != "postgres":
                match += ' AND repository : "' + repository.replace('"', '""') + '"'
            sql, args = sql + " AND s.repository = ? AND j.repository = ?", [*args, repository, repository]
        if since is not None:
            first = self._db.read(
                "SELECT MIN(i.first_row) FROM search_indexed i JOIN jobs j ON j.id = i.job_id WHERE j.finished_at >= ?",
                (since,),
            )[0][0]
            sql, args = sql + " AND s.rowid >= ? AND j.finished_at >= ?", [*args, first or 2**62, since]
        args.insert(0, match)
        try:
            rows = self._db.read(sql + " ORDER BY s.rowid DESC LIMIT ?", [*args, limit])
        except sqlite3.OperationalError as exc:
            raise UsageError(f"search query {query[:80]!r}: {exc} (quote text to search for it as it is)") from None
        return [Hit(*row) for row in rows]

    def around(self, hit: Hit, lines: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """The log lines before and after a log hit, as indexed (none for another kind)."""
        if hit.kind != LOG or lines <= 0:
            return [], []
        rows = self._db.read(
            "SELECT rowid, job_id, kind, line, text FROM search WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
            (hit.row - lines, hit.row + lines),
        )
        mine = [(row, n, t) for row, job_id, kind, n, t in rows if job_id == hit.job_id and kind == LOG]
        before = [(n, t) for row, n, t in mine if row < hit.row]
        after = [(n, t) for row, n, t in mine if row > hit.row]
        return before, after
