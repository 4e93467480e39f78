"""Real Git repositories and config files for the tests."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import yaml

from orchestrator.config import load_config
from orchestrator.models import Job, JobStatus, TestCounts, transition, utcnow
from orchestrator.results.files import ResultFiles
from orchestrator.results.metrics import Metrics
from orchestrator.service import local_jobs
from orchestrator.store import Store


class GitRepo:
    """A real repository made with the git command, as a user's would be."""

    def __init__(self, path: Path, branch: str = "main"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)
        self.git("config", "user.email", "dev@example.invalid")
        self.git("config", "user.name", "Dev")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, subject: str, files: dict[str, str | None] | None = None) -> str:
        """Write (or, with None, delete) files and commit them; return the sha."""
        for name, content in (files or {}).items():
            target = self.path / name
            if content is None:
                self.git("rm", "-q", "-r", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content))
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", subject)
        return self.head()

    def head(self, rev: str = "HEAD") -> str:
        return self.git("rev-parse", rev)

    def checkout(self, branch: str, create: bool = False) -> None:
        self.git("checkout", "-q", *(["-b"] if create else []), branch)


# A src/-layout project with a dependency group (hatchling): the environment tests and the
# benchmark's environment series use it.
SRC_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "greet"
version = "0.1.0"
dependencies = [{deps}]

[dependency-groups]
test = ["pytest>=8.4"]
"""

PASSING = {"tests/test_ok.py": "def test_ok():\n    assert 1 + 1 == 2\n"}
SLOW = "import time\n\ndef test_slow():\n    time.sleep({seconds})  # {n}\n"  # a test file: .format(seconds=, n=)
FAILING = {
    "tests/test_ok.py": (
        "def test_ok():\n    assert 1 + 1 == 2\n\ndef test_bad():\n    assert 2 + 2 == 5, 'arithmetic'\n"
    )
}


def write_config(directory: Path, repos: dict[str, Path], **overrides: object) -> Path:
    """A config.yaml for the tests: state and results inside ``directory``; ``repository``
    holds keys for every repository."""
    runner = {"image": "ci-runner:latest", "timeout": 60, "parallelism": 2, "memory": "256m", "pids": 128}
    runner.update(overrides.pop("runner", {}))  # type: ignore[arg-type]
    keys = dict(overrides.pop("repository", {}))  # type: ignore[call-overload]
    data: dict[str, object] = {
        "repositories": [{"name": name, "url": str(path), **keys} for name, path in repos.items()],
        "poll_interval": 0.2,
        "state_dir": str(directory / "state"),
        "results_dir": str(directory / "results"),
        "dispatcher": {"host": "127.0.0.1", "port": free_port()},
        "runner": runner,
        "retries": 1,
    }
    data.update(overrides)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _NoAnswer:
    """What a wait reads while a server does not answer yet: an empty list of jobs."""

    @staticmethod
    def json() -> list:
        return []


NO_ANSWER = _NoAnswer()


def http_get(url: str):
    """The response if the server answered 2xx, else None (not up yet, or refused)."""
    import requests

    try:
        resp = requests.get(url, timeout=5)
        return resp if resp.ok else None
    except requests.RequestException:
        return None


_NEXT_PORT = itertools.count()
PORTS_PER_WORKER = 3000


def free_port() -> int:
    """A free port for a server that starts later (a dispatcher told it in config.yaml).
    Not one the kernel would hand out: servers that bind port 0 get theirs from its ephemeral
    range (32768 and up), and a port freed here could be taken by one of those before its
    server binds it (CI once saw a test's receiver answered by some other server). Below that
    range, each xdist worker has a band of its own, walked in turn, so that two workers are
    never handed the same port either."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 4
    low = 20000 + worker * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = low + next(_NEXT_PORT) % PORTS_PER_WORKER
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORTS_PER_WORKER - 1}")


