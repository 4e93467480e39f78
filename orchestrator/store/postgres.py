"""The store's tables in PostgreSQL (``store.url: postgresql://…``), through psycopg 3 and its
connection pool.

Every module of the store writes its SQL once, in SQLite's words; the few words that differ
are translated here, statement by statement (cached): placeholders, ``INSERT OR IGNORE`` /
``OR REPLACE`` (``ON CONFLICT``), ``json_each``, ``julianday``, a boolean summed, an empty
``IN ()``, and the id an insert made (``RETURNING``). The full-text index is PostgreSQL's own
(a ``tsvector`` column and a GIN index; store/search.py asks it in its words).

A write transaction takes a transaction-scoped advisory lock first: writers go one at a
time, as SQLite's ``BEGIN IMMEDIATE`` makes them, so every read-then-write of the store
(a compare-and-swap, a commit queued once) means the same on both. The schema is made at
its newest; its version is a row of ``meta``.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.store import leases, merges, pauses, quarantine, schedules, search
from orchestrator.store import schema as sqlite_schema
from orchestrator.store.db import Database

POOL_WAIT = 3.0  # seconds a call waits for a connection from the pool
# A session that sits in a transaction doing nothing this long is ended by the server, and its
# locks with it: a dispatcher paused (SIGSTOP) in the middle of a write never holds every other
# writer, nor the standby taking its lease, for longer than this. The store's transactions last
# milliseconds; one cut this way fails its call, which its caller tries again.
SESSION = {"options": "-c idle_in_transaction_session_timeout=3000"}
WRITE_LOCK = 7_214_001  # the advisory lock every write transaction holds: one writer at a time
# the key of each table that INSERT OR REPLACE writes into
_KEYS = {
    "meta": ("key",),
    "attempts": ("job_id", "attempt"),
    "quarantine": ("repository", "test_id"),
    "schedules": ("repository",),
    "search_indexed": ("job_id",),
    "test_cases": ("job_id", "attempt", "test_id"),
}
_SERIAL = {"jobs": "id", "merges": "id", "bisections": "id", "outbox": "id", "search": "rowid"}


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """A statement of the store in PostgreSQL's words."""
    sql = re.sub(r"json_each\(([\w.]+)\)", r"jsonb_array_elements_text((\1)::jsonb)", sql)
    sql = re.sub(r"julianday\(([\w.]+)\)", r"(extract(epoch from (\1)::timestamptz) / 86400.0)", sql)
    sql = re.sub(r"SUM\((\w+) = '(\w+)'\)", r"SUM(CASE WHEN \1 = '\2' THEN 1 ELSE 0 END)", sql)
    sql = re.sub(r"[\w.]+ NOT IN \(\)", "TRUE", sql)
    sql = re.sub(r"[\w.]+ IN \(\)", "FALSE", sql)
    insert = re.match(r"\s*INSERT OR (IGNORE|REPLACE) INTO (\w+) \(([^)]*)\)", sql)
    if insert:
        kind, table, columns = insert.groups()
        sql = "INSERT INTO" + sql[insert.end(2) - len(table) - 1 :]
        if kind == "IGNORE":
            sql += " ON CONFLICT DO NOTHING"
        else:
            keys = _KEYS[table]
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in (c.strip() for c in columns.split(",")) if c not in keys)
            sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    table = re.match(r"\s*INSERT INTO (\w+) ", sql)
    if table and table.group(1) in _SERIAL:
        sql += f" RETURNING {_SERIAL[table.group(1)]}"
    return sql.replace("%", "%%").replace("?", "%s")


def ddl(statement: str) -> str:
    """A CREATE statement of the SQLite schema in PostgreSQL's types."""
    statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    return statement.replace("WITHOUT ROWID", "")


SEARCH = (
    "CREATE TABLE IF NOT EXISTS search (rowid BIGSERIAL PRIMARY KEY, text TEXT NOT NULL, repository TEXT NOT NULL,"
    " job_id BIGINT NOT NULL, line BIGINT NOT NULL, kind TEXT NOT NULL,"
    " words tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED)",
    "CREATE INDEX IF NOT EXISTS search_words ON search USING gin (words)",
)
SCHEMA_VERSION = 2  # of the PostgreSQL schema (made at its newest: no step of SQLite's migrations)


