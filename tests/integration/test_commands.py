"""The commands a user types: submit, logs --follow, status, and the two separate processes."""

import json
import signal
import subprocess
import sys

import pytest
import requests

from tests.helpers import FAILING, PASSING, http_get, write_config

pytestmark = pytest.mark.docker

CHATTY = "".join(f"def test_tick_{i}():\n    __import__('time').sleep(0.5)\n" for i in range(6))


def test_submit_by_prefix_and_unknown_revisions(orch) -> None:
    old = orch.repo.commit("old", PASSING)
    orch.repo.commit("head", FAILING)
    orch.configure()
    orch.cli("run", "--once")
    assert orch.cli("logs", old[:8]).returncode != 0  # first sight tests only the head
    proc = orch.cli("submit", old[:10])
    assert proc.returncode == 0 and "queued" in proc.stdout and old in proc.stdout
    assert "already known" in orch.cli("submit", old).stdout
    done = orch.cli("run", "--once")
    assert done.returncode == 0 and old[:10] in done.stdout
    assert orch.result(old)["status"] == "passed"
    unknown = orch.cli("submit", "deadbeef" * 5)
    assert unknown.returncode == 3 and "unknown revision" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    hostile = orch.cli("submit", "--upload-pack=touch /tmp/pwned")
    assert hostile.returncode == 2 and "not a revision" in hostile.stderr


def test_status_table_and_json(orch) -> None:
    sha = orch.repo.commit("failing", FAILING)
    orch.configure()
    orch.cli("run", "--once")
    table = orch.cli("status")
    assert table.returncode == 0 and sha[:10] in table.stdout and "failed" in table.stdout
    jobs = json.loads(orch.cli("status", "--json").stdout)
    assert jobs[0]["commit"] == sha and jobs[0]["status"] == "failed" and jobs[0]["tests"]["failed"] == 1
    bad_repo = orch.cli("status", "--repo", "nope")
    assert bad_repo.returncode == 2 and "unknown repository" in bad_repo.stderr


