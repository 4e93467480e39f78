"""Schedules queued jobs onto at most ``runner.parallelism`` containers, and reconciles
what an earlier process left behind before taking new work.

The store is the queue: the dispatcher keeps no list of pending jobs of its own, only
the futures of the attempts it is running right now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from orchestrator.backends.base import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, Backend, ContainerState
from orchestrator.config import Config
from orchestrator.errors import EngineUnavailable
from orchestrator.execution import GO_FILE, LABEL_GATED, Context, Execution, Release
from orchestrator.metrics import Metrics
from orchestrator.mirror import Mirror
from orchestrator.models import Job, JobStatus, TestCounts, transition, utcnow
from orchestrator.notify import Notifier
from orchestrator.observer import mirror_for
from orchestrator.results import ResultFiles
from orchestrator.store import Store
from orchestrator.workspace import Workspaces

log = logging.getLogger("orchestrator.dispatcher")

IDLE_POLL = 0.05  # how often an idle dispatcher looks for work queued by another process
MAX_ENGINE_BACKOFF = 10.0
PREPARE_BACKOFF = 2.0  # after a failed preparation (engine away, say), before the next one


class Dispatcher:
    def __init__(self, config: Config, store: Store, backend: Backend):
        self.config = config
        self.store = store
        self.backend = backend
        self.abandon = threading.Event()
        self.metrics = Metrics(store)
        self.notifier = Notifier(config.notify)
        self.ctx = Context(
            config=config, store=store, backend=backend,
            results=ResultFiles(config.results_dir),
            workspaces=Workspaces(config.state_dir / "work"),
            mirrors={r.name: mirror_for(config, r) for r in config.repositories},
            instance=store.instance_id(), stop=self.abandon,
            cleaner=ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean-up"),
            finished=self._finished, engine_error=self.metrics.engine_error,
        )
        # one worker more than slots: the prepared job waits in it for a slot to free
        self._pool = ThreadPoolExecutor(max_workers=config.runner.parallelism + 1, thread_name_prefix="job")
        self._active: dict[int, Future[Job]] = {}
        self._prepared: tuple[Job, Release, Future[Job]] | None = None
        self._prepare_after = 0.0
        self._wake = threading.Event()
        self._engine_backoff = 0.0
        self._engine_retry_at = 0.0
        self._engine_down_since: float | None = None
        self.engine_error: EngineUnavailable | None = None
        self._reconciled = False
        self.touched: set[int] = set()   # jobs this process ran or adopted (for --once)

    @property
    def mirrors(self) -> dict[str, Mirror]:
        return self.ctx.mirrors

    # -- the observer's sink: queue commits in the store, and start them now ---------------

    def heads(self, repository: str) -> dict[str, str] | None:
        return self.store.heads(repository)

    def record_commits(self, repository: str, commits: list, heads: dict[str, str] | None = None) -> list[int]:
        created = self.store.record_commits(repository, commits, heads)
        if created:
            self.wake()
        return created

    def wake(self) -> None:
        """New work was queued: look at the store now rather than at the next poll."""
        self._wake.set()

    # -- start-up ---------------------------------------------------------------------

    def reconcile(self) -> None:
        """Match every job the store says is running to its container by label:
        running -> re-attached, exited -> collected, result files complete -> adopted,
        gone -> re-queued as a new attempt. Containers of this instance that belong to no
        running job are removed, and so are stale workspaces."""
        containers: dict[int, list[ContainerState]] = defaultdict(list)
        for state in self.backend.find({LABEL_INSTANCE: self.ctx.instance}):
            try:
                containers[int(state.labels.get(LABEL_JOB, ""))].append(state)
            except ValueError:
                self._remove(state)
        running = self.store.with_status(JobStatus.RUNNING)
        for job in running:
            current = None
            for state in containers.pop(job.id, []):
                if state.labels.get(LABEL_ATTEMPT) == str(job.attempts) and state.status != "created":
                    current = state
                else:
                    self._remove(state)
            self._recover(job, current)
        for states in containers.values():
            for state in states:
                self._remove(state)
        alive = {job.id for job in running}
        for job_id in self.ctx.workspaces.job_ids():
            if job_id not in alive and job_id not in self._active:
                self.ctx.workspaces.remove(job_id)
        self.ctx.workspaces.remove_discarded()
        self._reconciled = True

    def _recover(self, job: Job, container: ContainerState | None) -> None:
        if container is not None and self._never_released(job, container):
            self._remove(container)  # its tests never began: treat it as gone
            container = None
        if container is not None:
            self._submit(job, container)
            return
        if self._adopt_result_files(job):
            return
        reason = "the dispatcher stopped before its container ran" if job.container_id is None \
            else f"container {job.container_id[:12]} is gone"
        Execution(self.ctx, job).retry_or_give_up(reason)  # the same policy as a failure seen live

    def _never_released(self, job: Job, container: ContainerState) -> bool:
        """A warm container whose go file was never written: its tests have not begun."""
        gated = container.labels.get(LABEL_GATED) == "1"
        return gated and not (self.ctx.workspaces.get(job.id).out / GO_FILE).exists()

    def _adopt_result_files(self, job: Job) -> bool:
        """A crash after ``result.json`` was written but before the state was committed:
        the files are complete, so they are the result."""
        doc = self.ctx.results.read(job.repository, job.commit)
        if not doc or doc.get("attempts") != job.attempts or doc.get("status") not in {
                s.value for s in JobStatus if s.final}:
            return False
        tests = doc.get("tests") or {}
        done = transition(
            job, JobStatus(doc["status"]), utcnow(), exit_code=doc.get("exit_code"),
            message=doc.get("message"), log_truncated=bool(doc.get("log_truncated")),
            tests=TestCounts(**{k: int(tests.get(k, 0)) for k in ("total", "passed", "failed", "errors", "skipped")}),
            finished_at=_parse_time(doc.get("finished_at")) or utcnow(),
            started_at=_parse_time(doc.get("started_at")) or job.started_at,
        )
        self.store.apply(job, done)
        self.ctx.workspaces.remove(job.id)
        log.info("job %s: adopted the complete result files of attempt %s", job.id, job.attempts)
        return True

    def _finished(self, job: Job) -> None:
        self.metrics.job_finished(job)
        earlier = [self.store.latest_on_branch(job.repository, b, final=True, before=job.id) for b in job.branches]
        newest = max((j for j in earlier if j is not None), key=lambda j: j.id, default=None)
        self.notifier.job_finished(job, newest.status if newest else None)

    def _sweep(self) -> None:
        """Remove this instance's containers that no attempt in progress owns (left when
        the engine went away during a removal or a retry)."""
        try:
            for state in self.backend.find({LABEL_INSTANCE: self.ctx.instance}):
                job = self.store.get(int(state.labels.get(LABEL_JOB, "0") or 0))
                prepared = self._prepared is not None and job is not None and self._prepared[0].id == job.id
                owned = prepared or (job is not None and job.id in self._active and job.status is JobStatus.RUNNING
                                     and state.labels.get(LABEL_ATTEMPT) == str(job.attempts))
                if not owned:
                    self._remove(state)
        except (EngineUnavailable, ValueError) as exc:
            log.warning("sweeping leftover containers failed: %s", exc)

    def _remove(self, state: ContainerState) -> None:
        log.info("removing leftover container %s", state.id[:12])
        self.backend.remove(state.id)

    # -- scheduling -------------------------------------------------------------------

    def step(self) -> None:
        """Collect finished attempts, then start queued jobs while slots are free."""
        for job_id, future in list(self._active.items()):
            if future.done():
                del self._active[job_id]
        if self._prepared is not None and self._prepared[2].done():
            self._prepared = None  # preparing it failed; it is still queued: try again later
            self._prepare_after = time.monotonic() + PREPARE_BACKOFF
        if time.monotonic() < self._engine_retry_at:
            return
        try:
            if not self._reconciled:
                self.reconcile()
            elif len(self._active) < self.config.runner.parallelism and self.store.has_queued():
                self.backend.ping()
        except EngineUnavailable as exc:
            self.engine_error = exc
            self.metrics.engine_error()
            if self._engine_down_since is None:
                self._engine_down_since = time.monotonic()
            self._engine_backoff = min(MAX_ENGINE_BACKOFF, max(1.0, self._engine_backoff * 2))
            self._engine_retry_at = time.monotonic() + self._engine_backoff
            log.error("%s; retrying in %.0f s", exc, self._engine_backoff)
            return
        if self._engine_down_since is not None:
            log.info("Docker engine reachable again")
            self._engine_backoff, self._engine_down_since, self.engine_error = 0.0, None, None
            self._sweep()
        while len(self._active) < self.config.runner.parallelism and not self.abandon.is_set():
            if self._prepared is not None:
                self._release_prepared()
                continue
            job = self.store.claim_next()
            if job is None:
                break
            self._submit(job, None)
        if (self._prepared is None and len(self._active) >= self.config.runner.parallelism
                and not self.abandon.is_set()):
            self._prepare_next()

    def _prepare_next(self) -> None:
        """All slots busy and work waiting: check the next queued job out and start its
        container warm, so it begins the moment a slot frees. It stays queued meanwhile."""
        if time.monotonic() < self._prepare_after:
            return
        job = self.store.next_queued()
        if job is None:
            return
        gate = Release()
        future = self._pool.submit(Execution(self.ctx, job, gate=gate).run)
        future.add_done_callback(lambda _f: self._wake.set())
        self._prepared = (job, gate, future)

    def _release_prepared(self) -> None:
        job, gate, future = self._prepared
        self._prepared = None
        claimed = self.store.claim(job)  # None if it was cancelled meanwhile: then discarded
        gate.give(claimed)
        if claimed is not None:
            self.touched.add(job.id)
            self._active[job.id] = future

    def _submit(self, job: Job, adopt: ContainerState | None) -> None:
        self.touched.add(job.id)
        future = self._pool.submit(Execution(self.ctx, job, adopt).run)
        future.add_done_callback(lambda _f: self._wake.set())  # a slot is free: schedule now
        self._active[job.id] = future

    def idle(self) -> bool:
        return self._reconciled and not self._active and self._prepared is None and not self.store.has_queued()

    def engine_down_for(self) -> float:
        return 0.0 if self._engine_down_since is None else time.monotonic() - self._engine_down_since

    def run(self, stop: threading.Event, until_idle: bool = False, give_up_after: float | None = None) -> None:
        """Schedule until ``stop`` (or, with ``until_idle``, until nothing is queued or
        running). Then wait up to ``stop_grace`` for running jobs and leave the rest
        running, to be re-attached by the next start. With ``give_up_after``, an engine
        unreachable for that long raises EngineUnavailable (the queue stays as it is)."""
        try:
            while not stop.is_set():
                self.step()
                if until_idle and self.idle():
                    break
                if give_up_after is not None and self.engine_error and self.engine_down_for() > give_up_after:
                    raise self.engine_error
                self._wake.wait(IDLE_POLL)
                self._wake.clear()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.config.stop_grace
        while self._active and time.monotonic() < deadline:
            time.sleep(0.1)
            self._active = {k: f for k, f in self._active.items() if not f.done()}
        self.abandon.set()
        self._pool.shutdown(wait=True)
        self.ctx.cleaner.shutdown(wait=True)
        self.notifier.close()


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
