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
from orchestrator.control.jobs import Arrivals, LocalJobs
from orchestrator.dispatch.leadership import Leadership
from orchestrator.errors import NotActive, OrchestratorError
from orchestrator.models import Job
from orchestrator.observe.mirror import Mirrors
from orchestrator.results.variants import Variants
from orchestrator.store import Store
from orchestrator.store.db import errors as store_errors

if TYPE_CHECKING:  # the dispatcher's side is loaded only where a dispatcher is built: a command is quick
    from orchestrator.dispatch.bisection import Bisector
    from orchestrator.dispatch.dispatcher import Dispatcher
    from orchestrator.environment.build import Environments
    from orchestrator.observe.observer import Observer
    from orchestrator.observe.schedule import Clock
    from orchestrator.results.files import ResultFiles
    from orchestrator.results.insight import Insight
    from orchestrator.results.metrics import Metrics

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
    from orchestrator.dispatch.bisection import Bisector
    from orchestrator.dispatch.coalesce import Picker
    from orchestrator.dispatch.dispatcher import Dispatcher
    from orchestrator.dispatch.merge_queue import MergeQueue
    from orchestrator.observe.schedule import Scheduler, local_now
    from orchestrator.results.files import ResultFiles
    from orchestrator.run.context import Context
    from orchestrator.run.recovery import Recovery
    from orchestrator.run.sharding import Planner

    coalescing = frozenset(r.name for r in config.repositories if r.coalesce)
    results = ResultFiles(config.results_dir)

    def culprit_named(job: Job, _bisection: object) -> None:  # its files say so
        results.annotate(job, store.attempt_history(job.id))

    bisector = Bisector(store, coalescing, mirrors.first_parent, named=culprit_named)
    told = _Told(config, store, results, metrics, bisector)
    ctx = Context.create(
        config,
        store,
        backend,
        mirrors,
        results=told.results,
        finished=told.finished,
        engine_error=metrics.engine_error,
        environments=environments,
        **context,
    )

    candidates = Arrivals(store, variants=Variants(config, mirrors))  # a merge candidate's jobs, on its Pythons
    return Dispatcher(
        config.runner,
        config.stop_grace,
        ctx,
        Picker(store, coalescing, skipped=told.skipped),
        bisector,
        Planner(config.repositories, config.runner.parallelism, store),
        Recovery(ctx),
        metrics,
        MergeQueue(store, config.repositories, mirrors, candidates.record_commits),
        Scheduler(store, config.repositories, clock=clock or local_now),
    )


class _Told:
    """Who hears of a job's end and of a commit coalesced away: the result files, the
    metrics, the bisector, and the automatic quarantine."""

    def __init__(self, config: Config, store: Store, results: ResultFiles, metrics: Metrics, bisector: Bisector):
        self.config, self.store, self.results, self.metrics, self.bisector = config, store, results, metrics, bisector

    def finished(self, job: Job) -> None:
        self.metrics.job_finished(job)
        self.bisector.noticed(job)
        self._quarantine_flaky(job)

    def skipped(self, job: Job) -> None:  # its files say by which commit
        self.results.write_without_run(job, self.store.attempt_history(job.id))
        self.metrics.job_finished(job)

    def _quarantine_flaky(self, job: Job) -> None:  # quarantine.auto: a test that flips too often
        if self.config.quarantine.auto and (job.flaky or (job.tests and (job.tests.failed or job.tests.errors))):
            from orchestrator.results import quarantine
            from orchestrator.results.history import History

            quarantine.automatic(self.store, self.config.quarantine, job, History(self.store).flaky(job.repository))


def local_jobs(
    config: Config, store: Store, backend: Callable[[], Backend] | None = None, wake: Callable[[], None] = lambda: None
) -> LocalJobs:
    """The user operations on this machine's store, with the observer they poll through."""
    mirrors = Mirrors(config.state_dir, config.repositories)
    arrivals = Arrivals(store, wake, Variants(config, mirrors))

    def observer() -> Observer:  # made, and its module loaded, when first used
        from orchestrator.observe import observer as observing

        return observing.Observer(config.repositories, config.poll_interval, mirrors, arrivals)

    def insight() -> Insight:
        from orchestrator.results import insight as reading

        return reading.Insight(store, config.named_repository, [r.name for r in config.repositories])

    return LocalJobs(config, store, mirrors, observer, insight, arrivals, backend)