class Web:
    """The real HTTP app over a real store and a real repository, with no engine: nothing
    runs here, jobs are moved by hand (``finish``)."""

    def __init__(self, directory: Path, repo: GitRepo, **overrides: object):
        self.config = load_config(write_config(directory, {"demo": repo.path}, **overrides))
        self.store = Store(self.config.db_path)
        self.woken: list[int] = []
        self.jobs = local_jobs(self.config, self.store, wake=lambda: self.woken.append(1))
        self.metrics = Metrics(self.store)
        self.results = ResultFiles(self.config.results_dir)

    def app(self):
        from orchestrator.web.app import create_app

        return create_app(self.jobs, self.metrics, self.config)

    def client(self, host: str = "127.0.0.1", headers: dict[str, str] | None = None):
        """A client of the app, as the project's own clients call it (they say so with
        X-Orchestrator: 1; a browser's cross-site form cannot)."""
        from fastapi.testclient import TestClient

        return TestClient(
            self.app(),
            base_url=f"http://{host}:{self.config.dispatcher.port}",
            headers={"X-Orchestrator": "1"} if headers is None else headers,
        )

    def observer_key(self) -> str:
        from orchestrator.web.guard import observer_key

        return observer_key(self.config.state_dir)

    def finish(self, status: JobStatus, tests: TestCounts | None = None, **facts: object) -> Job:
        """Claim the oldest queued job and end it with ``status``, as an attempt would."""
        job = self.store.claim_next()
        done = transition(job, status, utcnow(), exit_code=0 if status is JobStatus.PASSED else 1, tests=tests, **facts)
        return self.store.apply(job, done)

    def close(self) -> None:
        self.store.close()


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """An HTTP server on a free loopback port, serving from a thread of its own."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def trickle(handler: http.server.BaseHTTPRequestHandler, answer: bytes, every: float, closing: threading.Event) -> None:
    """Write ``answer`` a byte every ``every`` seconds, until ``closing``."""
    try:
        for byte in answer:
            if closing.wait(every):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
    except OSError:
        pass


class WebhookReceiver:
    """A local HTTP server that takes webhook deliveries: each body and its Idempotency-Key
    (``received``, ``keys``), every path asked (``paths``); it answers 503 to the first
    ``fail_first``, 400 on ``/refuse``, and as a hostile receiver would on ``/redirect307``
    and ``/redirect302`` (to ``redirect_to``), ``/huge`` (a 1 GB answer: ``answered``
    counts what it managed to send) and ``/trickle`` (a byte every 4 s)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.keys: list[str] = []
        self.paths: list[str] = []
        self.fail_first = 0
        self.redirect_to = ""
        self.answered = 0
        self._closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.paths.append(self.path)
                if self.path == "/refuse":
                    self.send_response(400)
                elif self.path.startswith("/redirect"):
                    self.send_response(int(self.path[-3:]))
                    self.send_header("Location", receiver.redirect_to)
                elif self.path == "/huge":
                    return self._huge()
                elif self.path == "/trickle":
                    return self._trickle()
                elif receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(503)
                else:
                    receiver.received.append(body)
                    receiver.keys.append(self.headers["Idempotency-Key"])
                    self.send_response(204)
                self.end_headers()

            def _huge(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                chunk = b"x" * (1 << 20)
                try:
                    for _ in range(1024):
                        self.wfile.write(chunk)
                        receiver.answered += len(chunk)
                except OSError:
                    pass

            def _trickle(self) -> None:
                trickle(self, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4, receiver._closing)

            def log_message(self, *args) -> None:
                pass

        self._server = serve(Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.base}/hook"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


class TestIndex:
    """A package index on loopback for the tests, recording every request it gets
    (``requests``: method and path). ``mode``: "up" serves ``/simple/<project>/`` as PyPI
    does (its page, fetched from PyPI), "down" answers 503, "slow" answers a byte every
    3 s; ``delay`` holds each answer that long first. Anything else asked (a file, say)
    is answered 404: the tests show that nothing asks."""

    __test__ = False

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.mode = "up"
        self.delay = 0.0
        self._closing = threading.Event()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(f"GET {self.path}")
                if index.delay and index._closing.wait(index.delay):
                    return
                if index.mode == "slow":
                    return self._trickle()
                if index.mode == "down":
                    return self._answer(503, b"down")
                project = self.path.strip("/").split("/")
                if len(project) == 2 and project[0] == "simple":
                    import requests

                    upstream = requests.get(
                        f"https://pypi.org/simple/{project[1]}/", timeout=30, headers={"Accept": "text/html"}
                    )
                    return self._answer(upstream.status_code, upstream.content)
                self._answer(404, b"")

            do_POST = do_HEAD = do_GET

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self) -> None:
                answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
                trickle(self, answer, 3, index._closing)

            def log_message(self, *args) -> None:
                pass

        self._server = serve(Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


# -- several dispatchers on one store (leadership.py) ------------------------------------


def start_two_dispatchers(orch, store_url: str, lease: float, beta_runner: dict | None = None, **overrides: object):
    """Two dispatchers (alpha, beta) on one store, each with its own state_dir (as on two
    machines), one results_dir (shared storage in a deployment), each its log in ``orch.dir``:
    (name, port, process) each. ``beta_runner``: what beta's runner section says otherwise
    (its own engine, say)."""
    store = {"url": store_url}
    orch.configure(store=store, dispatcher={"host": "127.0.0.1", "port": free_port(), "lease": lease}, **overrides)
    data = yaml.safe_load(orch.config_path.read_text())
    data["state_dir"] = str(orch.dir / "beta-state")
    data["runner"] = {**data.get("runner", {}), **(beta_runner or {})}
    beta_config = orch.dir / "beta.yaml"
    beta_config.write_text(yaml.safe_dump(data))
    started = []
    for name, config in (("alpha", orch.config_path), ("beta", beta_config)):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--name", name, "--port", str(port), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(orch.dir / f"{name}.log", "w"),  # the process holds it; read when a test fails
            text=True,
        )
        orch.processes.append(proc)
        started.append((name, port, proc))
    for _, port, _ in started:
        orch.wait_for(lambda port=port: http_get(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    return started


def never_two_active(started, seconds: float) -> list[set[str]]:
    """The set of active names seen, sampled for ``seconds``; the test fails at the first
    sample with two active at once."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        roles = {name: dispatcher_role(port) for name, port, _ in started}
        active = {name for name, role in roles.items() if role and role["role"] == "active"}
        assert len(active) <= 1, f"two active at once: {roles}"
        seen.append(active)
        time.sleep(0.05)
    return seen


def becomes_active(orch, dispatcher, timeout: float) -> float:
    """Seconds until ``dispatcher`` (name, port, process) says it is the active one."""
    began = time.monotonic()
    orch.wait_for(lambda: (dispatcher_role(dispatcher[1]) or {}).get("role") == "active", timeout=timeout)
    return time.monotonic() - began


def pause_past_the_lease(orch, paused, other, lease: float) -> None:
    """SIGSTOP ``paused`` until ``other`` has taken the lease, then SIGCONT: it steps down.
    The take-over may wait for more than the lease here: paused in the middle of a write,
    the paused one holds the writers' lock until PostgreSQL ends its session (store/
    postgres.py's idle_in_transaction_session_timeout), and a standby that saw its store
    stall waits two leases more (dispatch/leadership.py); how soon a kill is replaced is
    another test's bound."""
    paused[2].send_signal(signal.SIGSTOP)
    try:
        becomes_active(orch, other, 4 * lease + 10)
    finally:
        paused[2].send_signal(signal.SIGCONT)
    orch.wait_for(lambda: (dispatcher_role(paused[1]) or {}).get("role") == "standby", timeout=lease + 10)


def health_while_the_store_restarts(postgres, port: int, lease: float) -> dict:
    """What /healthz of the dispatcher at ``port`` says a lease into a restart of PostgreSQL
    that keeps it away for two leases (a degraded health answers 503: read all the same);
    the restart is over when this returns."""
    import requests

    restart = threading.Thread(target=postgres.restart, args=(2 * lease,))
    restart.start()
    try:
        time.sleep(lease)
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
    finally:
        restart.join(60)


def all_passed(orch, shas: list[str], timeout: float) -> list[dict]:
    """The result of each commit, once every one has passed."""
    return orch.wait_for(
        lambda: (
            [orch.result(s) for s in shas]
            if orch.has_result(*shas) and all(orch.result(s)["status"] == "passed" for s in shas)
            else None
        ),
        timeout=timeout,
    )


def running_jobs(port: int) -> list[dict]:
    """The jobs a dispatcher's API lists as running in a container (none while it does not answer)."""
    answer = http_get(f"http://127.0.0.1:{port}/api/jobs")
    return [j for j in answer.json() if j["status"] == "running" and j["container"]] if answer else []


def stop_dispatchers(started, settle: float = 30) -> None:
    """SIGTERM to each that still runs, once none lists a running job (for up to ``settle``
    seconds); each ends cleanly. A job's result files are written before the store hears of
    its end: a stop at once after they appear (stop_grace 0) rightly leaves that job to the
    next start, with its container and checkout, which is not what these tests stop for."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and any(running_jobs(port) for _, port, proc in started if proc.poll() is None):
        time.sleep(0.2)
    running = [proc for _, _, proc in started if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        assert proc.wait(timeout=60) == 0


def forget_state(orch, name: str) -> None:
    """A killed dispatcher's machine is gone with its disk: what it left in its state_dir is no one's."""
    shutil.rmtree(orch.dir / ("state" if name == "alpha" else "beta-state") / "work", ignore_errors=True)


def dispatcher_role(port: int) -> dict | None:
    answer = http_get(f"http://127.0.0.1:{port}/healthz")
    return answer.json()["dispatcher"] if answer else None


def the_active(started) -> tuple[str, int, object]:
    """The one active dispatcher, once there is exactly one."""

    def one():
        roles = [(d, dispatcher_role(d[1])) for d in started]
        active = [d for d, role in roles if role and role["role"] == "active"]
        return active[0] if len(active) == 1 and all(r for _, r in roles) else None

    return one()
