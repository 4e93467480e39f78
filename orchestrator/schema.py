"""How jobs are laid out in SQLite: the tables, the columns of a job row, and the one
compare-and-swap write of a job. Times are stored as ``models.iso`` writes them."""

from __future__ import annotations

import json
import sqlite3

from orchestrator.errors import InvalidTransition
from orchestrator.models import Job, JobStatus, TestCounts, iso, parse_iso, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repositories (name TEXT PRIMARY KEY, first_seen_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heads (
    repository TEXT NOT NULL, branch TEXT NOT NULL, sha TEXT NOT NULL,
    PRIMARY KEY (repository, branch)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    branches TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT,
    exit_code INTEGER, message TEXT, container_id TEXT,
    image_tag TEXT, image_id TEXT, tests TEXT,
    log_truncated INTEGER NOT NULL DEFAULT 0,
    environment TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    node TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    culprit TEXT,
    flaky TEXT,
    coverage REAL,
    artifacts TEXT,
    shards TEXT,
    UNIQUE (repository, commit_sha)
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT,
    container_id TEXT,
    started_at TEXT,
    ended_at TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS bisections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    bad_job INTEGER NOT NULL UNIQUE REFERENCES jobs (id),
    good TEXT NOT NULL,
    commits TEXT NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    probe TEXT,
    phase TEXT NOT NULL,
    culprit TEXT,
    jobs INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    UNIQUE (key, url)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox (job_id);
CREATE TABLE IF NOT EXISTS test_cases (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    repository TEXT NOT NULL,
    test_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (job_id, attempt, test_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS test_durations (
    repository TEXT NOT NULL,
    test_id TEXT NOT NULL,
    seconds REAL NOT NULL,
    runs INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (repository, test_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS test_cases_by_test ON test_cases (repository, test_id, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_by_repository ON jobs (repository, id);
"""

COLUMNS = (
    "id, repository, commit_sha, branches, subject, status, attempts, queued_at, started_at, "
    "finished_at, exit_code, message, container_id, image_tag, image_id, tests, log_truncated, environment, node, "
    "priority, culprit, flaky, coverage, artifacts, shards"
)


def create(db: sqlite3.Connection) -> None:
    """Create what is missing, and bring a state_dir of an earlier version up to date."""
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "cancel_requested" not in columns:  # a state_dir made by version 0.1.0
        db.execute("ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
    if "environment" not in columns:  # made before environments
        db.execute("ALTER TABLE jobs ADD COLUMN environment TEXT")
    if "node" not in columns:  # made before the Swarm backend
        db.execute("ALTER TABLE jobs ADD COLUMN node TEXT")
    if "priority" not in columns:  # made before coalescing and bisection
        db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE jobs ADD COLUMN culprit TEXT")
    if "flaky" not in columns:  # made before re-runs of failed tests
        db.execute("ALTER TABLE jobs ADD COLUMN flaky TEXT")
    if "coverage" not in columns:  # made before artifacts and coverage
        db.execute("ALTER TABLE jobs ADD COLUMN coverage REAL")
        db.execute("ALTER TABLE jobs ADD COLUMN artifacts TEXT")
    if "shards" not in columns:  # made before suites were split
        db.execute("ALTER TABLE jobs ADD COLUMN shards TEXT")


def save(db: sqlite3.Connection, old: Job, new: Job) -> None:
    """Write ``new`` over the row of ``old``, only if the row is still ``old`` (status and
    attempt): the compare-and-swap every status change is saved with. An attempt that
    ends is recorded in ``attempts``. Branches and subject are the observer's, never
    written here, so a stale copy of the job cannot undo a branch added meanwhile."""
    cur = db.execute(
        "UPDATE jobs SET status = ?, attempts = ?, started_at = ?,"
        " finished_at = ?, exit_code = ?, message = ?, container_id = ?, image_tag = ?,"
        " image_id = ?, tests = ?, log_truncated = ?, environment = ?, node = ?, priority = ?, culprit = ?, flaky = ?, coverage = ?, artifacts = ?, shards = ?,"
        " cancel_requested = CASE WHEN status = 'running' AND ? = 'running' THEN cancel_requested ELSE 0 END"
        " WHERE id = ? AND status = ? AND attempts = ?",
        (
            new.status.value, new.attempts, iso(new.started_at), iso(new.finished_at), new.exit_code, new.message,
            new.container_id, new.image_tag, new.image_id,
            json.dumps(new.tests.__dict__) if new.tests else None, int(new.log_truncated),
            json.dumps(new.environment) if new.environment is not None else None, new.node, new.priority,
            json.dumps(new.culprit) if new.culprit is not None else None,
            json.dumps(list(new.flaky)) if new.flaky else None, new.coverage,
            json.dumps(new.artifacts) if new.artifacts is not None else None,
            json.dumps(list(new.shards)) if new.shards else None,
            new.status.value, old.id, old.status.value, old.attempts,
        ),
    )
    if cur.rowcount != 1:
        raise InvalidTransition(f"job {old.id} changed underneath (was {old.status.value})")
    if old.status is JobStatus.RUNNING and new.status is not JobStatus.RUNNING:
        db.execute(
            "INSERT OR REPLACE INTO attempts (job_id, attempt, outcome, message, container_id,"
            " started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (old.id, old.attempts, "retried" if new.status is JobStatus.QUEUED else new.status.value,
             new.message, old.container_id, iso(old.started_at), iso(new.finished_at or utcnow())),
        )


def job(row: tuple) -> Job:
    (id_, repo, sha, branches, subject, status, attempts, queued_at, started_at, finished_at,
     exit_code, message, container_id, image_tag, image_id, tests, log_truncated, environment, node,
     priority, culprit, flaky, coverage, artifacts, shards) = row
    return Job(
        id=id_, repository=repo, commit=sha, branches=tuple(json.loads(branches)), subject=subject,
        status=JobStatus(status), attempts=attempts, queued_at=parse_iso(queued_at),
        started_at=parse_iso(started_at), finished_at=parse_iso(finished_at), exit_code=exit_code,
        message=message, container_id=container_id, image_tag=image_tag, image_id=image_id,
        tests=TestCounts(**json.loads(tests)) if tests else None, log_truncated=bool(log_truncated),
        environment=json.loads(environment) if environment else None, node=node,
        priority=priority, culprit=json.loads(culprit) if culprit else None,
        flaky=tuple(json.loads(flaky)) if flaky else (), coverage=coverage,
        artifacts=json.loads(artifacts) if artifacts else None, shards=tuple(json.loads(shards)) if shards else (),
    )
