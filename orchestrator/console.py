"""What the command prints for people: jobs as a table (rich), and logs made safe for a
terminal. Text that comes from commits and logs is printed as text, never as markup or
as terminal commands."""

from __future__ import annotations

import re
from typing import Any

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


def print_jobs(documents: list[dict[str, Any]]) -> None:
    """Jobs (``result.json`` documents) as a table: a terminal's width, else wide enough.
    Subjects, branch names and messages are Text, so ``[/]`` or ``[link=...]`` in a
    commit is shown as it is."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    nodes = any(doc.get("node") for doc in documents)  # a column only where jobs ran on a Swarm
    columns = (
        "commit",
        "repository",
        "branch",
        "status",
        "tests",
        "duration",
        "attempts",
        *(("node",) if nodes else ()),
        "subject",
        "message",
    )
    for column in columns:
        table.add_column(column, no_wrap=column not in ("subject", "message", "branch"))
    for doc in documents:
        t = doc["tests"]
        tests = (
            f"{t['passed']}/{t['total']}" + (f" ({t['failed']} failed)" if t["failed"] else "") if t["total"] else "-"
        )
        duration = f"{doc['duration_s']:.1f}s" if doc["duration_s"] is not None else "-"
        status = doc["status"]
        table.add_row(
            doc["commit"][:10],
            Text(doc["repository"]),
            Text(", ".join(doc["branches"])),
            Text(status, style=STYLE.get(status, "dim")),
            tests,
            duration,
            str(doc["attempts"]),
            *((Text(doc.get("node") or "-"),) if nodes else ()),
            Text(printable(doc["subject"])),
            Text(printable(doc["message"] or "")),
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    console.print(table)


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
