"""Shared fixtures. ``orch`` drives the real orchestrator command against the real Docker
engine and real Git repositories.

Every test gets its own state_dir, hence its own ``orchestrator.instance`` label; the
fixture removes any container left with that label and fails the test if there was one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from orchestrator import pythons
from orchestrator.backends.engine import Engine
from orchestrator.backends.runner_images import build
from orchestrator.config import load_config
from orchestrator.store import Store
from tests.helpers import GitRepo, WebhookReceiver, write_config

# Run in parallel (pytest-xdist, scripts/test.sh), each test has its own state_dir and
# labels, so tests do not see each other; but these modules build environments for a
# repository named "demo" and expect to find them as they left them (built anew, reused,
# pruned). They are one unit of work, run one after the other in one worker; the Swarm's
# modules are another (the engine's swarm is one per machine). The long tests whose
# repositories have names of their own (real projects, the Pythons) are a unit each, so that
# they spread over the workers; every other module is a unit of its own.
SHARE_ENGINE_IMAGES = (
    "tests/faults/test_hostile_declarations.py",
    "tests/integration/test_environments.py",
)
EACH_TEST_A_UNIT = (
    "tests/integration/test_real_projects.py",
    "tests/integration/test_pythons.py",
)


LONG_FIRST = (  # so that the workers end together
    "tests/integration/test_real_projects.py",
    "tests/integration/test_pythons.py",
    *SHARE_ENGINE_IMAGES,
    "tests/swarm/",
    "tests/integration/test_bench_smoke.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The longest units first, so that the workers end together."""
    items.sort(key=lambda item: next((i for i, p in enumerate(LONG_FIRST) if item.nodeid.startswith(p)), 99))


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SHARE_ENGINE_IMAGES):
                return "share-engine-images"
            if nodeid.startswith("tests/swarm/"):  # one test bed: the engine's swarm is one per machine
                return "swarm"
            if nodeid.startswith(EACH_TEST_A_UNIT):
                return nodeid
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # in collection order: the long units start early
    return ByModule(config, log)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "upstream")


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    client = docker.from_env(timeout=60)
    client.ping()
    return client


@pytest.fixture(scope="session")
def runner_image(engine: docker.DockerClient, tmp_path_factory) -> str:
    """Build (or, when cached, just confirm) the runner images, one per Python, once per session."""
    directory = tmp_path_factory.mktemp("image")
    (directory / "repo").mkdir()
    config = load_config(write_config(directory, {"demo": directory / "repo"}))
    engine = Engine(config.runner.docker_host)
    try:
        build(config, engine, lambda _line: None, [n for n in pythons.OFFERED if n not in MATRIX_PYTHONS])
    finally:
        engine.close()
    return config.runner.image


MATRIX_PYTHONS = ("3.14", "3.15", "pypy3.11")  # forky's: built only where a test asks


