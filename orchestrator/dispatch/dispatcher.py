"""Schedules queued jobs onto at most ``runner.parallelism`` slots, one container each
(a suite split across N containers takes N slots: run/shards.py).

The store is the queue: the dispatcher keeps no list of pending jobs of its own, only
the futures of the attempts running now and of the jobs waiting warm (run/warm.py). Before it takes new work
it recovers what an earlier process left (``run/recovery.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from orchestrator.backends.base import LABEL_ATTEMPT, LABEL_JOB, ContainerState
from orchestrator.backoff import Backoff
from orchestrator.config import RunnerConfig, memory_bytes
from orchestrator.dispatch.bisection import Bisector
from orchestrator.dispatch.coalesce import Picker
from orchestrator.dispatch.merge_queue import MergeQueue
from orchestrator.errors import EngineUnavailable
from orchestrator.models import Job, JobStatus
from orchestrator.observe.schedule import Scheduler
from orchestrator.results.metrics import Metrics
from orchestrator.run.attempt import Attempt
from orchestrator.run.conclude import conclude
from orchestrator.run.context import Context
from orchestrator.run.recovery import Recovery
from orchestrator.run.sharding import Planner
from orchestrator.run.shards import SplitAttempt
from orchestrator.run.warm import WarmPool, WarmStart
from orchestrator.store.db import errors as store_errors

log = logging.getLogger("orchestrator.dispatch.dispatcher")

IDLE_POLL = 0.05  # how often an idle dispatcher looks for work queued by another process
WARM_RETRY = 2.0  # after a failed warm start (engine away, say), before the next one


class Dispatcher:
    """Scheduling only: its collaborators are built once, by the composition root
    (service.py), and given to it."""

    def __init__(
        self,
        runner: RunnerConfig,
        stop_grace: float,
        ctx: Context,
        picker: Picker,
        bisector: Bisector,
        planner: Planner,
        recovery: Recovery,
        metrics: Metrics,
        merge_queue: MergeQueue | None = None,
        scheduler: Scheduler | None = None,
    ):
        self.runner = runner
        self.stop_grace = stop_grace
        self.ctx = ctx
        self.store = ctx.store
        self.picker = picker
        self.bisector = bisector
        self.planner = planner
        self.recovery = recovery
        self.metrics = metrics
        self.merge_queue = merge_queue
        self.scheduler = scheduler
        # the warm jobs wait for a slot to free in workers of their own
        self._pool = ThreadPoolExecutor(max_workers=runner.parallelism + self._warm_wanted(), thread_name_prefix="job")
        self._active: dict[int, Future[Job]] = {}
        self._slots: dict[int, int] = {}  # slots each active job takes (its containers), where more than one
        self._warm = WarmPool()
        self._warm_depth: int | None = None  # how many may wait warm, once the engine said its memory
        self._warm_after = 0.0
        self._wake = threading.Event()
        self._engine = Backoff(1.0, 10.0)
        self._engine_retry_at = 0.0
        self._engine_down_since: float | None = None
        self.engine_error: EngineUnavailable | None = None
        self._recovered = False
        self.touched: set[int] = set()  # jobs this process ran or adopted (for --once)

    def wake(self) -> None:
        """New work was queued: look at the store now rather than at the next poll."""
        self._wake.set()

    # -- scheduling -------------------------------------------------------------------

    def step(self) -> None:
        """Collect finished attempts, then start queued jobs while slots are free."""
        ended = self._collect_ended()
        if time.monotonic() < self._engine_retry_at or not self._engine_answers():
            return
        self.bisector.advance()
        if self.scheduler is not None:
            self.scheduler.tick()
        if self.merge_queue is not None and ended:
            self.merge_queue.poke()  # a candidate that passed is pushed at once
        self._fill_slots()
        while not self._free_slots() and len(self._warm) < self._depth() and not self.ctx.abandon.is_set():
            if not self._start_warm():
                break

    def _collect_ended(self) -> bool:
        """Settle the attempts that ended, freeing their slots; whether any had."""
        ended = [(j, f) for j, f in self._active.items() if f.done()]
        for job_id, future in ended:
            del self._active[job_id]
            self._settle(job_id, future)
        self._slots = {job_id: n for job_id, n in self._slots.items() if job_id in self._active}
        if self._warm.failed():  # those jobs are still queued: try again later
            self._warm_after = time.monotonic() + WARM_RETRY
        return bool(ended)

    def _fill_slots(self) -> None:
        """Start queued jobs, warm ones first in queue order, while slots are free; a split
        suite that needs more slots than are free waits for them, and nothing overtakes it."""
        while self._free_slots() and not self.ctx.abandon.is_set():
            if len(self._warm):  # in queue order, before any job that was not started warm
                self._release_warm()
                continue
            job = self.picker.pick(besides=self._warm.job_ids)
            if job is None:
                return
            count = self.planner.count(job.repository, self._free(), job.python)
            if job.rerun:  # only the failed tests: on as many shards as had failures
                count = min(count, int(job.rerun.get("shards") or 1))
            if count > self._free():
                return
            claimed = self.picker.claim(job, self._warm.job_ids)
            if claimed is not None:
                self._submit(claimed, None, count)

    def _settle(self, job_id: int, future: Future[Job]) -> None:
        """An attempt has ended: whatever escaped it is logged, and a job it left
        ``running`` (a bug, or a store that refused its last write) is concluded here by
        the retry policy, so that no job stays running with nothing running it."""
        error = future.exception()
        if error is not None:
            log.error("job %s: its attempt raised %s: %s", job_id, type(error).__name__, error, exc_info=error)
        job = self.store.get(job_id)
        if job is not None and job.status is JobStatus.RUNNING and not self.ctx.abandon.is_set():
            log.error("job %s: its attempt ended and left it running; concluding it", job_id)
            try:
                conclude(self.ctx, job, "internal error: the attempt ended without concluding the job")
            except Exception:  # the next start's recovery re-queues it
                log.exception("job %s: could not be concluded", job_id)

    def _free_slots(self) -> bool:
        return self._free() > 0

    def _free(self) -> int:
        return self.runner.parallelism - sum(self._slots.get(job_id, 1) for job_id in self._active)

    def _warm_wanted(self) -> int:
        return self.runner.parallelism if self.runner.warm is None else self.runner.warm

    def _depth(self) -> int:
        """``runner.warm`` (default: as many as the slots), less what the engine's memory
        cannot hold: every container, running or waiting warm, may grow to
        ``runner.memory`` once released."""
        if not self.ctx.backend.prepares_ahead:
            return 0
        if self._warm_depth is None:
            try:
                total = self.ctx.backend.memory_total()
            except EngineUnavailable:
                return 0  # asked again at the next step
            room = (
                self._warm_wanted()
                if total is None
                else total // memory_bytes(self.runner.memory) - self.runner.parallelism
            )
            self._warm_depth = max(0, min(self._warm_wanted(), room))
            if self._warm_depth < self._warm_wanted():
                log.info(
                    "%d jobs may wait warm, not %d: the engine's memory holds %d containers of %s",
                    self._warm_depth,
                    self._warm_wanted(),
                    self._warm_depth + self.runner.parallelism,
                    self.runner.memory,
                )
        return self._warm_depth

    def _engine_answers(self) -> bool:
        """Recover once the engine answers, and ask it before taking queued work; while
        it is away, back off (and say so once)."""
        try:
            if not self._recovered:
                self.recovery.reconcile(adopt=self._submit, active=set(self._active))
                self.bisector.catch_up()  # a failure whose bisection a stop kept from starting
                self._recovered = True
            elif self._free_slots() and self.store.has_queued():
                self.ctx.backend.ping()
        except EngineUnavailable as exc:
            self.engine_error = exc
            self.metrics.engine_error()
            if self._engine_down_since is None:
                self._engine_down_since = time.monotonic()
            delay = self._engine.next()
            self._engine_retry_at = time.monotonic() + delay
            log.error("%s; retrying in %.0f s", exc, delay)
            return False
        if self._engine.reset():
            log.info("Docker engine reachable again")
            self._engine_down_since, self.engine_error = None, None
            self.recovery.sweep(self._owned)
        return True

    def _owned(self, state: ContainerState) -> bool:
        """A container that an attempt in progress here owns."""
        label = state.labels.get(LABEL_JOB, "")
        job = self.store.get(int(label)) if label.isdigit() else None
        if job is None:
            return False
        return job.id in self._warm.job_ids or (
            job.id in self._active
            and job.status is JobStatus.RUNNING
            and state.labels.get(LABEL_ATTEMPT) == str(job.attempts)
        )

    def _start_warm(self) -> bool:
        """All slots busy and work waiting: start the next queued job that is not warm yet,
        warm (run/warm.py); whether there was one."""
        if time.monotonic() < self._warm_after:
            return False
        job = self.picker.pick(besides=self._warm.job_ids)
        one = job is not None and job.rerun is not None and job.rerun.get("shards") == 1
        if job is None or (self.planner.wanted(job.repository) != 1 and not one):
            return False  # a split suite is not started warm (it waits for its slots instead)
        start = WarmStart()
        future = self._pool.submit(Attempt(self.ctx, job, warm_start=start).run)
        future.add_done_callback(lambda _f: self._wake.set())
        self._warm.add(job, start.handover, future)
        return True

    def _release_warm(self) -> None:
        spare = self._warm.job_ids
        released = self._warm.release_first(lambda job: self.picker.claim(job, spare - {job.id}))  # None: discarded
        if released is not None:
            job, future = released
            self.touched.add(job.id)
            self._active[job.id] = future

    def _submit(self, job: Job, adopt: ContainerState | None, count: int = 1) -> None:
        self.touched.add(job.id)
        attempt = (
            Attempt(self.ctx, job, adopt)
            if count == 1
            else SplitAttempt(self.ctx, job, self.planner.plan(job.repository, count, job.python))
        )
        if count > 1:
            self._slots[job.id] = count
        future = self._pool.submit(attempt.run)
        future.add_done_callback(lambda _f: self._wake.set())  # a slot is free: schedule now
        self._active[job.id] = future

    # -- running and stopping ---------------------------------------------------------

    def idle(self) -> bool:
        return (
            self._recovered
            and not self._active
            and not len(self._warm)
            and not self.store.has_queued()
            and not self.bisector.busy()
            and (self.merge_queue is None or not self.merge_queue.busy())
        )

    def engine_down_for(self) -> float:
        return 0.0 if self._engine_down_since is None else time.monotonic() - self._engine_down_since

    def run(self, stop: threading.Event, until_idle: bool = False, give_up_after: float | None = None) -> None:
        """Schedule until ``stop`` (or, with ``until_idle``, until nothing is queued or
        running). Then wait up to ``stop_grace`` for running jobs and leave the rest
        running, to be re-attached by the next start. With ``give_up_after``, an engine
        unreachable for that long raises EngineUnavailable (the queue stays as it is)."""
        if self.merge_queue is not None:
            self.merge_queue.start()
        store_away = Backoff(0.5, 5.0)
        try:
            while not stop.is_set():
                try:
                    self.step()
                    if until_idle and self.idle():
                        break
                except store_errors() as exc:  # the store is away: nothing claimed; running attempts wait for it
                    log.error("the store does not answer (%s): claiming nothing until it does", exc)
                    stop.wait(store_away.next())
                    continue
                store_away.reset()
                if give_up_after is not None and self.engine_error and self.engine_down_for() > give_up_after:
                    raise self.engine_error
                self._wake.wait(IDLE_POLL)
                self._wake.clear()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Wait up to ``stop_grace`` for running jobs, leave the rest to the next start,
        and end what the dispatcher started (its threads)."""
        if self.merge_queue is not None:
            self.merge_queue.close()
        deadline = time.monotonic() + self.stop_grace
        while self._active and time.monotonic() < deadline:
            time.sleep(0.1)
            self._active = {k: f for k, f in self._active.items() if not f.done()}
        self.ctx.abandon.set()
        self._pool.shutdown(wait=True)
        self.ctx.cleaner.shutdown(wait=True)
