"""What the command prints for people: jobs as a table (rich), and logs made safe for a
terminal. Text that comes from commits and logs is printed as text, never as markup or
as terminal commands."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

STYLE = {
    "passed": "green",
    "failed": "red",
    "error": "magenta",
    "timed_out": "yellow",
    "running": "cyan",
    "queued": "dim",
    "cancelled": "dim",
    "skipped": "dim",
}


def print_jobs(documents: list[dict[str, Any]], console: Console | None = None) -> None:
    """Jobs (``result.json`` documents) as a table: a terminal's width, else wide enough;
    one line per commit, however narrow the terminal (its subject, reason and branch are cut
    with an ellipsis, never wrapped), with a cell per Python where its commits run on several (the row's
    status is the commit's: the worst of its variants'). Subjects, branch names and
    messages are Text, so ``[/]`` or ``[link=...]`` in a commit is shown as it is."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator import pythons

    rows = _commit_rows(documents)
    seen = {d["python"] for d in documents if d.get("python")}
    cells = [name for name in pythons.OFFERED if name in seen]  # a column per Python, in the offered order
    nodes = any(doc.get("node") for doc in documents)  # a column only where jobs ran on a Swarm
    columns = (
        "commit",
        "repository",
        "branch",
        "status",
        "trigger",
        *cells,
        "tests",
        "duration",
        "attempts",
        *(("node",) if nodes else ()),
        "subject",
        "message",
    )
    table_rows = [_row(doc, variants, cells, nodes) for doc, variants in rows]
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    widths = _widths(columns, table_rows, console.width, single=len({d["repository"] for d in documents}) <= 1)
    table = Table(box=None, pad_edge=False)
    kept = [k for k, column in enumerate(columns) if column in widths]
    for k in kept:
        table.add_column(columns[k], no_wrap=True, overflow="ellipsis", width=widths[columns[k]])
    for row in table_rows:
        table.add_row(*(row[k] for k in kept))
    console.print(table)


def _row(doc: dict[str, Any], variants: list[dict[str, Any]], cells: list[str], nodes: bool) -> tuple[Text, ...]:
    """One commit's cells: Text throughout, so that nothing of a commit is read as markup."""
    from rich.text import Text

    t = doc["tests"]
    tests = f"{t['passed']}/{t['total']}" + (f" ({t['failed']} failed)" if t["failed"] else "") if t["total"] else "-"
    duration = f"{doc['duration_s']:.1f}s" if doc["duration_s"] is not None else "-"
    status = doc["status"]
    by_python = {v["python"]: v["status"] for v in variants}
    return (
        Text(doc["commit"][:10]),
        Text(doc["repository"]),
        Text(printable(", ".join(doc["branches"]))),
        Text(status, style=STYLE.get(status, "dim")),
        Text(doc.get("trigger") or "push"),
        *(Text(by_python.get(name, ""), style=STYLE.get(by_python.get(name, ""), "dim")) for name in cells),
        Text(tests),
        Text(duration),
        Text(str(doc["attempts"])),
        *((Text(doc.get("node") or "-"),) if nodes else ()),
        Text(printable(doc["subject"])),
        Text(printable(doc["message"] or "")),
    )


CUT_FIRST = ("subject", "message", "branch")  # what a narrow terminal cuts, so that a commit keeps one line
DROPPABLE_FIRST = ("repository", "attempts", "duration", "trigger")  # then left out, in this order
ROOM_TO_CUT = 30  # what the cut columns keep, at least, before a droppable one goes


