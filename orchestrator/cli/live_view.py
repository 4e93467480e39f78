"""What ``orchestrator run`` shows in a terminal: the running jobs with their elapsed time
and what they are doing, the queue's depth and the last finished jobs, redrawn twice a
second under the log (rich). Piped or redirected, nothing changes: plain log lines.

Everything drawn comes from the store, as the API would show it; text from commits is
drawn as text, never as markup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from orchestrator.cli.console import STYLE, printable
from orchestrator.models import FINAL_STATUSES, JobStatus, utcnow
from orchestrator.store import Store

FINISHED_SHOWN = 5


def render(store: Store) -> Group:
    now = utcnow()
    running = store.with_status(JobStatus.RUNNING)
    table = Table(
        box=None,
        pad_edge=False,
        title_justify="left",
        title=f"{len(running)} running · {store.count(JobStatus.QUEUED)} queued",
    )
    for column in ("commit", "repository", "elapsed", "attempt", "subject"):
        table.add_column(column, no_wrap=column != "subject")
    for job in running:
        elapsed = f"{(now - job.started_at).total_seconds():.0f}s" if job.started_at else "-"
        doing = f" ({job.message})" if job.message else ""
        table.add_row(
            job.commit[:10], Text(job.repository), elapsed, str(job.attempts), Text(printable(job.subject) + doing)
        )
    finished = Table(box=None, pad_edge=False, title="last finished", title_justify="left")
    for column in ("commit", "repository", "status", "duration", "subject"):
        finished.add_column(column, no_wrap=column != "subject")
    done = [j for j in store.list_jobs(limit=50) if j.status in FINAL_STATUSES and j.status is not JobStatus.SKIPPED]
    for job in sorted(done, key=lambda j: j.finished_at or now, reverse=True)[:FINISHED_SHOWN]:
        finished.add_row(
            job.commit[:10],
            Text(job.repository),
            Text(job.status.value, style=STYLE.get(job.status.value, "")),
            f"{job.duration_s:.1f}s" if job.duration_s is not None else "-",
            Text(printable(job.subject)),
        )
    return Group(table, Text(""), finished)


@contextmanager
def live_view(store: Store) -> Iterator[None]:
    """The view while the block runs, if standard error is a terminal; the log lines go
    above it (through rich, on the same console)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers = [RichHandler(console=console, show_path=False, markup=False)]
    try:
        with Live(get_renderable=lambda: render(store), console=console, refresh_per_second=2, transient=True):
            yield
    finally:
        root.handlers = handlers
