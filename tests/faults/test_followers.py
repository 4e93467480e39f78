"""Log followers cannot freeze the API: 200 of them on a silent running job, against the
real dispatcher and a real container; then they go, and the dispatcher notices."""

import socket
import time

import pytest
import requests

from tests.helpers import PASSING

pytestmark = pytest.mark.docker

SILENT = "import time\ndef test_silent():\n    time.sleep(45)\n"


def _follower(port: int, job_id: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /api/jobs/{job_id}/log HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return s


def test_two_hundred_silent_followers_leave_the_api_answering(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(
        dispatcher={"host": "127.0.0.1", "port": (port := _port()), "max_followers_per_job": 200, "max_followers": 210},
        runner={"timeout": 90},
    )
    assert orch.cli("run", "--once").returncode == 0
    orch.repo.commit("silent", {"tests/test_silent.py": SILENT})
    run = orch.start("run")
    base = f"http://127.0.0.1:{port}"
    job = orch.wait_for(lambda: [j for j in _jobs(base) if j["status"] == "running" and j["container"]], timeout=60)[0]
    followers = [_follower(port, job["id"]) for _ in range(200)]
    try:
        orch.wait_for(lambda: _health(base).get("log_followers") == 200, timeout=30)
        latencies = []
        for _ in range(20):
            began = time.perf_counter()
            assert requests.get(f"{base}/healthz", timeout=5).ok
            latencies.append(time.perf_counter() - began)
        assert max(latencies) < 0.1, latencies
        assert requests.post(f"{base}/api/repositories/demo/poll", headers={"X-Orchestrator": "1"}, timeout=5).ok
        refused = requests.get(f"{base}/api/jobs/{job['id']}/log", timeout=5, stream=True)
        assert refused.status_code == 429 and "at most 200" in refused.json()["detail"]
    finally:
        for s in followers:
            s.close()
    began = time.monotonic()
    orch.wait_for(lambda: _health(base).get("log_followers") == 0, timeout=10)
    assert time.monotonic() - began < 3  # each follower noticed its client had gone
    requests.post(f"{base}/api/jobs/{job['id']}/cancel", headers={"X-Orchestrator": "1"}, timeout=5)
    orch.wait_for(lambda: [j for j in _jobs(base) if j["id"] == job["id"] and j["status"] == "cancelled"], timeout=30)
    run.terminate()
    assert run.wait(timeout=30) == 0


def _port() -> int:
    from tests.helpers import free_port

    return free_port()


def _jobs(base: str) -> list[dict]:
    try:
        return requests.get(f"{base}/api/jobs", timeout=5).json()
    except requests.RequestException:
        return []


def _health(base: str) -> dict:
    try:
        return requests.get(f"{base}/healthz", timeout=5).json()
    except requests.RequestException:
        return {}