def _widths(columns: tuple[str, ...], rows: list[tuple[Text, ...]], width: int, single: bool) -> dict[str, int]:
    """Each column's width, for one line per commit: every column as wide as it needs, but
    the subject, reason and branch share what the others leave; on a terminal too narrow
    even for that, the repository (when there is one), attempts, duration and trigger go."""
    needed = {c: max([len(c)] + [row[k].cell_len for row in rows]) for k, c in enumerate(columns)}
    droppable = [c for c in DROPPABLE_FIRST if c != "repository" or single]

    def room() -> int:
        fixed = [w for c, w in needed.items() if c not in CUT_FIRST]
        return width - sum(fixed) - 2 * (len(needed) - 1)

    while room() < ROOM_TO_CUT and droppable:
        del needed[droppable.pop(0)]
    cut = {c: needed[c] for c in CUT_FIRST}
    while sum(cut.values()) > max(room(), 3 * len(cut)):
        widest = max(cut, key=lambda c: cut[c])
        cut[widest] -= 1
    return {**needed, **cut}


def _commit_rows(documents: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """One row per commit, in the order its first job comes: a single Python's job as it
    is; a commit's variants as one (the worst status, tests added up, the longest duration,
    the first failing variant's message), with the variants beside it."""
    from orchestrator.models import JobStatus
    from orchestrator.results import variants as combine

    grouped: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
    for doc in documents:
        grouped.setdefault((doc["repository"], doc["commit"], bool(doc.get("python"))), []).append(doc)
    rows: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for (_, _, several), docs in grouped.items():
        if not several:
            rows.extend((doc, []) for doc in docs)
            continue
        status = combine.overall(JobStatus(d["status"]) for d in docs).value
        tests = {k: sum(d["tests"][k] for d in docs) for k in docs[0]["tests"]}
        durations = [d["duration_s"] for d in docs if d["duration_s"] is not None]
        first_bad = next((d for d in docs if d["status"] == status), docs[0])
        row = {
            **first_bad,
            "status": status,
            "tests": tests,
            "duration_s": max(durations) if durations else None,
            "attempts": max(d["attempts"] for d in docs),
        }
        rows.append((row, docs))
    return rows


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


# Everything a terminal takes as a command: CSI (colours are kept), OSC (window title,
# clipboard, hyperlinks), DCS/APC/PM/SOS strings, other escapes, and C0 controls but
# tab, newline, carriage return and backspace.
_SEQUENCE = re.compile(
    rb"""
    \x1b\[[0-?]*[ -/]*[@-~]                  # CSI ... final byte
  | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)        # OSC ... BEL or ST
  | \x1b[P_^X][^\x1b]*\x1b\\                 # DCS, APC, PM, SOS ... ST
  | \x1b[ -/]*[0-OQ-WYZ\\`-~]               # any other escape
""",
    re.X,
)
_SGR = re.compile(rb"\x1b\[[0-9;:]*m")
_CONTROLS = re.compile(rb"[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
_HOLD_LIMIT = 4096


class TerminalFilter:
    """Streams a log to a terminal: colours kept, every other control sequence removed.
    A sequence cut between two chunks is held until the next one (up to 4 KiB; longer, or
    never completed, it is dropped)."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data, self._held = self._held + chunk, b""
        out, at = [], 0
        while (esc := data.find(b"\x1b", at)) != -1:
            out.append(_CONTROLS.sub(b"", data[at:esc]))
            match = _SEQUENCE.match(data, esc)
            if match is not None and match.end() < len(data):
                out.append(match.group() if _SGR.fullmatch(match.group()) else b"")
                at = match.end()
            elif len(data) - esc < _HOLD_LIMIT:  # maybe completed by the next chunk
                self._held = data[esc:]
                return b"".join(out)
            else:
                at = esc + 1  # an escape that never ends: dropped
        out.append(_CONTROLS.sub(b"", data[at:]))
        return b"".join(out)

    def close(self) -> bytes:
        """Nothing more is coming: what is held is a whole sequence, or it is only text."""
        held, self._held = self._held, b""
        if _SEQUENCE.fullmatch(held):
            return held if _SGR.fullmatch(held) else b""
        return _CONTROLS.sub(b"", held.replace(b"\x1b", b""))
