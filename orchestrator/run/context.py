"""What every attempt of a dispatcher shares: the config, the store, the backend, the
result files, the workspaces and the repositories, and how patient to be with the engine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from orchestrator.backends.base import Backend
from orchestrator.config import Config
from orchestrator.environment.build import Environments
from orchestrator.models import Job
from orchestrator.observe.mirror import Mirrors
from orchestrator.results.files import ResultFiles
from orchestrator.store import Store
from orchestrator.workspace import Workspaces

log = logging.getLogger("orchestrator.run")


@dataclass(frozen=True)
class Patience:
    """How long and how often to wait for the engine. The defaults are for real engines;
    the unit tests pass shorter ones."""

    wait_slice: float = 1.0  # one wait round; also how soon a cancel request is noticed
    kill_grace: float = 30.0  # how long a killed container may take to be reported exited
    engine_grace: float = 60.0  # how long past the timeout an unreachable engine is waited for
    backoff_first: float = 0.5  # first pause while the engine is away, doubled up to backoff_cap
    backoff_cap: float = 5.0
    reread_tries: int = 5  # tries to read a log again after an outage: at once, then after
    reread_first: float = 1.0  # reread_first, doubled up to 8 times that (0, 1, 2, 4, 8 s)
    disk_every: float = 0.5  # how often the workspace's size is measured against runner.disk


@dataclass(frozen=True)
class Context:
    config: Config
    store: Store
    backend: Backend
    results: ResultFiles
    workspaces: Workspaces
    mirrors: Mirrors
    instance: str
    abandon: threading.Event  # set when the dispatcher leaves: running containers are left to the next start
    cleaner: Executor  # removes finished containers and checkouts off the critical path
    finished: Callable[[Job], None] = lambda _job: None  # metrics, notifications
    engine_error: Callable[[], None] = lambda: None
    patience: Patience = field(default_factory=Patience)
    environments: Environments | None = None  # builds environment images (None: every job in the runner image)

    @classmethod
    def create(
        cls,
        config: Config,
        store: Store,
        backend: Backend,
        mirrors: Mirrors | None = None,
        results: ResultFiles | None = None,
        **hooks: object,
    ) -> Context:
        """The context of one dispatcher over ``config``'s directories and repositories
        (``mirrors``, ``results``: the process's, else made here)."""
        return cls(
            config=config,
            store=store,
            backend=backend,
            results=results if results is not None else ResultFiles(config.results_dir),
            workspaces=Workspaces(config.state_dir / "work"),
            mirrors=mirrors if mirrors is not None else Mirrors(config.state_dir, config.repositories),
            instance=store.instance_id(),
            abandon=threading.Event(),
            cleaner=ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean-up"),
            **hooks,  # type: ignore[arg-type]
        )

    def ended(self, job: Job) -> None:
        """``job`` reached its final state: its commit's summary is brought up to date (a
        commit on several Pythons), then ``finished`` is told."""
        if job.python:
            try:
                self.results.summarise(self.store.of_commit(job.repository, job.commit))
            except OSError as exc:  # the variant's own files are written; the summary follows the next one
                log.warning("job %s: the summary of %s not written: %s", job.id, job.commit[:12], exc)
        self.finished(job)
