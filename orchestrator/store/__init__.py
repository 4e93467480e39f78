"""The store: SQLite (WAL), the job queue and the only source of truth for job state, and
the only place where SQL is written.

``Store`` is the jobs and the observer's progress (jobs.py), with the tables that hang off
them: ``tests`` (the test history, tests.py), ``bisections`` (bisections.py), ``merges``
(the merge queue's requests, merges.py), ``outbox`` (webhook deliveries, outbox.py), and an
operator's: ``pauses``, ``quarantine``, ``schedules`` and ``search`` (the logs' full-text index).
``on_change(old, new)`` is asked, inside the transaction of every saved change of a job,
what news it makes (webhook deliveries): they are written in that same transaction, so a
crash between a final status and its webhook loses neither.

May import: models and errors (tests/unit/test_architecture.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.models import Job
from orchestrator.store import outbox, schema
from orchestrator.store.bisections import Bisections
from orchestrator.store.db import Connection, Database, SqliteDatabase
from orchestrator.store.fields import ALL_COLUMNS, TABLE
from orchestrator.store.jobs import Jobs, NewCommit
from orchestrator.store.leases import Leases
from orchestrator.store.merges import Merges
from orchestrator.store.outbox import News, Outbox
from orchestrator.store.pauses import Pauses
from orchestrator.store.quarantine import Quarantine
from orchestrator.store.schedules import Schedules
from orchestrator.store.search import SearchIndex
from orchestrator.store.tests import Tests

__all__ = ["NewCommit", "News", "Store"]


class Store(Jobs):
    def __init__(self, where: Path | str):
        """``where``: the SQLite file, or a ``postgresql://`` URL (postgres.py)."""
        if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
            from orchestrator.store.postgres import PostgresDatabase

            self._database: Database = PostgresDatabase(where, TABLE, ALL_COLUMNS)
        else:
            self._database = SqliteDatabase(Path(where), TABLE, ALL_COLUMNS, schema.MIGRATIONS)
        super().__init__(self._database, self._write_news)
        self.tests = Tests(self._database)
        self.bisections = Bisections(self._database)
        self.outbox = Outbox(self._database)
        self.merges = Merges(self._database)
        self.pauses = Pauses(self._database)
        self.quarantine = Quarantine(self._database)
        self.schedules = Schedules(self._database)
        self.search = SearchIndex(self._database)
        self.leases = Leases(self._database)
        self.news: Callable[[Job, Job], Sequence[News]] | None = None
        # whether this dispatcher takes itself for the active one (leadership.py sets it)
        self.leading: Callable[[], bool] = lambda: False

    def _write_news(self, db: Connection, old: Job, new: Job) -> None:
        for news in self.news(old, new) if self.news is not None else ():
            outbox.add(db, news)

    def still_active(self) -> bool:
        """Whether this dispatcher takes itself for the active one (leadership.py sets it): a
        write refused meanwhile is then its lease being taken back, worth waiting for."""
        return self.leading()

    def fence_with(self, holder: str | None, epoch: int = 0) -> None:
        """From now on every write checks, in its own transaction, that ``holder`` still holds
        the active lease at ``epoch`` (None: no check; a dispatcher without a lease)."""
        self.holder = holder
        self._database.fence = self.leases.fence(holder, epoch) if holder is not None else None

    def check_active(self) -> None:
        """NotActive unless this store may still write (its lease, where it has one): asked
        before what is written outside the store (result files), which the fence cannot guard."""
        self._database.check_fence()

    @property
    def dialect(self) -> str:
        return self._database.dialect

    @property
    def database(self) -> Database:
        """The database under the tables (for migrate.py, which copies every one)."""
        return self._database

    def read_one(self, sql: str, args: tuple = ()) -> object:
        """The first column of the first row of a read (None: no row)."""
        rows = self._database.read(sql, args)
        return rows[0][0] if rows else None

    def close(self) -> None:
        self._database.close()
