"""One attempt against a scripted fake engine: what happens when the engine goes away at
awkward moments (unit level; the real outage is in tests/faults/test_engine.py)."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.backends.base import Backend, ContainerState, ImageInfo
from orchestrator.config import load_config
from orchestrator.errors import EngineUnavailable
from orchestrator.execution import Context, Execution
from orchestrator.models import JobStatus, utcnow
from orchestrator.observer import mirror_for
from orchestrator.results import ResultFiles
from orchestrator.store import NewCommit, Store
from orchestrator.workspace import Workspaces
from tests.helpers import write_config


class ScriptedEngine(Backend):
    """wait/inspect/logs answer from scripts; an exception in a script is raised."""

    def __init__(self, waits: list, inspects: list, logs: list):
        self.waits, self.inspects, self.log_scripts = waits, inspects, logs
        self.removed: list[str] = []

    def _next(self, script: list):
        value = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(value, Exception):
            raise value
        return value

    def ping(self): pass
    def image(self, tag): return ImageInfo(tag, "sha256:x")
    def create(self, spec): raise AssertionError("not used: the job is adopted")
    def attach(self, container_id): return iter(())
    def start(self, container_id): raise AssertionError("not used")
    def logs(self, container_id, follow=True):  # lazy, as docker-py's stream is
        yield from self._next(self.log_scripts)
    def wait(self, container_id, seconds): return self._next(self.waits)
    def inspect(self, container_id): return self._next(self.inspects)
    def kill(self, container_id): pass
    def remove(self, container_id): self.removed.append(container_id)
    def find(self, labels): return []


def _adopted(tmp_path: Path, engine: ScriptedEngine):
    (tmp_path / "repo").mkdir()
    config = load_config(write_config(tmp_path, {"demo": tmp_path / "repo"}, runner={"timeout": 30}))
    store = Store(config.db_path)
    store.record_commits("demo", [NewCommit("a" * 40, "subject", ("main",))])
    job = store.update_running(store.claim_next(), container_id="c" * 64)
    cleaner = ThreadPoolExecutor(1)
    ctx = Context(config=config, store=store, backend=engine, results=ResultFiles(config.results_dir),
                  workspaces=Workspaces(config.state_dir / "work"),
                  mirrors={r.name: mirror_for(config, r) for r in config.repositories},
                  instance="test", stop=threading.Event(), cleaner=cleaner)
    running = ContainerState("c" * 64, "running", {}, started_at=utcnow())
    return ctx, job, running, cleaner


def test_engine_cut_between_wait_and_inspect_keeps_waiting(tmp_path: Path) -> None:
    exited = ContainerState("c" * 64, "exited", {}, exit_code=0, started_at=utcnow(), finished_at=utcnow())
    cut = EngineUnavailable("Docker engine unreachable (inspect a container): refused")
    engine = ScriptedEngine(waits=[None, None, exited], inspects=[cut, exited],
                            logs=[[b"collected 1 item\n", b"1 passed\n"]])
    ctx, job, running, cleaner = _adopted(tmp_path, engine)
    done = Execution(ctx, job, adopt=running).run()
    cleaner.shutdown(wait=True)
    assert done.status is JobStatus.PASSED and done.attempts == 1  # waited, not re-queued
    directory = ctx.results.directory("demo", "a" * 40)
    assert b"1 passed" in (directory / "output.log").read_bytes()  # read again after the cut
    assert engine.removed == ["c" * 64]


def test_log_unreadable_after_an_outage_keeps_the_verdict(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("orchestrator.execution.REREAD_DELAYS", (0, 0, 0))
    exited = ContainerState("c" * 64, "exited", {}, exit_code=1, started_at=utcnow(), finished_at=utcnow())
    cut = EngineUnavailable("Docker engine unreachable (stream a container log): refused")
    engine = ScriptedEngine(waits=[cut, exited], inspects=[exited], logs=[cut])
    ctx, job, running, cleaner = _adopted(tmp_path, engine)
    done = Execution(ctx, job, adopt=running).run()
    cleaner.shutdown(wait=True)
    assert done.status is JobStatus.FAILED and done.attempts == 1  # the verdict stands
    log = (ctx.results.directory("demo", "a" * 40) / "output.log").read_bytes()
    assert b"may be incomplete" in log


def test_engine_cut_while_starting_does_not_start_a_second_attempt(tmp_path: Path) -> None:
    running = ContainerState("c" * 64, "running", {}, started_at=utcnow())
    engine = ScriptedEngine(waits=[None], inspects=[running], logs=[[b"ok\n"]])
    cut = EngineUnavailable("Docker engine unreachable (inspect a container): refused")
    engine.start = lambda container_id: (_ for _ in ()).throw(cut)  # started, but no answer came back
    ctx, job, _, cleaner = _adopted(tmp_path, engine)
    state = Execution(ctx, job)._settle_start("c" * 64)
    cleaner.shutdown(wait=True)
    assert state is running  # it runs: waited for, not re-queued