class Services:
    """One dispatcher's process: ``with Services(config) as services: ...``."""

    def __init__(self, config: Config, name: str | None = None, port: int | None = None):
        """``name``: this dispatcher's among those sharing a store (default
        ``dispatcher.name``); ``port``: its API's (default ``dispatcher.port``)."""
        from orchestrator.backends import connect
        from orchestrator.backends.engine import Engine
        from orchestrator.environment.build import Environments
        from orchestrator.environment.settings import Settings
        from orchestrator.results.metrics import Metrics
        from orchestrator.results.notify import Notifier
        from orchestrator.workspace import prepare_directories

        self.config = config
        self.port = port or config.dispatcher.port
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
        self.environments = environments
        self.jobs = local_jobs(config, self.store, lambda: self.backend)
        self.dispatcher = self._dispatcher()
        self.observer = self.jobs.observer
        self.metrics.watch_repositories(self.observer.health, lambda: dict(self.observer.failures))
        self.leadership: Leadership | None = None
        if config.store.url is not None:  # several dispatchers may share it: one is active at a time
            self.leadership = Leadership(
                self.store, name or config.dispatcher.name, self.address, config.dispatcher.lease
            )
            self.jobs.role = self.leadership.document
            self.metrics.watch_leadership(self.leadership.document)
        else:
            self.notifier.start()  # what a stop left in the outbox goes out now
        self._server: Any = None  # uvicorn's, once serving (the web side is loaded only then)

    @property
    def address(self) -> str:
        """Where this dispatcher's API answers (a standby names the active's)."""
        config = self.config.dispatcher
        return config.url or f"http://{config.host}:{self.port}"

    def _dispatcher(self) -> Dispatcher:
        """A dispatcher and its collaborators, fresh (each term of an active one has its own)."""
        dispatcher = dispatcher_for(
            self.config, self.store, self.backend, self.jobs.mirrors, self.metrics, self.environments
        )
        self.jobs.arrivals.wake = dispatcher.wake
        return dispatcher

    def run(self, stop: threading.Event, observe: bool = True) -> None:
        """Dispatch (and with ``observe``, observe) until ``stop``. With a shared store,
        only while this dispatcher holds the lease: between terms it is a standby, and a
        term ends at once when the lease is lost (leadership.py)."""
        if self.leadership is None:
            if observe:
                threading.Thread(target=self.observer.run, args=(stop,), name="observer", daemon=True).start()
            self.dispatcher.run(stop)
            return
        leadership = self.leadership
        for number, term in enumerate(leadership.terms(stop, between=self._remove_ended_workspaces)):
            try:
                if number:
                    self.dispatcher = self._dispatcher()  # recovery runs again: what the last active left
                self.notifier.start()
                if observe:
                    threading.Thread(target=self.observer.run, args=(term,), name="observer", daemon=True).start()
                self.dispatcher.run(term)
            except NotActive:
                leadership.step_down("a write was refused")
            finally:
                term.set()
                self.notifier.close(timeout=0 if leadership.lost.is_set() else 10)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.dispatcher.shutdown()
        self.notifier.close()
        if self.leadership is not None:
            self.leadership.resign()
        self.backend.close()
        self.store.close()

    def _remove_ended_workspaces(self) -> None:
        """Of a standby (it stepped down with attempts in progress, which the active adopted):
        the checkouts of its jobs that have ended since. Kept while they run: on one engine the
        adopted containers still have them mounted."""
        workspaces = self.dispatcher.ctx.workspaces
        try:
            for job_id in workspaces.job_ids():
                job = self.store.get(job_id)
                if job is None or job.status.final:
                    workspaces.remove(job_id)
        except store_errors() + (OSError,) as exc:
            log.debug("standby: leftovers not removed yet (%s)", exc)

    def serve_api(self) -> None:
        """Serve the HTTP API on ``dispatcher.host:port`` from a thread of its own (the web
        side is loaded only here: `run --once` starts without it)."""
        import uvicorn

        from orchestrator.web.app import create_app

        host, port = self.config.dispatcher.host, self.port
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