def schema(jobs_table: str) -> list[str]:
    """Every table and index of the store, newest shape, in PostgreSQL's words."""
    statements = [ddl(jobs_table)]
    for statement in sqlite_schema.TABLES.split(";"):
        if statement.strip() and "test_durations (" not in statement:
            statements.append(ddl(statement))
    statements.append(ddl(sqlite_schema.TEST_DURATIONS.replace("test_durations_new", "IF NOT EXISTS test_durations")))
    statements += [ddl(merges.TABLE), "CREATE INDEX IF NOT EXISTS merges_open ON merges (state, position)"]
    statements += [ddl(pauses.TABLE), ddl(quarantine.TABLE), ddl(schedules.TABLE), ddl(leases.TABLE)]
    statements += [*SEARCH, ddl(search.TABLES[1])]
    statements += [
        "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id)",
        "CREATE INDEX IF NOT EXISTS jobs_by_repository ON jobs (repository, id)",
    ]
    return statements


class _Cursor:
    """What the store's modules read of an executed statement, as sqlite3's cursor has it."""

    def __init__(self, cursor: Any, returning: bool):
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid: int | None = None
        self._first: tuple | None = None
        if returning:
            self._first = cursor.fetchone()
            self.lastrowid = self._first[0] if self._first else None

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall() if self._cursor.description else []


class _Connection:
    def __init__(self, conn: Any, pipeline: Any = None):
        self._conn = conn
        self.pipeline = pipeline  # while set, what is queued is sent with each statement, its result awaited

    def execute(self, sql: str, args: Sequence[object] = ()) -> _Cursor:
        statement = translate(sql)
        cursor = self._conn.execute(statement, tuple(args))
        if self.pipeline is not None:
            self.pipeline.sync()
        return _Cursor(cursor, statement.endswith(tuple(f"RETURNING {c}" for c in ("id", "rowid"))))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(translate(sql).split(" RETURNING ")[0], rows)


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, url: str, jobs_table: str, job_columns: Sequence[tuple[str, str]]):
        import psycopg
        from psycopg_pool import ConnectionPool

        try:  # once, at once: a wrong URL is one line now, not a pool retrying in the background
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"store.url: cannot connect to PostgreSQL: {reason}") from None
        # a connection is waited for POOL_WAIT seconds at most: with the server away, a call
        # fails soon (and is tried again by its caller), /healthz says so, nothing hangs
        # (no check of each connection as it is taken: a round trip on every call; one the server
        # dropped fails its call, which its caller tries again, and the pool replaces it)
        self._url = url
        # autocommit: a read is one round trip (no BEGIN before it, no ROLLBACK as the pool takes
        # the connection back); a write is its own transaction all the same (``write``)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=True,
            timeout=POOL_WAIT,
            name="orchestrator",
            kwargs={**SESSION, "autocommit": True},
        )
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or int(row[0]) < SCHEMA_VERSION:
                for statement in schema(jobs_table):
                    db._conn.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            # a job field added since this database was made: its column, as SQLite adds it
            # (without it every write of a job would fail on a store that existed before)
            # (only those missing: an ALTER locks the table, which the active dispatcher is using)
            have = {
                r[0]
                for r in db.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'jobs'"
                ).fetchall()
            }
            for name, declaration in job_columns:
                if name not in have:
                    db._conn.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {ddl(declaration)}")

    @contextmanager
    def write(self, fenced: bool = True, direct: bool = False) -> Iterator[_Connection]:
        """BEGIN, the writers' lock and the fence's check are pipelined: one round trip, the
        server running them in the order sent (the check sees the lease as the lock found it).
        Round trips are what a write costs here: under load each one waits for the GIL too."""
        with self._connection(direct) as conn:
            try:
                with conn.pipeline() as pipeline:
                    conn.execute("BEGIN")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    connection = _Connection(conn, pipeline)
                    if fenced and self.fence is not None:
                        self.fence(connection)
                connection.pipeline = None
                yield connection
            except BaseException:
                with contextlib.suppress(Exception):  # a connection the server dropped: the pool discards it
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _connection(self, direct: bool) -> Iterator[Any]:
        """One of the pool's; or (``direct``) one of its own, made now and closed after: the
        lease's, which must see the server back as soon as it is (a pool reconnects with a
        back-off of its own) and not wait for a busy pool."""
        if not direct:
            with self._pool.connection() as conn:
                yield conn
            return
        import psycopg

        with psycopg.connect(
            self._url, connect_timeout=int(POOL_WAIT), options=SESSION["options"], autocommit=True
        ) as conn:
            yield conn

    def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._pool.connection() as conn:
            return conn.execute(translate(sql), tuple(args)).fetchall()

    def check_fence(self) -> None:
        if self.fence is not None:
            with self._pool.connection() as conn:
                self.fence(_Connection(conn))

    def close(self) -> None:
        self._pool.close()
