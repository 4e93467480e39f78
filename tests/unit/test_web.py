"""The web face with the real app: badges, metrics, cancel / retry, the instant trigger,
the dashboard pages, the api token, and webhook notifications to a local HTTP server."""

import http.server
import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.api import create_app
from orchestrator.backends.docker import DockerBackend
from orchestrator.config import load_config
from orchestrator.dispatcher import Dispatcher
from orchestrator.models import JobStatus, Outcome, TestCounts
from orchestrator.notify import Notifier
from orchestrator.observer import Observer
from orchestrator.store import Store
from tests.helpers import GitRepo, write_config


def make(tmp_path: Path, repo: GitRepo, **overrides):
    config = load_config(write_config(tmp_path, {"demo": repo.path}, **overrides))
    store = Store(config.db_path)
    dispatcher = Dispatcher(config, store, DockerBackend())  # the engine is never called here
    return config, store, dispatcher


@pytest.fixture
def web(tmp_path: Path, repo: GitRepo):
    sha = repo.commit("first <script>alert(1)</script>", {"tests/test_a.py": "def test_a(): pass\n"})
    config, store, dispatcher = make(tmp_path, repo)
    Observer(config, store).poll_once()
    with TestClient(create_app(dispatcher)) as client:
        yield client, store, repo, sha
    dispatcher.shutdown()
    store.close()


def finish(store: Store, status: JobStatus, tests: TestCounts | None = None):
    job = store.claim_next()
    return store.finish(job, Outcome(status, exit_code=0 if status is JobStatus.PASSED else 1, tests=tests))


def test_badge_follows_the_branch(web) -> None:
    client, store, _, _ = web
    svg = client.get("/badge/demo/main.svg")
    assert svg.headers["content-type"] == "image/svg+xml" and b"queued" in svg.content
    finish(store, JobStatus.FAILED)
    assert b"failing" in client.get("/badge/demo/main.svg").content
    assert b"unknown" in client.get("/badge/demo/nope/x.svg").content
    assert client.get("/badge/other/main.svg").status_code == 404
    assert client.get("/badge/demo/main.png").status_code == 404


def test_metrics_in_prometheus_text(web) -> None:
    client, store, _, _ = web
    text = client.get("/metrics").text
    assert "orchestrator_queue_depth 1.0" in text and "orchestrator_running_jobs 0.0" in text
    assert "orchestrator_job_duration_seconds_bucket" in text and "orchestrator_engine_errors_total 0.0" in text


def test_cancel_queued_then_retry(web) -> None:
    client, store, _, _ = web
    cancelled = client.post("/api/jobs/1/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert client.get("/api/jobs/1/log").content == b"[orchestrator: cancelled before it ran]\n"
    assert client.post("/api/jobs/1/cancel").status_code == 409
    retried = client.post("/api/jobs/1/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert client.post("/api/jobs/1/retry").status_code == 409  # only finished jobs
    assert client.post("/api/jobs/999/retry").status_code == 404


def test_cancel_running_is_a_request_for_the_dispatcher(web) -> None:
    client, store, _, _ = web
    job = store.claim_next()
    assert client.post(f"/api/jobs/{job.id}/cancel").status_code == 202
    assert store.cancel_requested(job.id) and store.get(job.id).status is JobStatus.RUNNING


def test_instant_trigger_queues_every_new_commit(web) -> None:
    client, store, repo, _ = web
    made = [repo.commit("a"), repo.commit("b")]
    resp = client.post("/api/repositories/demo/poll")
    assert resp.status_code == 202 and resp.json()["queued"] == 2
    assert [j.commit for j in reversed(store.list_jobs())][-2:] == made
    assert client.post("/api/repositories/nope/poll").status_code == 404


def test_dashboard_pages_render_escaped(web) -> None:
    client, store, _, sha = web
    finish(store, JobStatus.FAILED, TestCounts(2, 1, 1, 0, 0))
    page = client.get("/")
    assert page.status_code == 200 and sha[:10] in page.text and "main" in page.text
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text
    job = client.get("/jobs/1")
    assert job.status_code == 200 and sha in job.text and "Retry" in job.text
    assert client.get("/jobs/0").status_code == 422 and client.get("/jobs/5").status_code == 404


def test_log_of_a_finished_job_is_the_result_file(web, tmp_path) -> None:
    client, store, _, sha = web
    job = finish(store, JobStatus.PASSED)
    directory = tmp_path / "results" / "demo" / sha
    directory.mkdir(parents=True)
    (directory / "output.log").write_bytes(b"the saved log\n")
    (directory / "junit.xml").write_bytes(
        b'<testsuite tests="1" failures="1"><testcase classname="t" name="x">'
        b'<failure message="assert 1 == 2">long trace</failure></testcase></testsuite>')
    assert client.get(f"/api/jobs/{job.id}/log").content == b"the saved log\n"
    assert client.get(f"/api/jobs/{job.id}/failures").json() == [
        {"test": "t::x", "kind": "failure", "message": "assert 1 == 2", "details": "long trace"}]


def test_api_token_guards_mutations(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    token = "s3cret-token-of-enough-length"
    config, store, dispatcher = make(tmp_path, repo, dispatcher={"host": "0.0.0.0", "port": 8999, "api_token": token})
    Observer(config, store).poll_once()
    with TestClient(create_app(dispatcher)) as client:
        assert client.post("/api/jobs/1/cancel").status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/jobs/1/cancel", headers={"Authorization": f"Bearer {token}"}).status_code == 202
        assert client.get("/api/jobs").status_code == 200  # reading needs no token
    dispatcher.shutdown()
    store.close()


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Receiver.fail_first > 0:
            _Receiver.fail_first -= 1
            self.send_response(503)
        else:
            _Receiver.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received, _Receiver.fail_first = [], 0
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_on_failures_and_recoveries_with_retries(tmp_path: Path, repo: GitRepo, receiver) -> None:
    repo.commit("root")
    config, store, dispatcher = make(tmp_path, repo, notify={"webhooks": [receiver], "on": "failures", "retries": 2})
    Observer(config, store).poll_once()
    _Receiver.fail_first = 1  # the receiver is down once: retried
    failed = finish(store, JobStatus.FAILED)
    dispatcher._finished(failed)
    second = repo.commit("fixed")
    Observer(config, store).poll_once()
    passed = finish(store, JobStatus.PASSED)
    dispatcher._finished(passed)
    repo.commit("still fine")
    Observer(config, store).poll_once()
    dispatcher._finished(finish(store, JobStatus.PASSED))  # neither a failure nor a recovery
    dispatcher.notifier.close()
    assert [(b["job"]["status"], b["recovered"]) for b in _Receiver.received] == [("failed", False), ("passed", True)]
    assert _Receiver.received[1]["job"]["commit"] == second  # "still fine" sent nothing
    dispatcher.shutdown()
    store.close()


def test_webhook_never_blocks_on_a_dead_receiver(tmp_path: Path, repo: GitRepo) -> None:
    repo.commit("root")
    config, store, _ = make(tmp_path, repo, notify={"webhooks": ["http://127.0.0.1:9/dead"], "on": "all",
                                                    "retries": 0, "timeout": 1})
    Observer(config, store).poll_once()
    notifier = Notifier(config.notify)
    import time
    began = time.monotonic()
    notifier.job_finished(finish(store, JobStatus.PASSED), None)
    assert time.monotonic() - began < 0.1
    notifier.close(timeout=5)
    store.close()