def test_logs_follow_a_running_container(orch) -> None:
    sha = orch.repo.commit("chatty", {"tests/test_chatty.py": CHATTY})
    orch.configure()
    run = orch.start("run", "--once")
    orch.wait_for(lambda: orch.containers(), timeout=60)
    follow = subprocess.run(
        [sys.executable, "-m", "orchestrator", "logs", sha[:12], "--follow", "-c", str(orch.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert follow.returncode == 0
    assert all(f"test_tick_{i} PASSED" in follow.stdout for i in range(6)), follow.stdout
    assert "6 passed" in follow.stdout  # it followed until the container ended
    assert run.wait(timeout=60) == 0
    after = orch.cli("logs", sha[:12])
    assert "test_tick_5 PASSED" in after.stdout and "6 passed" in after.stdout


def test_dispatcher_and_observer_as_separate_processes(orch) -> None:
    orch.repo.commit("root", PASSING)
    config_path = orch.configure()
    port = orch.config.dispatcher.port
    base = f"http://127.0.0.1:{port}"
    dispatcher = orch.start("dispatcher")
    orch.wait_for(lambda: http_get(f"{base}/healthz"), timeout=30)
    observer = orch.start("observer", "--dispatcher-server", f"127.0.0.1:{port}")
    first = orch.wait_for(
        lambda: [j for j in http_get(f"{base}/api/jobs").json() if j["status"] == "passed"], timeout=60
    )
    assert len(first) == 1
    new = orch.repo.commit("second", FAILING)
    job = orch.wait_for(
        lambda: [j for j in http_get(f"{base}/api/jobs").json() if j["commit"] == new and j["status"] == "failed"],
        timeout=60,
    )[0]
    assert http_get(f"{base}/api/jobs/{job['id']}").json()["tests"]["failed"] == 1
    # bad input is a 4xx with a reason
    ours = {"X-Orchestrator": "1"}  # what the project's own clients send (no form can)
    assert requests.post(f"{base}/api/commits", data=b"{not json", headers=ours, timeout=10).status_code == 422
    assert requests.post(f"{base}/api/commits", data=b"{not json", timeout=10).status_code == 403  # as a form would
    assert (
        requests.post(
            f"{base}/api/commits", json={"repository": "demo", "commits": [{"sha": "../../x"}]}, timeout=10
        ).status_code
        == 422
    )
    unknown = requests.post(
        f"{base}/api/commits", json={"repository": "demo", "commits": [{"sha": "0" * 40}]}, timeout=10
    )
    assert unknown.status_code == 404 and "unknown commit" in unknown.json()["detail"]
    assert requests.get(f"{base}/api/jobs/999", timeout=10).status_code == 404
    assert requests.post(f"{base}/api/commits", data=b"x" * (9 * 1024 * 1024), timeout=30).status_code == 413
    for proc in (observer, dispatcher):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert config_path.exists()


def test_cancel_a_running_job_and_retry_it(orch) -> None:
    sha = orch.repo.commit("slow", {"tests/test_slow.py": "import time\ndef test_slow():\n    time.sleep(60)\n"})
    orch.configure()
    run = orch.start("run", "--once")
    orch.wait_for(lambda: [c for c in orch.containers() if c.status == "running"], timeout=60)
    cancel = orch.cli("cancel", sha[:8])
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    assert run.wait(timeout=30) == 0  # cancelled is not a failure
    result = orch.result(sha)
    assert result["status"] == "cancelled" and "cancelled" in result["message"] and result["duration_s"] < 30
    assert orch.cli("cancel", sha[:8]).returncode == 2  # already final
    orch.configure(runner={"timeout": 3})  # the same commit sleeps again: let the timeout end it
    retry = orch.cli("retry", sha[:8])
    assert retry.returncode == 0 and "attempt 2" in retry.stdout
    assert orch.cli("run", "--once").returncode == 1
    second = orch.result(sha)
    assert second["status"] == "timed_out" and second["attempts"] == 2
    assert second["attempt_history"][0]["outcome"] == "cancelled"
    earlier = orch.path(sha, "attempts/1")
    assert json.loads((earlier / "result.json").read_text())["status"] == "cancelled"


def test_cancel_a_warm_job_behind_a_running_one(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 1})
    assert orch.cli("run", "--once").returncode == 0
    slow = orch.repo.commit("slow", {"tests/test_slow.py": "import time\ndef test_slow():\n    time.sleep(4)\n"})
    waiting = orch.repo.commit("waiting", {"tests/test_slow.py": None})
    run = orch.start("run", "--once")
    # the waiting job's container is started warm while the slow one runs; the job stays queued
    orch.wait_for(lambda: len([c for c in orch.containers() if c.status == "running"]) == 2, timeout=60)
    status = {j["commit"]: j["status"] for j in json.loads(orch.cli("status", "--json").stdout)}
    assert status[slow] == "running" and status[waiting] == "queued"
    assert orch.cli("cancel", waiting[:10]).returncode == 0
    assert run.wait(timeout=60) == 0
    assert orch.result(slow)["status"] == "passed"
    assert json.loads(orch.cli("status", "--json").stdout)[0]["status"] == "cancelled"
    assert orch.containers() == []  # the warm container was discarded
    cancelled = orch.result(waiting)  # a job that never ran still ends with its files
    assert cancelled["status"] == "cancelled" and cancelled["message"] == "cancelled before it ran"
    assert b"cancelled before it ran" in orch.log(waiting)


def test_as_many_jobs_wait_warm_as_there_are_slots_and_start_in_queue_order(orch) -> None:
    """Two slots, five commits: two run, the next two wait warm (labelled, still queued),
    the fifth waits cold; a cancelled warm job is discarded and the others keep their order."""
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 2})
    assert orch.cli("run", "--once").returncode == 0
    shas = [
        orch.repo.commit(
            f"c{i}", {"tests/test_slow.py": f"import time\ndef test_slow():\n    time.sleep({4 - i % 2})\n"}
        )
        for i in range(5)
    ]
    run = orch.start("run", "--once")

    def warm() -> list[str]:
        return [
            c.labels["orchestrator.job"]
            for c in orch.containers()
            if c.status == "running" and c.labels.get("orchestrator.warm") == "1"
        ]

    orch.wait_for(
        lambda: len(warm()) == 2 and len([c for c in orch.containers() if c.status == "running"]) == 4, timeout=60
    )
    status = {j["commit"]: j["status"] for j in json.loads(orch.cli("status", "--json").stdout)}
    assert [status[sha] for sha in shas] == ["running", "running", "queued", "queued", "queued"]
    assert orch.cli("cancel", shas[3][:10]).returncode == 0
    assert run.wait(timeout=120) == 0, run.stderr[-2000:]
    results = [orch.result(sha) for sha in shas]
    assert [r["status"] for r in results] == ["passed", "passed", "passed", "cancelled", "passed"]
    assert results[2]["started_at"] <= results[4]["started_at"]  # the warm one first
    assert all(r["attempts"] == 1 for r in results[:3] + results[4:])
    assert orch.containers() == []


