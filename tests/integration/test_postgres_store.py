"""The whole system on the PostgreSQL store (``store.url``), on the real engine with real
commits: every verdict, a re-run of the failed tests, a search, and a dispatcher killed
while its containers run, whose restart re-adopts them from what PostgreSQL kept."""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import FAILING, PASSING

pytestmark = pytest.mark.docker


def test_jobs_run_and_are_found_again_on_postgresql(orch, postgres) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(store={"url": postgres.database()})
    assert orch.cli("run", "--once").returncode == 0
    failing = orch.repo.commit("fail", FAILING)
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(failing)
    assert result["status"] == "failed" and result["tests"]["failed"] == 1
    assert not orch.config.db_path.exists()  # nothing of the store in state_dir: it is all in PostgreSQL
    assert orch.cli("retry", failing[:12], "--failed").returncode == 0
    assert orch.cli("run", "--once").returncode == 1
    again = orch.result(failing)
    assert again["message"].startswith("failed again") and again["tests"]["passed"] == 1
    hits = json.loads(orch.cli("search", "arithmetic", "--json").stdout)
    assert hits and hits[0]["commit"] == failing
    shown = json.loads(orch.cli("status", "--json").stdout)
    assert [j["status"] for j in shown] == ["failed", "passed"]


def test_a_dispatcher_killed_while_containers_run_readopts_them_from_postgresql(orch, postgres) -> None:
    slow = {"tests/test_slow.py": "import time\n\ndef test_slow():\n    time.sleep(4)\n"}
    sha = orch.repo.commit("slow", slow)
    orch.configure(store={"url": postgres.database()})
    run = orch.start("run")

    def running() -> str | None:
        jobs = json.loads(orch.cli("status", "--json").stdout or "[]")
        return next((j["container"] for j in jobs if j["status"] == "running" and j["container"]), None)

    container = orch.wait_for(running, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    result = orch.result(sha)
    assert result["status"] == "passed" and result["attempts"] == 1 and result["container"] == container
    assert orch.containers() == []
