"""The SQLite database under every table of the store: one connection shared by the
threads of one process, serialised by a lock (other processes, `orchestrator submit` beside
a running dispatcher, wait on SQLite's own lock through ``busy_timeout``); write
transactions; and the schema, brought up to date on open.

The schema's version is SQLite's ``PRAGMA user_version``: each entry of MIGRATIONS takes a
database from one version to the next, once. The job table's columns come from its field
table (jobs.py): a column a field names and the table lacks is added on open, so a new field
of a job needs no migration of its own.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

Connection = Any  # what a write transaction yields: sqlite3's connection, or postgres.py's


def _errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:  # the PostgreSQL store's driver is not installed: SQLite's alone
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


ERRORS = _errors()  # what a store that refuses raises, whichever database is under it

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
    from orchestrator.store.merges import TABLE

    db.execute(TABLE)
    db.execute("CREATE INDEX IF NOT EXISTS merges_open ON merges (state, position)")


def _version_5(db: Connection) -> None:
    """An operator's controls: paused repositories, quarantined tests, where schedules stand;
    and the full-text index of every job's log."""
    from orchestrator.store import pauses, quarantine, schedules, search

    for statement in (pauses.TABLE, quarantine.TABLE, schedules.TABLE, *search.TABLES):
        db.execute(statement)


def _version_6(db: Connection) -> None:
    """The active dispatcher's lease (leases.py)."""
    from orchestrator.store import leases

    db.execute(leases.TABLE)


MIGRATIONS: list[Callable[[Connection, str], None]] = [
    lambda db, _table: _version_1(db),
    _version_2,
    lambda db, _table: _version_3(db),
    lambda db, _table: _version_4(db),
    lambda db, _table: _version_5(db),
    lambda db, _table: _version_6(db),
]


class Database(ABC):
    """Where the store's tables are: a SQLite file (``SqliteDatabase``, the default) or a
    PostgreSQL database (postgres.py). Every module of the store writes its SQL once, in
    SQLite's words; the PostgreSQL one translates the few that differ."""

    dialect = "sqlite"
    # checked first in every write transaction while set: the active's lease (leases.py)
    fence: Callable[[Connection], None] | None = None

    @abstractmethod
    def write(self, fenced: bool = True, direct: bool = False) -> AbstractContextManager[Connection]:
        """One write transaction: all of it or nothing, one writer at a time; ``fenced``:
        refused (NotActive) unless ``fence`` passes inside it; ``direct``: on a connection of
        its own, not one a pool may be slow to give back after the server was away (the lease's)."""

    @abstractmethod
    def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]: ...

    @abstractmethod
    def check_fence(self) -> None:
        """NotActive unless ``fence`` passes now, read outside any write transaction (what is
        written elsewhere next, result files, needs to know; not the writers' lock)."""

    @abstractmethod
    def close(self) -> None: ...

    def instance_id(self) -> str:
        """A random id made once per store: the ``orchestrator.instance`` label."""
        found = self.read("SELECT value FROM meta WHERE key = 'instance'")
        if found:  # read, not written: a standby (its writes fenced off) asks it too
            return found[0][0]
        with self.write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
            if row:
                return row[0]
            value = uuid.uuid4().hex[:16]
            db.execute("INSERT INTO meta (key, value) VALUES ('instance', ?)", (value,))
            return value


class SqliteDatabase(Database):
    def __init__(self, path: Path, jobs_table: str, job_columns: Sequence[tuple[str, str]]):
        """``jobs_table``: the job table's CREATE statement; ``job_columns``: (name,
        declaration) of each column it must have (jobs.py's field table)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self.write() as db:
            db.execute(jobs_table)
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, declaration in job_columns:
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for migrate in MIGRATIONS[version:]:
                migrate(db, jobs_table)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_repository ON jobs (repository, id)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self, fenced: bool = True, direct: bool = False) -> Iterator[Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it or nothing."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if fenced and self.fence is not None:
                    self.fence(self._db)
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def check_fence(self) -> None:
        if self.fence is not None:
            with self._lock:
                self.fence(self._db)


def marks(values: Sequence[object]) -> str:
    """The placeholders of an ``IN (...)`` of ``values``."""
    return ",".join("?" * len(values))
