"""What the command prints for people: jobs as a table (rich)."""

from __future__ import annotations

from typing import Any

_STYLE = {"passed": "green", "failed": "red", "error": "magenta", "timed_out": "yellow",
          "running": "cyan", "queued": "dim", "cancelled": "dim"}


def print_jobs(documents: list[dict[str, Any]]) -> None:
    """Jobs (``result.json`` documents) as a table: a terminal's width, else wide enough."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("commit", "repository", "branch", "status", "tests", "duration", "attempts", "subject", "message"):
        table.add_column(column, no_wrap=column not in ("subject", "message", "branch"))
    for doc in documents:
        t = doc["tests"]
        tests = f"{t['passed']}/{t['total']}" + (f" ({t['failed']} failed)" if t["failed"] else "") if t["total"] else "-"
        duration = f"{doc['duration_s']:.1f}s" if doc["duration_s"] is not None else "-"
        status = doc["status"]
        table.add_row(doc["commit"][:10], doc["repository"], ", ".join(doc["branches"]),
                      f"[{_STYLE.get(status, 'dim')}]{status}[/]", tests, duration, str(doc["attempts"]),
                      doc["subject"], doc["message"] or "")
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    console.print(table)
