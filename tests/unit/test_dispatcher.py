"""The dispatcher's safety net: an attempt whose future ends with the job still `running`
(an exception that escaped it) is logged and concluded by the retry policy, so `run
--once` never leaves a job it took unfinished."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.dispatcher import Dispatcher
from orchestrator.models import JobStatus
from orchestrator.run import attempt as attempt_module
from orchestrator.store import NewCommit, Store
from tests.fakes import FakeBackend
from tests.helpers import PASSING, GitRepo, write_config


def test_an_attempt_that_escapes_with_its_job_running_is_concluded(tmp_path: Path, monkeypatch, caplog) -> None:
    repo = GitRepo(tmp_path / "upstream")
    sha = repo.commit("root", PASSING)
    config = load_config(write_config(tmp_path, {"demo": repo.path}, runner={"warm": 0}, retries=1))
    store = Store(config.db_path)
    store.record_commits("demo", [NewCommit(sha, "root", ("main",))])

    def escapes(self):   # a bug past every handler: the job stays running in the store
        raise RuntimeError("escaped the attempt")

    monkeypatch.setattr(attempt_module.Attempt, "run", escapes)
    dispatcher = Dispatcher(config, store, FakeBackend())
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)   # bounded, whatever happens
    timer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="orchestrator.dispatcher"):
            dispatcher.run(stop, until_idle=True)
    finally:
        timer.cancel()
    job = store.get(1)
    store.close()
    assert not stop.is_set(), "the dispatcher never became idle"
    assert job.status is JobStatus.ERROR and job.attempts == 2
    assert job.message == "gave up after 2 attempts: internal error: the attempt ended without concluding the job"
    assert "its attempt raised RuntimeError: escaped the attempt" in caplog.text
