"""FIELDS is the one list of a job's fields: the attribute of ``Job``, its column, the
column's declaration, how it is written and read, and whether the compare-and-swap save
writes it (branches and subject are the observer's: a stale copy of a job must not undo a
branch added meanwhile). The columns, the table, the UPDATE and the row -> Job mapping are
made from it; a database made before a field was added gains its column when opened
(db.py, postgres.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.models import Job, JobStatus, TestCounts, iso, parse_iso


def _same(value: Any) -> Any:
    return value


def _json_or_null(value: Any) -> Any:
    return json.dumps(value) if value is not None else None


def _from_json(value: Any) -> Any:
    return json.loads(value) if value else None


def _tuple_write(value: tuple) -> str | None:
    return json.dumps(list(value)) if value else None


def _tuple_read(value: Any) -> tuple:
    return tuple(json.loads(value)) if value else ()


@dataclass(frozen=True)
class Field:
    attribute: str
    column: str
    declaration: str
    write: Callable[[Any], Any] = _same
    read: Callable[[Any], Any] = _same
    saved: bool = True  # written by the compare-and-swap save


FIELDS: tuple[Field, ...] = (
    Field("id", "id", "INTEGER PRIMARY KEY AUTOINCREMENT", saved=False),
    Field("repository", "repository", "TEXT NOT NULL", saved=False),
    Field("commit", "commit_sha", "TEXT NOT NULL", saved=False),
    Field(
        "branches",
        "branches",
        "TEXT NOT NULL",
        lambda b: json.dumps(sorted(set(b))),
        lambda v: tuple(json.loads(v)),
        saved=False,
    ),
    Field("subject", "subject", "TEXT NOT NULL", saved=False),
    Field("status", "status", "TEXT NOT NULL", lambda s: s.value, JobStatus),
    Field("queued_at", "queued_at", "TEXT NOT NULL", iso, parse_iso, saved=False),
    Field("attempts", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    Field("started_at", "started_at", "TEXT", iso, parse_iso),
    Field("finished_at", "finished_at", "TEXT", iso, parse_iso),
    Field("exit_code", "exit_code", "INTEGER"),
    Field("message", "message", "TEXT"),
    Field("container_id", "container_id", "TEXT"),
    Field("image_tag", "image_tag", "TEXT"),
    Field("image_id", "image_id", "TEXT"),
    Field(
        "tests",
        "tests",
        "TEXT",
        lambda t: json.dumps(t.__dict__) if t else None,
        lambda v: TestCounts(**json.loads(v)) if v else None,
    ),
    Field("log_truncated", "log_truncated", "INTEGER NOT NULL DEFAULT 0", int, bool),
    Field("environment", "environment", "TEXT", _json_or_null, _from_json),
    Field("node", "node", "TEXT"),
    Field("priority", "priority", "INTEGER NOT NULL DEFAULT 0"),
    Field("culprit", "culprit", "TEXT", _json_or_null, _from_json),
    Field("flaky", "flaky", "TEXT", _tuple_write, _tuple_read),
    Field("coverage", "coverage", "REAL"),
    Field("artifacts", "artifacts", "TEXT", _json_or_null, _from_json),
    Field("shards", "shards", "TEXT", _tuple_write, _tuple_read),
    Field("python", "python", "TEXT NOT NULL DEFAULT ''", saved=False),
    Field("trigger", "trigger_kind", "TEXT NOT NULL DEFAULT 'push'"),
    Field("quarantined", "quarantined", "TEXT", _tuple_write, _tuple_read),
    Field("rerun", "rerun", "TEXT", _json_or_null, _from_json),
    Field("dispatcher", "dispatcher", "TEXT"),
)
EXTRA_COLUMNS = (("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),)  # the store's own, not the job's

COLUMNS = ", ".join(f.column for f in FIELDS)
SAVED = [f for f in FIELDS if f.saved]
TABLE = (
    "CREATE TABLE IF NOT EXISTS jobs ("
    + ", ".join(f"{f.column} {f.declaration}" for f in FIELDS)
    + "".join(f", {name} {declaration}" for name, declaration in EXTRA_COLUMNS)
    + ", UNIQUE (repository, commit_sha, python))"
)
ALL_COLUMNS = [(f.column, f.declaration) for f in FIELDS[1:]] + list(EXTRA_COLUMNS)
UPDATE = (
    "UPDATE jobs SET "
    + ", ".join(f"{f.column} = ?" for f in SAVED)
    + ", cancel_requested = CASE WHEN status = 'running' AND ? = 'running' THEN cancel_requested ELSE 0 END"
    + " WHERE id = ? AND status = ? AND attempts = ?"
)


def job_of(row: Sequence[Any]) -> Job:
    return Job(**{f.attribute: f.read(value) for f, value in zip(FIELDS, row, strict=True)})
