"""The SQLite database under every table of the store: one connection shared by the
threads of one process, serialised by a lock (other processes, `orchestrator submit` beside
a running dispatcher, wait on SQLite's own lock through ``busy_timeout``); write
transactions; and the schema, brought up to date on open.

The schema's version is SQLite's ``PRAGMA user_version``: each of the migrations it is given
(schema.py) takes a database from one version to the next, once. The job table's columns come
from its field table (jobs.py): a column a field names and the table lacks is added on open,
so a new field of a job needs no migration of its own.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

Connection = Any  # what a write transaction yields: sqlite3's connection, or postgres.py's


def errors() -> tuple[type[Exception], ...]:
    """What a store that refuses raises, whichever database is under it: psycopg's errors
    only once the PostgreSQL store has loaded it (a process on SQLite never imports it,
    which would cost every command a third of a second)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


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
            return str(found[0][0])
        with self.write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
            if row:
                return str(row[0])
            value = uuid.uuid4().hex[:16]
            db.execute("INSERT INTO meta (key, value) VALUES ('instance', ?)", (value,))
            return value


Migration = Callable[[Connection, str], None]  # a step of the schema: the database, the job table's CREATE


class SqliteDatabase(Database):
    def __init__(
        self,
        path: Path,
        jobs_table: str,
        job_columns: Sequence[tuple[str, str]],
        migrations: Sequence[Migration],
    ):
        """``jobs_table``: the job table's CREATE statement; ``job_columns``: (name,
        declaration) of each column it must have (jobs.py's field table); ``migrations``:
        the schema's steps (schema.MIGRATIONS)."""
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
            for migrate in migrations[version:]:
                migrate(db, jobs_table)
            db.execute(f"PRAGMA user_version = {len(migrations)}")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_repository ON jobs (repository, id)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self, fenced: bool = True, direct: bool = False) -> Iterator[Connection]:  # noqa: ARG002 (one connection)
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
