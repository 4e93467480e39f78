"""One attempt of one job: checkout -> spec -> run -> collect -> verdict.

Order matters for crash safety: the container id is committed before the container
starts; result files are written (``result.json`` last) before the final state is
committed; only then are the container and the checkout removed. Whatever line a crash
hits, recovery on the next start finds a consistent picture.

An attempt starts fresh, resumes a container found running after a restart (``adopt``),
or starts warm and waits for its release (``warm``: see ``run/warm.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from orchestrator.backends.base import (
    LABEL_ATTEMPT, LABEL_COMMIT, LABEL_INSTANCE, LABEL_JOB, LABEL_REPOSITORY, ContainerSpec, ContainerState,
    ImageInfo, Phase, container_name,
)
from orchestrator.backoff import Backoff
from orchestrator.errors import (
    ContainerGone, EngineUnavailable, ImageMissing, InfrastructureError, InvalidTransition, ResultsUnwritable,
)
from orchestrator.environment.build import EnvironmentBroken
from orchestrator.environment.setup import Setup, setup
from orchestrator import artifacts, history
from orchestrator.faults import crash_point
from orchestrator.logcapture import CappedLog
from orchestrator.models import Job, JobStatus, transition, utcnow
from orchestrator.verdict import Kill, flaky, judge, parse_junit
from orchestrator.run import warm
from orchestrator.run.conclude import conclude, os_reason
from orchestrator.run.context import Context
from orchestrator.run.watch import Abandoned, Watch
from orchestrator.workspace import Workspace, remove_tree
from runner_image import orchestrator_protocol as protocol

log = logging.getLogger("orchestrator.run")


class Attempt:
    """Runs (or resumes, or starts warm) the current attempt of ``job``; ``run`` returns
    the job as the store has it afterwards, and never raises for what the job met."""

    def __init__(self, ctx: Context, job: Job, adopt: ContainerState | None = None,
                 release: warm.Release | None = None):
        self.ctx = ctx
        self.job = job
        self.adopt = adopt
        self.release = release
        self.ws: Workspace = ctx.workspaces.get(job.id)
        self.container_id: str | None = adopt.id if adopt else None
        self.engine_trouble = False  # the output stream may have been cut: read it again
        self.timings: dict[str, float] = {}  # seconds per phase, in result.json for tuning

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{name}_s"] = round(time.perf_counter() - began, 4)

    def run(self) -> Job:
        try:
            return self._run()
        except Abandoned:
            log.info("job %s: left running for the next start", self.job.id)
            return self.job
        except Exception as exc:
            try:
                return self._ended_by(exc)
            except Exception:   # the store refused even that: the dispatcher settles it (Dispatcher._settle)
                log.exception("job %s: its attempt could not be concluded", self.job.id)
                raise

    def _ended_by(self, exc: Exception) -> Job:
        """The job after its attempt met ``exc``: still queued (a warm start that was never
        released), re-queued by the retry policy, or ended ``error``."""
        if self.release is not None and self.job.status is JobStatus.QUEUED:
            claimed = self.release.job if self.release.given else self.release.withdraw()
            if claimed is None:   # never released: the job stays queued
                if not isinstance(exc, warm.NotReleased):
                    log.warning("job %s: starting it warm failed (%s); it stays queued", self.job.id, exc)
                self._clean_up_quietly()
                return self.job
            self.job = claimed   # claimed while it was being prepared: the claimed job ends, not the stale copy
        if isinstance(exc, ImageMissing):
            return self._conclude(str(exc), final=True)
        if isinstance(exc, EnvironmentBroken):  # what the commit declares: its result, not a retry
            return self._conclude(str(exc), final=True, environment_log=exc.log_path)
        if isinstance(exc, InfrastructureError):
            return self._conclude(str(exc))
        log.exception("job %s: internal error", self.job.id)  # a bug must not lose the job
        return self._conclude(f"internal error: {type(exc).__name__}: {exc}")

    def _run(self) -> Job:
        if self.adopt is None:
            state = self._start()
        else:
            state = self.adopt
            log.info("job %s: re-attached to container %s", self.job.id, state.id[:12])
        done = self._collect(state)
        return self._finish(done)

    def _finish(self, done: Job) -> Job:
        """The final state committed (its files are written), then told, then cleaned up."""
        self.job = self.ctx.store.apply(self.job, done)
        crash_point("job-finished")
        self.ctx.finished(self.job)
        log.info("job %s: %s %s %s", self.job.id, self.job.commit[:12], self.job.status.value, self.job.message or "")
        self._clean_up()
        return self.job

    # -- checkout and spec ------------------------------------------------------------

    def _checkout(self) -> Workspace:
        ws = self.ctx.workspaces.prepare(self.job.id)
        mirror = self.ctx.mirrors[self.job.repository]
        if not mirror.has_commit(self.job.commit):
            mirror.fetch()
        mirror.checkout(self.job.commit, ws.src)
        self.ctx.workspaces.hand_over(ws)
        return ws

    def _spec(self, ws: Workspace, image: ImageInfo, variables: dict[str, str] | None = None) -> ContainerSpec:
        ctx, job, cfg = self.ctx, self.job, self.ctx.config.runner
        variables = variables or {}
        attempt = job.attempts + 1 if self.release else job.attempts  # a warm job is not claimed yet
        return ContainerSpec(
            name=container_name(ctx.instance, job.id, attempt),
            image=image.id,
            labels={
                LABEL_INSTANCE: ctx.instance, LABEL_JOB: str(job.id), LABEL_ATTEMPT: str(attempt),
                LABEL_REPOSITORY: job.repository, LABEL_COMMIT: job.commit,
                **(warm.labels() if self.release else {}),
            },
            workspace=ws.src.resolve(), output_dir=ws.out.resolve(), user=ctx.workspaces.container_user(),
            memory=cfg.memory, cpus=cfg.cpus, pids=cfg.pids, network=cfg.network, log_max_bytes=cfg.max_log_bytes,
            tmp_size=cfg.tmp_size, disk=cfg.disk, cpu_shares=warm.CPU_SHARES if self.release else None,
            environment={**variables, "CI": "true", "HOME": "/tmp", protocol.COMMIT: job.commit,
                         protocol.ATTEMPT: str(attempt),
                         **(warm.environment() if self.release else {})},
        )

    # -- run ----------------------------------------------------------------------------

    def _start(self) -> ContainerState:
        """Check out, prepare and start the container; a warm one then waits for its release."""
        ctx = self.ctx
        crash_point("job-claimed")
        ws, runs_in = self._checkout_and_environment()
        image = runs_in.image
        with self._phase("create"):
            self.container_id = ctx.backend.prepare(self._spec(ws, image, runs_in.variables))
            if self.release is None:
                self._record(container_id=self.container_id, image_tag=image.tag, image_id=image.id,
                             environment=runs_in.document, message=None)
        crash_point("container-created")
        with self._phase("start"):
            try:
                state = ctx.backend.start(self.container_id)
            except EngineUnavailable:
                state = self._settle_start(self.container_id)
        if self.release is None:
            self._record(started_at=state.started_at or utcnow(), node=state.node)
        else:
            self.job = self.release.wait(ctx.abandon)
            self._record(container_id=self.container_id, image_tag=image.tag, image_id=image.id, started_at=utcnow(),
                         environment=runs_in.document)
            warm.release(ws.out)
            try:
                ctx.backend.prioritise(self.container_id)
            except EngineUnavailable as exc:   # it runs, only slower while others compete for the CPU
                log.warning("job %s: its CPU weight stays low (%s)", self.job.id, exc)
        crash_point("container-started")
        log.info("job %s: %s started in container %s", self.job.id, self.job.commit[:12], self.container_id[:12])
        return state

    def _checkout_and_environment(self) -> tuple[Workspace, Setup]:
        """The commit checked out, and what its container runs in (built now if need be)."""
        with self._phase("checkout"):
            ws = self._checkout()
        with self._phase("environment"):
            return ws, setup(self.ctx.config, self.ctx.backend, self.ctx.environments, self.job.repository, ws.src,
                             self.ctx.mirrors[self.job.repository].version(self.job.commit),
                             on_build=self._building_environment)

    def _building_environment(self, stage: str) -> None:
        """Say what it is doing while it takes: the job's message, which the live view and
        the dashboard show (a warm job is not claimed yet: nothing to say)."""
        if self.release is None:
            log.info("job %s: %s", self.job.id, stage)
            self._record(message=stage)

    def _record(self, **facts: object) -> None:
        """Facts about the running attempt, committed before they are acted on."""
        self.job = self.ctx.store.apply(self.job, dataclasses.replace(self.job, **facts))

    def _settle_start(self, container_id: str) -> ContainerState:
        """The engine went away while starting the container, which may or may not run
        now: wait for the engine (up to engine_grace), then start it if it never was."""
        self.engine_trouble = True
        patience = self.ctx.patience
        deadline, backoff = time.monotonic() + patience.engine_grace, Backoff(patience.backoff_first, patience.backoff_cap)
        while True:
            try:
                state = self.ctx.backend.inspect(container_id)
                if state is None:
                    raise ContainerGone(f"container {container_id[:12]} disappeared while starting")
                return self.ctx.backend.start(container_id) if state.phase is Phase.CREATED else state
            except EngineUnavailable:
                if time.monotonic() > deadline or self.ctx.abandon.wait(backoff.next()):
                    raise

    # -- collect and verdict --------------------------------------------------------------

    def _collect(self, state: ContainerState) -> Job:
        """Watch the container to its end, then write the result files; return the final
        job, not yet saved (the files come first)."""
        self.ws.root.mkdir(parents=True, exist_ok=True)
        capped = CappedLog(self.ws.spool, self.ctx.config.runner.max_log_bytes, resume=self.adopt is not None)
        try:
            started = self.job.started_at or state.started_at or utcnow()
            watch = Watch(self.ctx, self.job, state.id, capped, [self.ws.src, self.ws.out], self.engine_trouble)
            with self._phase("run"):
                final, killed = watch.until_exit(started, live=self.adopt is None)
            with self._phase("collect"):
                junit = self.ctx.backend.report(state.id, self.ws.out)
                done = self._verdict(final, killed, started, junit, capped.truncated, capped.head())
                done, staged = self._artifacts(done, [(self.ws.src, "")])
            self._save(done, junit, capped.write_to, staged)
            return done
        finally:
            capped.close()

    def _save(self, done: Job, junit: bytes | None, write_log: Callable[[BinaryIO], None], staged: Path | None,
              shard_logs: Sequence[Callable[[BinaryIO], None]] = ()) -> None:
        """The test history, then the result files (``result.json`` last), before the
        final state is committed."""
        with self._phase("history"):   # before the files, so that result.json has its time
            self._record_history(done, junit)
        built = self.ctx.environments.log_of(done.repository, done.environment) if self.ctx.environments else None
        try:
            self.ctx.results.write(done, write_log, junit, self.ctx.store.attempt_history(self.job.id),
                                   self.timings, built, staged, shard_logs=shard_logs)
        except OSError as exc:
            raise ResultsUnwritable(f"results could not be written: {os_reason(exc)}") from None
        crash_point("result-written")

    def _artifacts(self, done: Job, workspaces: list[tuple[Path, str]]) -> tuple[Job, Path | None]:
        """What the suite left for download, copied aside (artifacts.py), each workspace's
        into its folder ("": the top; a shard's: ``shard-<k>``), and the coverage of their
        reports: read on the host, so not on a backend whose tasks write elsewhere."""
        if not self.ctx.backend.shares_workspace:
            return done, None
        try:
            return self._collect_artifacts(done, workspaces)
        except Exception as exc:   # noqa: BLE001  (whatever an artifact looks like, it never changes the verdict)
            log.exception("job %s: artifacts not collected", done.id)
            return dataclasses.replace(done, artifacts={"files": [], "refused": [f"not collected: {type(exc).__name__}"],
                                                        "bytes": 0}), None

    def _collect_artifacts(self, done: Job, workspaces: list[tuple[Path, str]]) -> tuple[Job, Path | None]:
        repo = self.ctx.config.repository(done.repository)
        staged = self.ws.root / "artifacts"
        shutil.rmtree(staged, ignore_errors=True)
        found = artifacts.Collected()
        for src, under in workspaces:
            if src.is_dir():
                found.add(artifacts.collect(src, staged / under, list(repo.artifacts) if repo else []), under)
        reports = [(src, staged / under) for src, under in workspaces]
        covered = artifacts.coverage(*reports[0]) if len(reports) == 1 else artifacts.coverage_of_shards(reports)
        return dataclasses.replace(done, coverage=covered, artifacts=found.document()), staged

    def _record_history(self, done: Job, junit: bytes | None) -> None:
        """Its test cases, in bulk; a store that refuses them costs the history, not the job."""
        try:
            history.record(self.ctx.store, done, junit, self._reruns())
        except sqlite3.Error as exc:
            log.warning("job %s: test history not recorded (%s)", done.id, exc)

    def _verdict(self, final: ContainerState, killed: Kill | None, started: datetime,
                 junit: bytes | None, log_truncated: bool, log_head: bytes = b"") -> Job:
        reruns = self._reruns()
        status, message = judge(self.ctx.config.runner, final, killed, junit, log_head, reruns)
        return transition(
            self.job, status, utcnow(), exit_code=final.exit_code, message=message,
            tests=parse_junit(junit, reruns) if junit else None, log_truncated=log_truncated,
            flaky=tuple(flaky(junit, reruns)),
            started_at=started, finished_at=final.finished_at or utcnow(), node=final.node or self.job.node,
        )

    def _reruns(self) -> int:
        """How many re-runs of failed tests the entrypoint was asked for: a report's re-run
        suites count up to that many (verdict.suites)."""
        repo = self.ctx.config.repository(self.job.repository)
        return repo.rerun_failures if repo else 0

    # -- endings without a verdict, and clean-up ---------------------------------------

    def _conclude(self, reason: str, final: bool = False, environment_log: Path | None = None) -> Job:
        self._clean_up_quietly()
        try:
            self.job = conclude(self.ctx, self.job, reason, final=final,
                                container_id=self.container_id or self.job.container_id,
                                environment_log=environment_log, timings=self.timings)
        except InvalidTransition:   # the store's copy moved on from ours: conclude that one, if still this attempt's
            fresh = self.ctx.store.get(self.job.id)
            if fresh is None or fresh.status is not JobStatus.RUNNING or fresh.attempts != self.job.attempts:
                log.warning("job %s: not concluded (%s): the store has it %s", self.job.id, reason,
                            fresh.status.value if fresh else "gone")
                self.job = fresh or self.job
                return self.job
            self.job = conclude(self.ctx, fresh, reason, final=final, container_id=self.container_id or fresh.container_id,
                                environment_log=environment_log, timings=self.timings)
        return self.job

    def _clean_up(self) -> None:
        """Set the container and the checkout aside for removal in the background, so the
        slot is free for the next job at once; a crash before removal leaves them to the
        next start's recovery."""
        trash = self.ctx.workspaces.discard(self.job.id)
        self.ctx.cleaner.submit(remove_leftovers, self.ctx, self.container_id, trash, self.job.id)

    def _clean_up_quietly(self) -> None:
        try:
            self._clean_up()
        except Exception as exc:  # recovery removes what is left
            log.warning("job %s: clean-up incomplete: %s", self.job.id, exc)


def remove_leftovers(ctx: Context, container_id: str | None, trash: Path | None, job_id: int) -> None:
    """An ended attempt's container and checkout, off the critical path (the cleaner's
    thread); what the engine keeps now, recovery's sweep removes later."""
    if container_id:
        try:
            ctx.backend.destroy(container_id)
        except EngineUnavailable as exc:
            log.warning("job %s: container %s not removed yet (%s)", job_id, container_id[:12], exc)
    if trash is not None:
        remove_tree(trash)
