"""Search every log: what the full-text index (store/search.py) is given of each job when
it ends, and how a search's hits are answered.

Indexed, for each job's current attempt: its log's first and last ``search.log_mb``
megabytes (a log larger than twice that has a gap in the middle; the line numbers stay the
log's own), each non-blank line up to MAX_LINE characters; each failing test's id with its
failure message; and the job's reason. The log is the suite's output: it is read as data,
cut and decoded, never interpreted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from orchestrator.models import Job
from orchestrator.results.report import Report
from orchestrator.store import Store
from orchestrator.store.db import errors as store_errors
from orchestrator.store.search import LOG, MESSAGE, TEST

log = logging.getLogger("orchestrator.results.search")

MAX_LINE = 2000  # characters of a line that are indexed and shown
MAX_TESTS = 200  # failing tests indexed per job
NEIGHBOURS = 2  # lines shown before and after a hit
_CHUNK = 1 << 20


def log_lines(path: Path, limit: int) -> tuple[list[tuple[int, str]], int]:
    """(line number, text) of the non-blank lines in the first and last ``limit`` bytes of
    the log at ``path``, and how many bytes were read."""
    try:
        size = path.stat().st_size
        fh = open(path, "rb")  # closed below, whatever happens
    except OSError:
        return [], 0
    with fh:
        if size <= 2 * limit:
            return _numbered(fh.read(), 1), size
        head = fh.read(limit)
        head = head[: head.rfind(b"\n") + 1] if b"\n" in head else b""
        skipped = 0  # newlines between the head and the tail, counted without holding them
        fh.seek(len(head))
        while fh.tell() < size - limit:
            skipped += fh.read(min(_CHUNK, size - limit - fh.tell())).count(b"\n")
        tail = fh.read()
        cut = tail.find(b"\n") + 1  # the tail's first line is whole only from there
        skipped += tail[:cut].count(b"\n")
        first_of_tail = head.count(b"\n") + skipped + 1
        return _numbered(head, 1) + _numbered(tail[cut:], first_of_tail), len(head) + len(tail)


def _numbered(data: bytes, first: int) -> list[tuple[int, str]]:
    found = []
    for number, raw in enumerate(data.split(b"\n"), start=first):
        text = raw.decode("utf-8", "replace").replace("\r", "").replace("\x00", "").strip()
        if text:
            found.append((number, text[:MAX_LINE]))
    return found


def index(store: Store, job: Job, log_path: Path, report: Report, log_mb: float) -> None:
    """Index a job that has just ended (its log written). A store that refuses costs the
    search, never the job."""
    lines, read = log_lines(log_path, int(log_mb * 1024 * 1024))
    rows = [(LOG, n, text) for n, text in lines]
    rows += [(TEST, 0, f"{f['test']} {f['message']}".strip()[:MAX_LINE]) for f in report.failures(limit=MAX_TESTS)]
    if job.message:
        rows.append((MESSAGE, 0, job.message[:MAX_LINE]))
    try:
        store.search.replace(job.id, job.attempts, job.repository, rows, read)
    except store_errors() as exc:
        log.warning("job %s: not indexed for search (%s)", job.id, exc)


def search(
    store: Store, query: str, repository: str | None = None, since: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The hits, newest first, each with its neighbours and a link to its line."""
    found = []
    for hit in store.search.search(query, repository, since, limit):
        before, after = store.search.around(hit, NEIGHBOURS)
        link = f"/jobs/{hit.job_id}/log#L{hit.line}" if hit.kind == LOG else f"/jobs/{hit.job_id}"
        found.append({**hit.document(before, after), "link": link})
    return found
