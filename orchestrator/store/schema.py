"""The store's schema in SQLite's words: the tables that were there when versions began, and
each version's step to the next (``MIGRATIONS``: SQLite's ``PRAGMA user_version`` counts
those taken). A table a module owns is its module's (``merges.TABLE``, ``leases.TABLE`` ...):
a version that added it runs it here. PostgreSQL's store is made at the newest shape at once
(postgres.py reads the same statements and translates them).
"""

from __future__ import annotations

from orchestrator.store import leases, merges, pauses, quarantine, schedules, search
from orchestrator.store.db import Connection, Migration

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repositories (name TEXT PRIMARY KEY, first_seen_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heads (
    repository TEXT NOT NULL, branch TEXT NOT NULL, sha TEXT NOT NULL,
    PRIMARY KEY (repository, branch)
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
"""


def _version_1(db: Connection) -> None:
    """Every table as it was when versions began (an older state_dir's tables are kept:
    they are created only where missing, and its job columns are completed on open)."""
    for statement in TABLES.split(";"):  # one by one: executescript would end the transaction
        if statement.strip():
            db.execute(statement)


def _version_2(db: Connection, jobs_table: str) -> None:
    """A job per (repository, commit, python): the variants of a commit on several Pythons.
    SQLite cannot change a table's UNIQUE: the table is made anew and its rows copied
    (SQLite's documented procedure: new table, copy, drop, rename)."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()[0]
    if "UNIQUE (repository, commit_sha, python)" in sql:
        return
    columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(jobs)"))
    db.execute(jobs_table.replace("jobs (", "jobs_new (", 1))
    db.execute(f"INSERT INTO jobs_new ({columns}) SELECT {columns} FROM jobs")
    db.execute("DROP TABLE jobs")
    db.execute("ALTER TABLE jobs_new RENAME TO jobs")


TEST_DURATIONS = (
    "CREATE TABLE test_durations_new (repository TEXT NOT NULL, python TEXT NOT NULL DEFAULT '',"
    " test_id TEXT NOT NULL, seconds REAL NOT NULL, runs INTEGER NOT NULL, job_id INTEGER NOT NULL,"
    " PRIMARY KEY (repository, python, test_id)) WITHOUT ROWID"
)


def _version_3(db: Connection) -> None:
    """Test durations per variant: a suite is split by what it takes on its own Python."""
    db.execute(TEST_DURATIONS)
    db.execute(
        "INSERT INTO test_durations_new (repository, test_id, seconds, runs, job_id)"
        " SELECT repository, test_id, seconds, runs, job_id FROM test_durations"
    )
    db.execute("DROP TABLE test_durations")
    db.execute("ALTER TABLE test_durations_new RENAME TO test_durations")


def _version_4(db: Connection) -> None:
    """The merge queue's requests (merges.py)."""
    db.execute(merges.TABLE)
    db.execute("CREATE INDEX IF NOT EXISTS merges_open ON merges (state, position)")


def _version_5(db: Connection) -> None:
    """An operator's controls: paused repositories, quarantined tests, where schedules stand;
    and the full-text index of every job's log."""
    for statement in (pauses.TABLE, quarantine.TABLE, schedules.TABLE, *search.TABLES):
        db.execute(statement)


def _version_6(db: Connection) -> None:
    """The active dispatcher's lease (leases.py)."""
    db.execute(leases.TABLE)


MIGRATIONS: list[Migration] = [
    lambda db, _table: _version_1(db),
    _version_2,
    lambda db, _table: _version_3(db),
    lambda db, _table: _version_4(db),
    lambda db, _table: _version_5(db),
    lambda db, _table: _version_6(db),
]
