"""``orchestrator store migrate``: an existing SQLite store copied into PostgreSQL, every row
of every table, ids kept (result files, container labels and webhook keys name them), the
counters set past them; into an empty database only, in one transaction (all of it or
nothing). The SQLite file is left as it was."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.store import Store

# parents before the rows that name them; the full-text index's rows with their rowids
TABLES = (
    "meta",
    "repositories",
    "heads",
    "jobs",
    "attempts",
    "bisections",
    "outbox",
    "test_cases",
    "test_durations",
    "merges",
    "pauses",
    "quarantine",
    "schedules",
    "search_indexed",
    "search",
)
SERIAL = {"jobs": "id", "bisections": "id", "outbox": "id", "merges": "id", "search": "rowid"}
BATCH = 5000


def migrate(source: Path, target: str) -> dict[str, int]:
    """Copy the store at ``source`` into the PostgreSQL database at ``target``; the rows
    copied, by table."""
    if not source.is_file():
        raise UsageError(f"no SQLite store at {source} to migrate")
    old, new = Store(source), Store(target)
    try:
        if new.read_one("SELECT COUNT(*) FROM jobs"):
            raise UsageError("the PostgreSQL store already has jobs: migrate into an empty database")
        counts: dict[str, int] = {}
        with new.database.write() as db:
            conn = db._conn  # the driver's own: rows as they are, no translation
            have = {
                table: [
                    r[0]
                    for r in conn.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
                    ).fetchall()
                ]
                for table in TABLES
            }
            for table in TABLES:
                if table == "search":
                    columns = ["rowid", "text", "repository", "job_id", "line", "kind"]
                else:
                    columns = [r[1] for r in old.database.read(f"PRAGMA table_info({table})") if r[1] in have[table]]
                where = " WHERE key != 'schema'" if table == "meta" else ""
                rows = old.database.read(f"SELECT {', '.join(columns)} FROM {table}{where}")
                if table == "meta":
                    conn.execute("DELETE FROM meta WHERE key != 'schema'")
                marks = ", ".join(["%s"] * len(columns))
                with conn.cursor() as cursor:
                    for start in range(0, len(rows), BATCH):
                        cursor.executemany(
                            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows[start : start + BATCH]
                        )
                counts[table] = len(rows)
            for table, column in SERIAL.items():
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" GREATEST((SELECT MAX({column}) FROM {table}), 1))"
                )
        return counts
    finally:
        old.close()
        new.close()
