"""The terminal's live view of ``orchestrator run``: what it draws from the store, and that
only a terminal gets it (a pipe gets plain log lines)."""

from __future__ import annotations

import dataclasses
import os
import pty
import select
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from orchestrator.cli.live_view import render
from orchestrator.models import JobStatus, utcnow
from orchestrator.store import NewCommit, Store
from tests.helpers import GitRepo, write_config


def test_it_shows_running_jobs_the_queue_and_the_last_finished(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.record_commits("demo", [NewCommit(f"{i:040x}", f"subject [bold]{i}[/]", ("main",)) for i in range(4)])
    done = store.claim_next()
    store.move(done, JobStatus.PASSED)
    running = store.claim_next()
    store.apply(
        running,
        dataclasses.replace(running, started_at=utcnow() - timedelta(seconds=42.2), message="building environment"),
    )
    console = Console(record=True, width=160)
    console.print(render(store))
    text = console.export_text()
    assert "1 running · 2 queued" in text and f"{1:040x}"[:10] in text and "building environment" in text
    assert "42s" in text
    assert "last finished" in text and "passed" in text and "subject [bold]0[/]" in text  # text, not markup
    store.close()


def test_a_terminal_gets_the_view_and_a_pipe_plain_lines(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "upstream")
    repo.commit("root")
    config = write_config(tmp_path, {"demo": repo.path}, runner={"docker_host": "tcp://127.0.0.1:9"})
    command = [sys.executable, "-m", "orchestrator", "run", "-c", str(config)]

    piped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    piped.terminate()
    _, err = piped.communicate(timeout=20)
    assert "running ·" not in err and "INFO" in err  # plain log lines

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(follower)
    seen, deadline = b"", time.monotonic() + 20
    while b"running \xc2\xb7" not in seen and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
    proc.terminate()
    proc.wait(timeout=20)
    os.close(leader)
    assert b"running \xc2\xb7 1 queued" in seen or b"running \xc2\xb7 0 queued" in seen, seen[-2000:]