@pytest.fixture(scope="session")
def matrix_runners(runner_image: str, tmp_path_factory) -> tuple[str, ...]:
    """The runner images of forky's Pythons, built (once: a lock keeps two workers from
    building the same base side by side) by the first test that needs them."""
    import fcntl

    directory = tmp_path_factory.mktemp("matrix-image")
    (directory / "repo").mkdir()
    config = load_config(write_config(directory, {"demo": directory / "repo"}))
    engine = Engine(config.runner.docker_host)
    try:
        shared = tmp_path_factory.getbasetemp()  # under xdist, each worker's; their parent is the run's
        shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
        with open(shared / "matrix-images.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            build(config, engine, lambda _line: None, MATRIX_PYTHONS)
    finally:
        engine.close()
    return MATRIX_PYTHONS


@dataclass(frozen=True)
class Seen:
    id: str
    status: str
    labels: dict


class Orchestrated:
    """One orchestrator set-up: a repository, a config file, and its processes."""

    def __init__(self, tmp_path: Path, engine: docker.DockerClient):
        self.dir = tmp_path
        self.engine = engine
        self.repo = GitRepo(tmp_path / "upstream")
        self.config_path: Path | None = None
        self.name = "demo"
        self.processes: list[subprocess.Popen] = []

    def configure(self, name: str = "demo", **overrides: object) -> Path:
        """config.yaml for the repository, named ``name``."""
        self.name = name
        self.config_path = write_config(self.dir, {name: self.repo.path}, **overrides)
        return self.config_path

    @property
    def config(self):
        return load_config(self.config_path)

    def cli(self, *args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args, "-c", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.processes.append(proc)
        return proc

    @staticmethod
    def ended(proc: subprocess.Popen, timeout: float) -> str:
        """Wait for ``proc`` to end; its stderr. One that does not end in time is killed, and
        the test fails with the end of what it said."""
        try:
            return proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(
                f"{' '.join(map(str, proc.args[-4:]))} did not end within {timeout:g} s: "
                f"{proc.communicate()[1][-3000:]}"
            ) from None

    def path(self, sha: str, name: str = "") -> Path:
        """A commit's result folder, or one of its files (``result.json``, ``attempts/1`` ...)."""
        directory = self.config.results_dir / self.name / sha
        return directory / name if name else directory

    def result(self, sha: str) -> dict:
        return json.loads(self.path(sha, "result.json").read_text())

    def log(self, sha: str) -> bytes:
        return self.path(sha, "output.log").read_bytes()

    def has_result(self, *shas: str) -> bool:
        return all(self.path(sha, "result.json").exists() for sha in shas)

    def instance(self) -> str:
        store = Store(self.config.store_location)
        try:
            return store.instance_id()
        finally:
            store.close()

    def containers(self) -> list[Seen]:
        """This set-up's containers, as listed (no per-container inspect that could race a removal)."""
        found = self.engine.api.containers(all=True, filters={"label": f"orchestrator.instance={self.instance()}"})
        return [Seen(c["Id"], c["State"], c.get("Labels") or {}) for c in found]

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout} s")

    def workspaces(self) -> list[str]:
        work = self.config.state_dir / "work"
        return os.listdir(work) if work.exists() else []

    def close(self) -> list[str]:
        if self.config_path is not None and any(proc.poll() is None for proc in self.processes):
            # a job that ended a moment ago may still be on the cleaner's thread (its container
            # removed, then its checkout): give it its time before the kill, bounded
            deadline = time.monotonic() + 20
            while self.workspaces() and time.monotonic() < deadline:
                time.sleep(0.1)
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        if self.config_path is None or (self.config.store.url is None and not self.config.db_path.exists()):
            return []
        leaked = []
        for container_id in [c.id for c in self.containers()]:
            try:
                self.engine.api.remove_container(container_id, force=True)
                leaked.append(container_id)
            except docker.errors.NotFound:
                pass  # gone meanwhile: removed by the process before it was killed
            except docker.errors.APIError as exc:  # its removal, asked by the process, was under way
                if "already in progress" not in str(exc):
                    raise
        return leaked


@pytest.fixture
def environment_images(orch, engine: docker.DockerClient):
    """The environment images a test builds are removed after it: those that carry its
    instance's label (their build containers had it). Forced: its job's stopped container
    may still be on its way out, and an image left behind would be found by the next run's
    test of the same declarations (it would not build, and its log would not be there).
    Another test's job that found it a moment before is retried and builds it again."""
    yield
    if orch.config_path is None or (orch.config.store.url is None and not orch.config.db_path.exists()):
        return
    labels = ["orchestrator.environment", f"orchestrator.instance={orch.instance()}"]
    for image in engine.images.list(filters={"label": labels}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            engine.images.remove(image.id, force=True)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster of this test process's own (tests/postgres.py), ended by its pid."""
    from tests.postgres import Cluster

    try:
        cluster = Cluster().start()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"no PostgreSQL cluster for the store's tests: {exc} (scripts/setup.sh installs it)")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path: Path):
    """Where a test's store is: a SQLite file, or a database of its own in the cluster."""
    if request.param == "sqlite":
        return tmp_path / "state" / "orchestrator.db"
    return request.getfixturevalue("postgres").database()


@pytest.fixture
def orch(tmp_path: Path, engine: docker.DockerClient, runner_image: str):
    o = Orchestrated(tmp_path, engine)
    yield o
    leaked = o.close()
    assert not leaked, f"containers left behind: {leaked}"
    if o.config_path is not None:
        assert not o.workspaces(), f"workspaces left behind: {o.workspaces()}"


@pytest.fixture
def webhooks():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
