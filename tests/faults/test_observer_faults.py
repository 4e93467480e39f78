"""Observer faults: the dispatcher away while a separate observer runs, and a repository
that cannot be fetched for a while. Found commits are delivered once the other side is
back; progress is recorded only when the dispatcher has acknowledged it."""

import signal
import subprocess

import pytest
import requests

from tests.helpers import FAILING, PASSING

pytestmark = pytest.mark.docker


def _jobs(base: str) -> list[dict]:
    try:
        return requests.get(f"{base}/api/jobs", timeout=5).json()
    except requests.RequestException:
        return []


def _finished(base: str, shas: list[str]) -> list[dict] | None:
    jobs = [j for j in _jobs(base) if j["commit"] in shas and j["status"] in ("passed", "failed")]
    return jobs if len(jobs) == len(shas) else None


def test_observer_keeps_commits_while_the_dispatcher_is_down(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure()
    port = orch.config.dispatcher.port
    base = f"http://127.0.0.1:{port}"
    dispatcher = orch.start("dispatcher")
    observer = orch.start("observer", "--dispatcher-server", f"127.0.0.1:{port}")
    orch.wait_for(lambda: [j for j in _jobs(base) if j["status"] == "passed"], timeout=60)
    dispatcher.send_signal(signal.SIGTERM)
    assert dispatcher.wait(timeout=30) == 0
    made = [orch.repo.commit("while down 1", FAILING), orch.repo.commit("while down 2", PASSING)]
    mirror = orch.config.state_dir / "mirrors" / "demo"
    orch.wait_for(lambda: _has_commit(mirror, made[1]), timeout=30)  # the observer found them ...
    assert observer.poll() is None  # ... failed to deliver them, and goes on
    dispatcher = orch.start("dispatcher")
    done = orch.wait_for(lambda: _finished(base, made), timeout=90)
    assert {j["commit"]: j["status"] for j in done} == {made[0]: "failed", made[1]: "passed"}
    for proc in (observer, dispatcher):
        proc.send_signal(signal.SIGTERM)
    _, observer_err = observer.communicate(timeout=30)
    dispatcher.communicate(timeout=30)
    assert "unreachable" in observer_err and "retrying in" in observer_err


def test_run_keeps_watching_and_tests_each_push(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure()
    run = orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: [j for j in _jobs(base) if j["status"] == "passed"], timeout=60)
    pushed = orch.repo.commit("pushed later", FAILING)
    job = orch.wait_for(
        lambda: [j for j in _jobs(base) if j["commit"] == pushed and j["status"] == "failed"], timeout=60
    )
    assert job[0]["tests"]["failed"] == 1
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0


def _has_commit(mirror, sha: str) -> bool:
    return (
        subprocess.run(
            ["git", "--git-dir", str(mirror), "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True
        ).returncode
        == 0
    )