def test_job_commands_against_a_dispatcher_on_another_machine(orch, tmp_path) -> None:
    """With --server (or dispatcher.url), every job command goes through the HTTP API: the
    second config below has a state_dir of its own that never comes into existence."""
    old = orch.repo.commit("old", PASSING)
    orch.repo.commit("chatty", {"tests/test_chatty.py": CHATTY})
    orch.configure(runner={"parallelism": 1})
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    remote = write_config(elsewhere, {"demo": orch.repo.path}, dispatcher={"url": base})
    dispatcher = orch.start("dispatcher")
    orch.wait_for(lambda: http_get(f"{base}/healthz"), timeout=30)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "-c", str(remote)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("poll").stdout.strip() == "queued 1 new commit"  # first sight: the head only
    head = orch.repo.head()
    orch.wait_for(lambda: [c for c in orch.containers() if c.status == "running"], timeout=60)
    follow = cli("logs", head[:10], "--follow")
    assert follow.returncode == 0 and "7 passed" in follow.stdout, follow.stderr  # followed to the end
    submitted = cli("submit", old[:10])
    assert submitted.returncode == 0 and f"queued: job 2 {old}" in submitted.stdout
    job = orch.wait_for(
        lambda: [j for j in http_get(f"{base}/api/jobs").json() if j["commit"] == old and j["status"] == "passed"],
        timeout=60,
    )[0]
    status = json.loads(cli("status", "--json").stdout)
    assert {j["commit"]: j["status"] for j in status}[old] == "passed"
    assert cli("cancel", old[:10]).returncode == 2  # already final: refused, as locally
    retried = cli("retry", old[:10])
    assert retried.returncode == 0 and "attempt 2" in retried.stdout
    unknown = cli("logs", "deadbeef")
    assert unknown.returncode == 3 and "no job for a commit starting with deadbeef" in unknown.stderr
    orch.wait_for(
        lambda: (
            http_get(f"{base}/api/jobs/{job['id']}").json()["attempts"] == 2
            and http_get(f"{base}/api/jobs/{job['id']}").json()["status"] == "passed"
        ),
        timeout=60,
    )
    assert not (elsewhere / "state").exists()  # nothing went to the local state_dir
    local = orch.cli("status", "--server", base)
    assert local.returncode == 0 and old[:10] in local.stdout
    dispatcher.send_signal(signal.SIGTERM)
    assert dispatcher.wait(timeout=30) == 0


def test_once_says_what_it_could_not_fetch(orch, tmp_path) -> None:
    """An unreachable repository, or a branch pattern that matches nothing, is never a
    silent success: git's own reason is shown and `run --once` exits 3."""
    sha = orch.repo.commit("root", PASSING)
    path = orch.configure()
    path.write_text(path.read_text().replace("  url:", "  branches: [main, 'relase/*']\n  url:", 1))
    gone = tmp_path / "elsewhere.git"
    subprocess.run(["git", "init", "-q", "--bare", str(gone)], check=True)
    text = path.read_text().replace("repositories:\n", f"repositories:\n- name: gone\n  url: {gone}\n", 1)
    path.write_text(text)
    subprocess.run(["rm", "-rf", str(gone / "objects"), str(gone / "HEAD")], check=True)  # no longer a repository
    proc = orch.cli("run", "--once")
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("orchestrator: gone: cannot clone") and "fatal:" in last
    assert "branch pattern 'relase/*' matches no branch" in proc.stderr
    assert orch.result(sha)["status"] == "passed"  # what could be tested was tested
