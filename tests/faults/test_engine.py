"""The Docker engine unreachable for 30 s, through a socket proxy the test controls (the
machine's daemon is never stopped): the dispatcher stays up, says what is wrong, backs
off, resumes, and loses nothing."""

import signal
import time

import pytest
import requests

from tests.faults.proxy import SocketProxy
from tests.helpers import PASSING

pytestmark = pytest.mark.docker

OUTAGE = 12  # seconds: several back-off rounds (1, 2, 4, 8 s), and both slow tests end inside it


@pytest.fixture
def proxy(tmp_path):
    p = SocketProxy(tmp_path / "engine.sock")
    p.start()
    yield p
    p.close()


def test_engine_outage_loses_nothing(orch, proxy) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"docker_host": proxy.url, "parallelism": 2}, retries=1)
    assert orch.cli("run", "--once").returncode == 0
    slow = [
        orch.repo.commit(
            f"slow {i}", {"tests/test_slow.py": f"import time\ndef test_slow():\n    time.sleep({5 + i})\n"}
        )
        for i in range(2)
    ]
    run = orch.start("run")

    def two_running():
        running = [c for c in orch.containers() if c.status == "running"]
        return running if len(running) == 2 else None

    running = orch.wait_for(two_running, timeout=60)
    adopted = {c.labels["orchestrator.commit"]: c.id for c in running}
    proxy.cut()
    later = orch.repo.commit("made during the outage", PASSING)
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    time.sleep(OUTAGE / 2)
    assert requests.get(f"{base}/healthz", timeout=5).ok  # the dispatcher stays up meanwhile
    time.sleep(OUTAGE / 2)
    proxy.restore()
    orch.wait_for(lambda: orch.has_result(*slow, later), timeout=90)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0
    assert "Docker engine unreachable" in stderr and "reachable again" in stderr
    for sha in slow:
        result = orch.result(sha)
        assert result["status"] == "passed" and result["attempts"] == 1, result["attempt_history"]
        assert result["container"] == adopted[sha]  # waited for, not re-run
        assert "test_slow PASSED" in orch.log(sha).decode()  # the log survived the cut
    assert orch.result(later)["status"] == "passed"


def test_engine_down_at_start_then_back(orch, proxy) -> None:
    sha = orch.repo.commit("root", PASSING)
    orch.configure(runner={"docker_host": proxy.url})
    proxy.cut()
    run = orch.start("run")
    orch.wait_for(lambda: _engine_errors(orch) >= 2, timeout=30)  # it tried, failed, and tried again
    assert run.poll() is None  # waits for the engine instead of dying
    proxy.restore()
    orch.wait_for(lambda: orch.has_result(sha), timeout=60)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=30)
    assert "unreachable" in stderr and orch.result(sha)["status"] == "passed"
    assert orch.result(sha)["attempts"] == 1  # no attempt burnt while the engine was away


def test_once_with_engine_unreachable_is_exit_3_and_keeps_the_queue(orch, proxy) -> None:
    sha = orch.repo.commit("root", PASSING)
    orch.configure(runner={"docker_host": proxy.url})
    proxy.cut()
    proc = orch.cli("run", "--once", timeout=60)
    assert proc.returncode == 3 and "unreachable" in proc.stderr.splitlines()[-1]
    proxy.restore()
    assert orch.cli("run", "--once").returncode == 0
    assert orch.result(sha)["status"] == "passed"


def _engine_errors(orch) -> float:
    """How many engine calls the running dispatcher saw fail (its /metrics)."""
    try:
        text = requests.get(f"http://127.0.0.1:{orch.config.dispatcher.port}/metrics", timeout=2).text
    except requests.RequestException:
        return 0
    return next(
        (float(line.split()[1]) for line in text.splitlines() if line.startswith("orchestrator_engine_errors_total ")),
        0,
    )


def test_a_container_removed_while_it_runs_is_retried_at_once_not_waited_for(orch) -> None:
    """Someone removes a job's container (docker rm -f): the engine answers "no such
    container", which is no outage: the attempt is re-queued at once (not after the
    timeout and the engine's grace), and the next attempt passes."""
    sha = orch.repo.commit("slow", {"tests/test_slow.py": "import time\n\ndef test_slow():\n    time.sleep(4)\n"})
    orch.configure(runner={"parallelism": 1, "timeout": 60}, retries=1)
    began = time.monotonic()
    proc = orch.start("run", "--once")
    running = orch.wait_for(lambda: [c for c in orch.containers() if c.status == "running"], timeout=60)
    time.sleep(1)  # between two of the dispatcher's waits, as often as not
    orch.engine.api.remove_container(running[0].id, force=True)
    stderr = orch.ended(proc, timeout=90)
    result = orch.result(sha)
    assert (result["status"], result["attempts"]) == ("passed", 2), stderr[-3000:]
    assert "disappeared while running" in result["attempt_history"][0]["message"]
    assert time.monotonic() - began < 45 and "engine unreachable" not in stderr
