"""One attempt of one job: checkout -> spec -> run -> collect -> verdict.

Order matters for crash safety: the container id is committed before the container
starts; result files are written (``result.json`` last) before the final state is
committed; only then are the container and the checkout removed. Whatever line a crash
hits, recovery on the next start finds a consistent picture.

An attempt starts for a claimed job, resumes a container found running after a restart
(``adopt``), or starts warm and waits for its release (``warm``: a ``WarmStart``, run/warm.py).
The steps it shares with a split attempt are in run/steps.py and run/collect.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.backends.base import ContainerState, Phase
from orchestrator.backoff import Backoff
from orchestrator.environment.setup import Setup
from orchestrator.errors import ContainerGone, EngineUnavailable, NotActive
from orchestrator.faults import crash_point
from orchestrator.models import Job, JobStatus, utcnow
from orchestrator.results.logcapture import CappedLog
from orchestrator.results.report import Report
from orchestrator.run import collect, conclude, steps, warm
from orchestrator.run.context import Context
from orchestrator.run.spec import container_spec
from orchestrator.run.watch import Abandoned, Watch
from orchestrator.workspace import Workspace

log = logging.getLogger("orchestrator.run")


class Attempt:
    """Runs (or resumes, or starts warm) the current attempt of ``job``; ``run`` returns
    the job as the store has it afterwards, and never raises for what the job met."""

    def __init__(
        self, ctx: Context, job: Job, adopt: ContainerState | None = None, warm_start: warm.WarmStart | None = None
    ):
        self.ctx = ctx
        self.job = job
        self.adopt = adopt
        self.warm = warm_start
        self.ws: Workspace = ctx.workspaces.get(job.id)
        self.container_id: str | None = adopt.id if adopt else None
        self.engine_trouble = False  # the output stream may have been cut: read it again
        self.timings = steps.Timings()  # seconds per phase, in result.json for tuning

    def run(self) -> Job:
        try:
            return self._run()
        except (Abandoned, NotActive):  # leaving, or another dispatcher is the active one now
            log.info("job %s: left running for the next start (or the active dispatcher)", self.job.id)
            return self.job
        except Exception as exc:
            try:
                return self._ended_by(exc)
            except Exception:  # the store refused even that: the dispatcher settles it (Dispatcher._settle)
                log.exception("job %s: its attempt could not be concluded", self.job.id)
                raise

    def _ended_by(self, exc: Exception) -> Job:
        """The job after its attempt met ``exc``: still queued (a warm start that was never
        released), re-queued by the retry policy, or ended ``error``."""
        # first what it leaves: once a warm start is withdrawn, the job may be started
        # again at once, in the same workspace, and nothing of this attempt may touch it
        self._clean_up_quietly()
        if self.warm is not None and self.job.status is JobStatus.QUEUED:
            claimed = self.warm.ended_early()
            if claimed is None:  # never released: the job stays queued
                if not isinstance(exc, warm.NotReleased):
                    log.warning("job %s: starting it warm failed (%s); it stays queued", self.job.id, exc)
                return self.job
            self.job = claimed  # claimed while it was being prepared: the claimed job ends, not the stale copy
        self.job = conclude.after(self.ctx, self.job, exc, self.container_id, self.timings)
        return self.job

    def _run(self) -> Job:
        if self.adopt is None:
            state = self._start()
        else:
            state = self.adopt
            log.info("job %s: re-attached to container %s", self.job.id, state.id[:12])
        done = self._collect(state)
        self.job = steps.finish(self.ctx, self.job, done)
        self._clean_up()
        return self.job

    # -- run ----------------------------------------------------------------------------

    def _start(self) -> ContainerState:
        """Check out, prepare and start the container; a warm one then waits for its release."""
        ctx = self.ctx
        crash_point("job-claimed")
        runs_in = self._checkout_and_environment()
        image = runs_in.image
        attempt = self.warm.attempt_of(self.job) if self.warm else self.job.attempts
        spec = container_spec(
            ctx.config.runner,
            ctx.instance,
            ctx.workspaces.container_user(),
            self.job,
            attempt,
            self.ws.src,
            self.ws.out,
            image,
            runs_in.variables,
            warm=self.warm is not None and ctx.backend.warm_starts,
        )
        with self.timings.measure("create"):
            self.container_id = steps.prepare(ctx, spec, runs_in)
            if self.warm is None:
                self._record_container(runs_in)
        crash_point("container-created")
        if self.warm is not None and not ctx.backend.warm_starts:  # prepared ahead: started once released
            self.job = self.warm.wait(ctx.abandon)
            self.warm = None  # from here on, an attempt like any other
            self._record_container(runs_in)
        with self.timings.measure("start"):
            try:
                state = ctx.backend.start(self.container_id)
            except EngineUnavailable:
                state = self._settle_start(self.container_id)
        if self.warm is None:
            self._record(started_at=state.started_at or utcnow(), node=state.node)
        else:
            self.job = self.warm.wait(ctx.abandon)
            self._record(
                container_id=self.container_id,
                image_tag=image.tag,
                image_id=image.id,
                started_at=utcnow(),
                environment=runs_in.document,
            )
            warm.release(self.ws.out)
            try:
                ctx.backend.prioritise(self.container_id)
            except EngineUnavailable as exc:  # it runs, only slower while others compete for the CPU
                log.warning("job %s: its CPU weight stays low (%s)", self.job.id, exc)
        crash_point("container-started")
        log.info("job %s: %s started in container %s", self.job.id, self.job.commit[:12], self.container_id[:12])
        return state

    def _checkout_and_environment(self) -> Setup:
        """The commit checked out, and what its container runs in (built now if need be)."""
        self.ws, runs_in = steps.checkout_and_environment(self.ctx, self.job, self.timings, self._building_environment)
        return runs_in

    def _building_environment(self, stage: str) -> None:
        """Say what it is doing while it takes: the job's message, which the live view and
        the dashboard show (a warm job is not claimed yet: nothing to say)."""
        if self.warm is None:
            log.info("job %s: %s", self.job.id, stage)
            self._record(message=stage)

    def _record_container(self, runs_in: Setup) -> None:
        """The claimed attempt's container and what it runs in, before it is started."""
        self._record(
            container_id=self.container_id,
            image_tag=runs_in.image.tag,
            image_id=runs_in.image.id,
            environment=runs_in.document,
            message=None,
        )

    def _record(self, **facts: Any) -> None:
        """Facts about the running attempt, committed before they are acted on (waiting for
        a store that is away)."""
        self.job = steps.record(self.ctx, self.job, **facts)

    def _settle_start(self, container_id: str) -> ContainerState:
        """The engine went away while starting the container, which may or may not run
        now: wait for the engine (up to engine_grace), then start it if it never was."""
        self.engine_trouble = True
        patience = self.ctx.patience
        deadline, backoff = (
            time.monotonic() + patience.engine_grace,
            Backoff(patience.backoff_first, patience.backoff_cap),
        )
        while True:
            try:
                state = self.ctx.backend.inspect(container_id)
                if state is None:
                    raise ContainerGone(f"container {container_id[:12]} disappeared while starting")
                return self.ctx.backend.start(container_id) if state.phase is Phase.CREATED else state
            except EngineUnavailable:
                if time.monotonic() > deadline or self.ctx.abandon.wait(backoff.next()):
                    raise

    # -- collect --------------------------------------------------------------------------

    def _collect(self, state: ContainerState) -> Job:
        """Watch the container to its end, then write the result files; return the final
        job, not yet saved (the files come first)."""
        self.ws.root.mkdir(parents=True, exist_ok=True)
        capped = CappedLog(self.ws.spool, self.ctx.config.runner.max_log_bytes, resume=self.adopt is not None)
        try:
            started = self.job.started_at or state.started_at or utcnow()
            watch = Watch(self.ctx, self.job, state.id, capped, [self.ws.src, self.ws.out], self.engine_trouble)
            with self.timings.measure("run"):
                final, killed = watch.until_exit(started, live=self.adopt is None)
            with self.timings.measure("collect"):
                report = Report(self.ctx.backend.report(state.id, self.ws.out))
                done = collect.verdict(
                    self.ctx, self.job, final, killed, started, report, capped.truncated, capped.head()
                )
                done, staged = collect.with_artifacts(self.ctx, done, self.ws.root, [(self.ws.src, "")])
            collect.save(self.ctx, done, report, capped.write_to, self.timings, staged)
            return done
        finally:
            capped.close()

    # -- clean-up -------------------------------------------------------------------------

    def _clean_up(self) -> None:
        steps.clean_up(self.ctx, self.job.id, [self.container_id] if self.container_id else [])

    def _clean_up_quietly(self) -> None:
        steps.clean_up_quietly(self.ctx, self.job.id, [self.container_id] if self.container_id else [])
