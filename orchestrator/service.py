"""The composition root: every part of a process is built here, once, and given what it
uses: the store, the engine and the backend on it, the repositories' mirrors, the
dispatcher's collaborators, the user operations, the observer and the HTTP server. Opened
in that order and closed in the reverse one; and the signals that stop a process.

``Services`` is a dispatcher's process (``run``, ``dispatcher``); ``local_jobs`` is what a
command beside it (``status``, ``submit``, ``logs`` ...) works with; ``dispatcher_for``
builds a dispatcher and its collaborators on a given store and backend (both use it, and
so do the tests).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.backends.base import Backend
from orchestrator.config import Config
from orchestrator.errors import OrchestratorError
from orchestrator.jobs import Arrivals, LocalJobs
from orchestrator.mirror import Mirrors
from orchestrator.models import Job
from orchestrator.store import Store
from orchestrator.variants import Variants

if TYPE_CHECKING:  # the dispatcher's side is loaded only where a dispatcher is built: a command is quick
    from orchestrator.dispatcher import Dispatcher
    from orchestrator.environment.build import Environments
    from orchestrator.insight import Insight
    from orchestrator.metrics import Metrics
    from orchestrator.observer import Observer
    from orchestrator.schedule import Clock

log = logging.getLogger("orchestrator")


def dispatcher_for(
    config: Config,
    store: Store,
    backend: Backend,
    mirrors: Mirrors,
    metrics: Metrics,
    environments: Environments | None = None,
    clock: Clock | None = None,
    **context: object,
) -> Dispatcher:
    """The dispatcher and its collaborators: the attempts' context, the queue, the bisector,
    the planner, recovery and the schedules, wired to the metrics and the result files
    (``clock``: the schedules' time, a test's own; ``context``: more of the context's
    fields, a test's patience, say)."""
    from orchestrator.bisection import Bisector
    from orchestrator.coalesce import Picker
    from orchestrator.dispatcher import Dispatcher
    from orchestrator.merge_queue import MergeQueue
    from orchestrator.results import ResultFiles
    from orchestrator.run.context import Context
    from orchestrator.run.recovery import Recovery
    from orchestrator.schedule import Scheduler, local_now
    from orchestrator.sharding import Planner

    coalescing = frozenset(r.name for r in config.repositories if r.coalesce)
    results = ResultFiles(config.results_dir)

    def annotate(job: Job, _bisection: object) -> None:  # a culprit named: its files say so
        results.annotate(job, store.attempt_history(job.id))

    bisector = Bisector(store, coalescing, mirrors.first_parent, named=annotate)

    def finished(job: Job) -> None:
        metrics.job_finished(job)
        bisector.noticed(job)
        quarantine_flaky(job)

    def quarantine_flaky(job: Job) -> None:  # quarantine.auto: a test that flips too often
        if config.quarantine.auto and (job.flaky or (job.tests and (job.tests.failed or job.tests.errors))):
            from orchestrator import quarantine
            from orchestrator.history import History

            quarantine.automatic(store, config.quarantine, job, History(store).flaky(job.repository))

    def skipped(job: Job) -> None:  # a commit coalesced away: its files say by which commit
        results.write_without_run(job, store.attempt_history(job.id))
        metrics.job_finished(job)

    ctx = Context.create(
        config,
        store,
        backend,
        mirrors,
        results=results,
        finished=finished,
        engine_error=metrics.engine_error,
        environments=environments,
        **context,
    )

    candidates = Arrivals(store, variants=Variants(config, mirrors))  # a merge candidate's jobs, on its Pythons
    return Dispatcher(
        config.runner,
        config.stop_grace,
        ctx,
        Picker(store, coalescing, skipped=skipped),
        bisector,
        Planner(config.repositories, config.runner.parallelism, store),
        Recovery(ctx),
        metrics,
        MergeQueue(store, config.repositories, mirrors, candidates.record_commits),
        Scheduler(store, config.repositories, clock=clock or local_now),
    )


def local_jobs(
    config: Config, store: Store, backend: Callable[[], Backend] | None = None, wake: Callable[[], None] = lambda: None
) -> LocalJobs:
    """The user operations on this machine's store, with the observer they poll through."""
    mirrors = Mirrors(config.state_dir, config.repositories)
    arrivals = Arrivals(store, wake, Variants(config, mirrors))

    def observer() -> Observer:  # made, and its module loaded, when first used
        from orchestrator import observer as observing

        return observing.Observer(config.repositories, config.poll_interval, mirrors, arrivals)

    def insight() -> Insight:
        from orchestrator import insight as reading

        return reading.Insight(store, config.named_repository, [r.name for r in config.repositories])

    return LocalJobs(config, store, mirrors, observer, insight, arrivals, backend)


class Services:
    """One dispatcher's process: ``with Services(config) as services: ...``."""

    def __init__(self, config: Config):
        from orchestrator.backends import connect
        from orchestrator.backends.engine import Engine
        from orchestrator.environment.build import Environments, Settings
        from orchestrator.metrics import Metrics
        from orchestrator.notify import Notifier
        from orchestrator.workspace import prepare_directories

        self.config = config
        prepare_directories(config)
        self.store = Store(config.store_location)
        self.engine = Engine(config.runner.docker_host)
        self.backend = connect(config.runner, self.engine)
        self.metrics = Metrics(self.store)
        self.notifier = Notifier(config.notify, self.store)
        self.store.news = self.notifier.news  # deliveries written with the change they tell of
        self.store.merges.news = self.notifier.merge_news
        self.store.quarantine.news = self.notifier.quarantine_news
        environments = Environments(
            config.state_dir, self.engine, Settings.of(config, self.store.instance_id()), self.backend.publish
        )
        self.jobs = local_jobs(config, self.store, lambda: self.backend)
        self.dispatcher = dispatcher_for(
            config, self.store, self.backend, self.jobs.mirrors, self.metrics, environments
        )
        self.jobs.arrivals.wake = self.dispatcher.wake
        self.observer = self.jobs.observer
        self.metrics.watch_repositories(self.observer.health, lambda: dict(self.observer.failures))
        self.notifier.start()  # what a stop left in the outbox goes out now
        self._server: Any = None  # uvicorn's, once serving (the web side is loaded only then)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.dispatcher.shutdown()
        self.notifier.close()
        self.backend.close()
        self.store.close()

    def serve_api(self) -> None:
        """Serve the HTTP API on ``dispatcher.host:port`` from a thread of its own (the web
        side is loaded only here: `run --once` starts without it)."""
        import uvicorn

        from orchestrator.web.app import create_app

        host, port = self.config.dispatcher.host, self.config.dispatcher.port
        app = create_app(self.jobs, self.metrics, self.config)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise OrchestratorError(f"cannot serve the API on {host}:{port}")
        self._server = server
        log.info("API on http://%s:%s", host, port)


def stop_on_signals() -> threading.Event:
    """First SIGINT/SIGTERM: stop taking work and leave running containers to be
    re-attached next time. Second: exit at once (state is always consistent on disk)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(130)
        log.info("stopping (%s); running containers are re-attached on the next start", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
