"""What the command prints from commits and logs: text, never markup or terminal
commands. The command runs for real (a subprocess), to a pipe and to a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli.console import TerminalFilter
from orchestrator.models import JobStatus
from tests.helpers import GitRepo, Web

HOSTILE_SUBJECT = "[/] [link=https://evil.example]click[/link] [bold red]alarm"
ESCAPES = (
    b"plain \x1b[31mred\x1b[0m \x1b]0;pwned title\x07 \x1b]52;c;ZXZpbA==\x07 \x1b[2J"
    b" \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\ \x1bP+q\x1b\\ end\n"
)


@pytest.fixture
def finished(tmp_path: Path, repo: GitRepo):
    repo.commit(HOSTILE_SUBJECT)
    w = Web(tmp_path, repo)
    w.jobs.poll()
    job = w.finish(JobStatus.FAILED)
    w.results.write(job, lambda fh: fh.write(ESCAPES), None)
    yield w, job
    w.close()


def _cli(w: Web, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "-c", str(w.config.source)], capture_output=True, timeout=60
    )


def test_markup_in_a_subject_is_shown_as_text(finished) -> None:
    w, job = finished
    status = _cli(w, "status")
    assert status.returncode == 0, status.stderr
    assert b"[/] [link=https://evil.example]click[/link]" in status.stdout and b"\x1b]8" not in status.stdout


def test_logs_to_a_file_are_exact(finished) -> None:
    w, job = finished
    assert _cli(w, "logs", job.commit[:10]).stdout == ESCAPES


def test_logs_to_a_terminal_keep_colours_and_nothing_else(finished) -> None:
    w, job = finished
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "logs", job.commit[:10], "-c", str(w.config.source)],
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(secondary)
    seen, deadline = b"", time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=10) == 0
    assert b"\x1b[31mred\x1b[0m" in seen and b"end" in seen
    for bad in (b"\x1b]", b"\x1b[2J", b"\x1bP", b"\x07"):
        assert bad not in seen


@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_filter_is_the_same_whatever_the_chunks(size: int) -> None:
    f = TerminalFilter()
    out = b"".join(f.feed(ESCAPES[i : i + size]) for i in range(0, len(ESCAPES), size)) + f.close()
    assert out == b"plain \x1b[31mred\x1b[0m    link  end\n"


def test_a_narrow_terminal_keeps_one_line_per_commit_and_cuts_the_subject() -> None:
    import io

    from rich.console import Console

    from orchestrator.cli.console import print_jobs

    document = {
        "commit": "a" * 40,
        "repository": "demo",
        "branches": ["feature/a-long-branch-name"],
        "status": "failed",
        "trigger": "schedule",
        "tests": {"total": 10, "passed": 9, "failed": 1},
        "duration_s": 12.5,
        "attempts": 1,
        "subject": "a subject long enough to fill a narrow terminal twice over, and then some more",
        "message": "1 failure: tests.test_a::test_something_that_failed",
        "python": None,
    }
    out = io.StringIO()
    narrow = Console(file=out, width=80, force_terminal=True, color_system=None)
    print_jobs([document, {**document, "commit": "b" * 40}], narrow)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), out.getvalue()  # a header and a line each
    assert "aaaaaaaaaa" in lines[1] and "failed" in lines[1] and "9/10" in lines[1]
    assert "a subject lo…" in lines[1]  # the subject was cut, not the row
    wider = io.StringIO()
    print_jobs([document], Console(file=wider, width=110, force_terminal=True, color_system=None))
    lines = [line for line in wider.getvalue().splitlines() if line.strip()]
    assert len(lines) == 2 and "schedule" in lines[1] and "12.5s" in lines[1]  # room for the trigger and the rest
