"""An operator's day, on the real engine with real commits: quarantine turns a red job green
(and says so), re-running only the failed tests on a single and on a split suite, a pause
that outlives a restart, a schedule driven by an injected clock, and the command line
against a dispatcher from a folder with no config at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.backends import connect
from orchestrator.backends.engine import Engine
from orchestrator.models import JobStatus
from orchestrator.store import Store
from runner_image import orchestrator_protocol as protocol
from tests import fakes
from tests.helpers import FAILING, NO_ANSWER, PASSING, http_get

pytestmark = pytest.mark.docker

FLAKY_ON_FIRST_ATTEMPT = (
    f"import os\ndef test_flaky():\n    assert os.environ['{protocol.ATTEMPT}'] != '1', 'first attempt'\n"
)
BROKEN = "def test_broken():\n    assert 2 + 2 == 5, 'arithmetic'\n"
OK = "def test_ok_{n}():\n    assert True\n"


def test_a_quarantined_failure_turns_a_red_job_green_and_says_so(orch) -> None:
    sha = orch.repo.commit("red", FAILING)
    orch.configure()
    assert orch.cli("run", "--once").returncode == 1
    unknown = orch.cli("quarantine", "add", "demo", "tests.test_ok::test_nope", "--reason", "flaky")
    assert unknown.returncode == 3 and unknown.stderr.strip().splitlines() == [
        "orchestrator: no test 'tests.test_ok::test_nope' in the history of demo"
    ]
    until = datetime.now(UTC) + timedelta(seconds=15)  # it expires on its own, during this test
    added = orch.cli(
        "quarantine", "add", "demo", "tests.test_ok::test_bad", "--reason", "flaky on CI", "--until", until.isoformat()
    )
    assert added.returncode == 0, added.stderr
    listed = json.loads(orch.cli("quarantine", "list", "--json").stdout)
    assert [(e["test"], e["reason"], e["by"]) for e in listed] == [("tests.test_ok::test_bad", "flaky on CI", "cli")]
    assert orch.cli("retry", sha[:12]).returncode == 0
    assert orch.cli("run", "--once").returncode == 0  # green now
    result = orch.result(sha)
    assert result["status"] == "passed" and result["quarantined"] == ["tests.test_ok::test_bad"]
    assert result["tests"]["failed"] == 1 and result["tests"]["quarantined"] == 1  # never silently green
    assert result["message"] == "passed with 1 quarantined test failing: tests.test_ok::test_bad"
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.5)
    assert json.loads(orch.cli("quarantine", "list", "--json").stdout) == []  # expired
    assert orch.cli("retry", sha[:12]).returncode == 0
    assert orch.cli("run", "--once").returncode == 1  # red again once it is out
    assert orch.result(sha)["quarantined"] == []


def test_retry_failed_runs_only_the_failing_tests_and_counts_with_the_rest(orch) -> None:
    files = {
        "tests/test_a.py": FLAKY_ON_FIRST_ATTEMPT + BROKEN,
        "tests/test_b.py": "".join(OK.format(n=n) for n in range(3)),
    }
    sha = orch.repo.commit("two failures", files)
    orch.configure()
    assert orch.cli("run", "--once").returncode == 1
    first = orch.result(sha)
    assert first["tests"] == {"total": 5, "passed": 3, "failed": 2, "errors": 0, "skipped": 0, "quarantined": 0}
    retried = orch.cli("retry", sha[:12], "--failed")
    assert retried.returncode == 0 and "its 2 failed tests (attempt 2)" in retried.stdout, retried.stdout
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(sha)
    assert result["attempts"] == 2 and result["trigger"] == "manual"
    assert result["rerun"]["tests"] == ["tests.test_a::test_broken", "tests.test_a::test_flaky"]
    assert result["message"] == "failed again: 1 of the 2 failed tests of attempt 1 re-run"
    assert result["tests"] == {"total": 5, "passed": 4, "failed": 1, "errors": 0, "skipped": 0, "quarantined": 0}
    junit = orch.path(sha, "junit.xml").read_text()
    assert junit.count("<testcase") == 2 and "test_ok_" not in junit  # only they ran
    assert orch.path(sha, "attempts/1/result.json").exists()  # kept as an attempt, like any retry
    once_more = orch.cli("retry", sha[:12], "--failed")
    assert once_more.returncode == 0  # it failed again: its one failing test may be re-run once more
    assert orch.cli("run", "--once").returncode == 1
    again = orch.result(sha)
    assert again["rerun"]["tests"] == ["tests.test_a::test_broken"] and again["tests"]["passed"] == 4


def test_retry_failed_passes_when_the_flaky_test_passes_and_is_refused_for_a_passed_job(orch) -> None:
    sha = orch.repo.commit("flaky", {"tests/test_a.py": FLAKY_ON_FIRST_ATTEMPT + OK.format(n=0)})
    orch.configure()
    assert orch.cli("run", "--once").returncode == 1
    assert orch.cli("retry", sha[:12], "--failed").returncode == 0
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert result["status"] == "passed" and result["tests"]["passed"] == 2 and result["tests"]["total"] == 2
    assert result["message"] == "the 1 failed tests of attempt 1 passed when re-run"
    refused = orch.cli("retry", sha[:12], "--failed")
    assert refused.returncode == 2 and "is passed: only a failed job's tests re-run alone" in refused.stderr


def test_retry_failed_on_a_split_suite_runs_only_the_shards_with_failures(orch) -> None:
    files = {f"tests/test_{m}.py": "".join(OK.format(n=n) for n in range(3)) for m in "abcd"}
    files["tests/test_e.py"] = FLAKY_ON_FIRST_ATTEMPT
    sha = orch.repo.commit("split", files)
    orch.configure(repository={"shards": 3, "shard_unit": "module"}, runner={"parallelism": 3})
    assert orch.cli("run", "--once").returncode == 1
    first = orch.result(sha)
    assert len(first["shards"]) == 3 and first["tests"]["total"] == 13
    assert orch.cli("retry", sha[:12], "--failed").returncode == 0
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert result["rerun"]["shards"] == 1 and result["shards"] == []  # one container: a single run
    assert result["tests"] == {"total": 13, "passed": 13, "failed": 0, "errors": 0, "skipped": 0, "quarantined": 0}


def test_retry_failed_on_two_failing_shards_runs_two_each_with_its_failing_test(orch) -> None:
    files = {f"tests/test_{m}.py": "".join(OK.format(n=n) for n in range(3)) for m in "cd"}
    files.update({f"tests/test_{m}.py": FLAKY_ON_FIRST_ATTEMPT for m in "ab"})
    sha = orch.repo.commit("split, fixed", files)
    # no history: whole files, heaviest first (c, d, then a and b), so a and b land apart
    orch.configure(repository={"shards": 2, "shard_unit": "module", "shard_split": "fixed"}, runner={"parallelism": 2})
    assert orch.cli("run", "--once").returncode == 1
    first = orch.result(sha)
    assert [s["tests"]["failed"] for s in first["shards"]] == [1, 1]
    assert orch.cli("retry", sha[:12], "--failed").returncode == 0
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert result["rerun"]["shards"] == 2 and len(result["shards"]) == 2
    assert [s["tests"]["total"] for s in result["shards"]] == [1, 1]  # each ran its one failed test
    assert result["tests"] == {"total": 8, "passed": 8, "failed": 0, "errors": 0, "skipped": 0, "quarantined": 0}


def test_a_pause_outlives_a_restart_and_resume_lets_the_queue_run(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure()
    assert orch.cli("run", "--once").returncode == 0
    paused = orch.cli("pause", "demo", "--reason", "database migration")
    assert paused.returncode == 0 and "paused since" in paused.stdout
    sha = orch.repo.commit("while paused", PASSING)
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    for _ in range(2):  # the pause is in the store: a restart keeps it
        run = orch.start("run")
        health = orch.wait_for(lambda: http_get(f"{base}/healthz"), timeout=30).json()
        assert health["paused"]["demo"]["reason"] == "database migration" and health["paused"]["demo"]["since"]
        job = orch.wait_for(lambda: [j for j in http_get(f"{base}/api/jobs").json() if j["commit"] == sha])[0]
        assert job["status"] == "queued"  # observed and queued, never started
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
    assert orch.cli("status", "--json").returncode == 0
    assert orch.cli("resume", "demo").returncode == 0
    again = orch.cli("resume", "demo")
    assert again.returncode == 2 and "demo is not paused" in again.stderr
    assert orch.cli("run", "--once").returncode == 0
    assert orch.result(sha)["status"] == "passed"


def test_a_schedule_tests_the_heads_again_on_an_injected_clock(orch) -> None:
    sha = orch.repo.commit("root", PASSING)
    orch.configure(repository={"schedule": "0 3 * * *"})
    assert orch.cli("run", "--once").returncode == 0
    config = orch.config
    # `run --once` saw the schedule on the real clock, and the injected one goes on from
    # there: two days later, two slots were missed (they run once), then the next slot comes
    day = (datetime.now().astimezone() + timedelta(days=2)).replace(hour=2, minute=59, second=0, microsecond=0)
    now = [day]
    store = Store(config.db_path)
    backend = connect(config.runner, Engine(config.runner.docker_host))
    try:
        for attempts, moment in ((2, day), (3, day + timedelta(minutes=1, seconds=5))):
            now[0] = moment
            dispatcher = fakes.dispatcher(config, store, backend, clock=lambda: now[0])
            stop = threading.Event()
            timer = threading.Timer(120, stop.set)  # bounded, whatever happens
            timer.start()
            try:
                dispatcher.run(stop, until_idle=True)
            finally:
                timer.cancel()
            job = store.by_commit("demo", sha)
            assert job is not None and job.status is JobStatus.PASSED and job.attempts == attempts
            assert job.trigger == "schedule"
    finally:
        backend.close()
        store.close()
    result = orch.result(sha)
    assert result["trigger"] == "schedule" and result["message"] is None
    assert orch.path(sha, "attempts/1/result.json").exists()
    shown = orch.cli("status")
    assert shown.returncode == 0 and "schedule" in shown.stdout


def test_the_command_line_from_a_laptop_needs_no_config(orch, tmp_path: Path) -> None:
    sha = orch.repo.commit("root", PASSING)
    orch.configure()
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    run = orch.start("run")
    orch.wait_for(lambda: [j for j in (http_get(f"{base}/api/jobs") or NO_ANSWER).json() if j["status"] == "passed"])
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    elsewhere = {"repositories": [{"name": "demo", "url": "/srv/git/on-the-ci-machine"}], "dispatcher": {"url": base}}
    (laptop / "config.yaml").write_text(json.dumps(elsewhere))

    def cli(*args: str, env: dict | None = None, where: Path = laptop) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k not in (protocol.SERVER, protocol.TOKEN)}
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=60,
            env={**environment, **(env or {})},
        )

    bare = tmp_path / "bare"
    bare.mkdir()
    for shown in (
        cli("status", "--server", base, where=bare),  # no config at all
        cli("status", where=bare, env={protocol.SERVER: base}),
        cli("status"),  # a config whose repository paths are the CI machine's: only dispatcher.url is read
    ):
        assert shown.returncode == 0 and sha[:10] in shown.stdout, shown.stderr
    remote = {protocol.SERVER: base}
    assert cli("pause", "demo", "--reason", "from a laptop", where=bare, env=remote).returncode == 0
    assert http_get(f"{base}/healthz").json()["paused"]["demo"]["reason"] == "from a laptop"
    assert cli("resume", "demo").returncode == 0
    for action in (
        ["add", "demo", "tests.test_ok::test_ok", "--reason", "from afar"],
        ["remove", "demo", "tests.test_ok::test_ok"],
    ):
        done = cli("quarantine", *action, where=bare, env=remote)
        assert done.returncode == 0, done.stderr
    assert http_get(f"{base}/api/quarantine").json() == []
    found = cli("search", "passed", "--json", "--server", base, where=bare)
    assert found.returncode == 0 and json.loads(found.stdout)[0]["commit"] == sha
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
