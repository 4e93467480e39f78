"""One attempt of one job, from checkout to result files, through a runner backend.

Order matters for crash safety: the container id is committed before the container
starts; result files are written (``result.json`` last) before the final state is
committed; only then are the container and the checkout removed. Whatever line a crash
hits, reconciling on the next start finds a consistent picture.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from orchestrator.backends.base import (
    LABEL_ATTEMPT, LABEL_COMMIT, LABEL_INSTANCE, LABEL_JOB, LABEL_REPOSITORY, OUTPUT_DIR, Backend,
    ContainerSpec, ContainerState, ImageInfo,
)
from orchestrator.config import Config
from orchestrator.errors import ContainerGone, EngineUnavailable, ImageMissing, InfrastructureError
from orchestrator.faults import crash_point
from orchestrator.logcapture import CappedLog
from orchestrator.mirror import Mirror
from orchestrator.models import Job, JobStatus, transition, utcnow
from orchestrator.results import MAX_JUNIT_BYTES, ResultFiles, classify, parse_junit, read_regular_file
from orchestrator.store import Store
from orchestrator.workspace import Workspace, Workspaces, remove_tree

log = logging.getLogger("orchestrator.dispatcher")

KILL_GRACE = 30.0       # seconds a killed container may take to be reported exited
ENGINE_GRACE = 60.0     # how long past the timeout an unreachable engine is waited for
REREAD_DELAYS = (0, 1, 2, 4, 8)  # seconds between tries to read a log again after an outage
WAIT_SLICE = 1.0     # also how soon a cancel request is noticed


class Abandoned(Exception):
    """The dispatcher is stopping: leave the container running, to be re-adopted."""


class NotReleased(Exception):
    """A prepared job was not released (the dispatcher stops, or the job was cancelled)."""


class Release:
    """Hands a prepared execution its job, claimed when a slot freed (None: discard)."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self.job: Job | None = None

    def give(self, job: Job | None) -> None:
        self.job = job
        self._given.set()

    def wait(self, seconds: float) -> bool:
        return self._given.wait(seconds)


GO_FILE = ".go"
LABEL_GATED = "orchestrator.gated"


@dataclass(frozen=True)
class Context:
    config: Config
    store: Store
    backend: Backend
    results: ResultFiles
    workspaces: Workspaces
    mirrors: dict[str, Mirror]
    instance: str
    stop: threading.Event
    cleaner: Executor  # removes finished containers and checkouts off the critical path
    finished: Callable[[Job], None] = lambda job: None   # metrics, notifications
    engine_error: Callable[[], None] = lambda: None


class LogPump(threading.Thread):
    """Copies a container's output into a CappedLog while the container runs."""

    def __init__(self, source: Iterator[bytes], sink: CappedLog):
        super().__init__(daemon=True, name="log")
        self._source = source
        self._sink = sink
        self.failed = False

    def run(self) -> None:
        try:
            for chunk in self._source:
                self._sink.write(chunk)
        except Exception:  # engine cut mid-stream: the log is read again later
            self.failed = True


def _remove(backend: Backend, container_id: str | None, trash: Path | None, job_id: int) -> None:
    if container_id:
        try:
            backend.remove(container_id)
        except EngineUnavailable as exc:
            log.warning("job %s: container %s not removed yet (%s)", job_id, container_id[:12], exc)
    if trash is not None:
        remove_tree(trash)


class Execution:
    """Runs (or, with ``adopt``, resumes) the current attempt of ``job``.

    With a ``gate``, the next attempt of a still queued job is prepared while every slot
    is busy: the checkout is made and the container started warm (its entrypoint imports
    pytest, then waits for the go file). Nothing is written to the store until the
    dispatcher claims the job and hands it over through the gate; the job's clock starts
    then. A prepared job that is not released is undone and stays queued."""

    def __init__(self, ctx: Context, job: Job, adopt: ContainerState | None = None,
                 gate: Release | None = None):
        self.ctx = ctx
        self.job = job
        self.adopt = adopt
        self.gate = gate
        self.ws: Workspace = ctx.workspaces.get(job.id)
        self.container_id: str | None = adopt.id if adopt else None
        self._engine_trouble = False  # the output stream may have been cut: read it again
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
            return self._attempt()
        except Exception as exc:
            if not self._only_prepared():
                raise
            if not isinstance(exc, NotReleased):
                log.warning("job %s: preparing it failed (%s); it stays queued", self.job.id, exc)
            self._clean_up_quietly()
            return self.job

    def _only_prepared(self) -> bool:
        """Prepared but never handed over: the store still has the job queued."""
        return self.gate is not None and self.gate.job is None

    def _attempt(self) -> Job:
        try:
            return self._run()
        except Abandoned:
            log.info("job %s: left running for the next start", self.job.id)
            return self.job
        except Exception as exc:
            if self._only_prepared():
                raise
            if isinstance(exc, ImageMissing):
                return self._conclude_error(str(exc))
            if isinstance(exc, InfrastructureError):
                return self.retry_or_give_up(str(exc))
            log.exception("job %s: internal error", self.job.id)  # a bug must not lose the job
            return self.retry_or_give_up(f"internal error: {type(exc).__name__}: {exc}")

    def _run(self) -> Job:
        if self.adopt is None:
            state, output = self._start()
        else:
            state, output = self.adopt, self.ctx.backend.logs(self.adopt.id, follow=True)
            log.info("job %s: re-attached to container %s", self.job.id, state.id[:12])
        done = self._collect(state, output)
        self.job = self.ctx.store.apply(self.job, done)
        crash_point("job-finished")
        self.ctx.finished(self.job)
        log.info("job %s: %s %s %s", self.job.id, self.job.commit[:12], self.job.status.value,
                 self.job.message or "")
        self._clean_up()
        return self.job

    def _collect(self, state: ContainerState, output: Iterator[bytes]) -> Job:
        """Wait for the container, then write the result files; return the final job,
        not yet saved (the files come first)."""
        self.ws.root.mkdir(parents=True, exist_ok=True)
        capped = CappedLog(self.ws.spool, self.ctx.config.runner.max_log_bytes)
        try:
            started = self.job.started_at or state.started_at or utcnow()
            with self._phase("run"):
                final, killed, pump = self._wait(state, output, capped, started)
            collecting = time.perf_counter()
            pump.join(timeout=10)
            if pump.failed or pump.is_alive() or self._engine_trouble:
                self._reread_log(capped)
            junit = read_regular_file(self.ws.out / "junit.xml", MAX_JUNIT_BYTES)
            done = self._verdict(final, killed, started, junit, capped.truncated)
            self.timings["collect_s"] = round(time.perf_counter() - collecting, 4)
            self.ctx.results.write(done, capped.write_to, junit, self.ctx.store.attempt_history(self.job.id),
                                   self.timings)
            crash_point("result-written")
            return done
        finally:
            capped.close()

    def _verdict(self, final: ContainerState, killed: str | None, started: datetime,
                 junit: bytes | None, log_truncated: bool) -> Job:
        cfg = self.ctx.config.runner
        status, message = classify(final.exit_code, oom_killed=final.oom_killed, timed_out=killed == "timeout",
                                   timeout=cfg.timeout, memory=cfg.memory)
        if killed == "cancel":
            status, message = JobStatus.CANCELLED, "cancelled while running"
        return transition(
            self.job, status, utcnow(), exit_code=final.exit_code, message=message,
            tests=parse_junit(junit) if junit else None, log_truncated=log_truncated,
            started_at=started, finished_at=final.finished_at or utcnow(),
        )

    def _start(self) -> tuple[ContainerState, Iterator[bytes]]:
        """Check out, create and start the container; with a gate, wait for the release."""
        ctx = self.ctx
        crash_point("job-claimed")
        with self._phase("checkout"):
            ws = self._checkout()
        creating = time.perf_counter()
        image = ctx.backend.image(ctx.config.runner.image)
        self.container_id = ctx.backend.create(self._spec(ws, image))
        if self.gate is None:
            self.job = ctx.store.update_running(
                self.job, container_id=self.container_id, image_tag=image.tag, image_id=image.id)
        self.timings["create_s"] = round(time.perf_counter() - creating, 4)
        crash_point("container-created")
        with self._phase("start"):
            output = ctx.backend.attach(self.container_id)
            try:
                state = ctx.backend.start(self.container_id)
            except EngineUnavailable:
                state = self._settle_start(self.container_id)
        if self.gate is None:
            self.job = ctx.store.update_running(self.job, started_at=state.started_at or utcnow())
        else:
            self.job = ctx.store.update_running(
                self._await_release(), container_id=self.container_id, image_tag=image.tag,
                image_id=image.id, started_at=utcnow())
            (ws.out / GO_FILE).touch()
        crash_point("container-started")
        log.info("job %s: %s started in container %s", self.job.id, self.job.commit[:12], self.container_id[:12])
        return state, output

    def _settle_start(self, container_id: str) -> ContainerState:
        """The engine went away while starting the container, which may or may not run
        now: wait for the engine (up to ENGINE_GRACE), then start it if it never was."""
        self._engine_trouble = True
        deadline, delay = time.monotonic() + ENGINE_GRACE, 0.5
        while True:
            try:
                state = self.ctx.backend.inspect(container_id)
                if state is None:
                    raise ContainerGone(f"container {container_id[:12]} disappeared while starting")
                return self.ctx.backend.start(container_id) if state.status == "created" else state
            except EngineUnavailable:
                if time.monotonic() > deadline or self.ctx.stop.wait(delay):
                    raise
                delay = min(5.0, delay * 2)

    def _checkout(self) -> Workspace:
        ws = self.ctx.workspaces.prepare(self.job.id)
        mirror = self.ctx.mirrors[self.job.repository]
        if not mirror.has_commit(self.job.commit):
            mirror.fetch()
        mirror.checkout(self.job.commit, ws.src)
        self.ctx.workspaces.hand_over(ws)
        return ws

    def _spec(self, ws: Workspace, image: ImageInfo) -> ContainerSpec:
        ctx, job, cfg = self.ctx, self.job, self.ctx.config.runner
        attempt = job.attempts + 1 if self.gate else job.attempts  # a prepared job is not claimed yet
        gated = self.gate is not None
        return ContainerSpec(
            name=f"orchestrator-{ctx.instance}-{job.id}-{attempt}",
            image=image.id,
            labels={
                LABEL_INSTANCE: ctx.instance, LABEL_JOB: str(job.id), LABEL_ATTEMPT: str(attempt),
                LABEL_REPOSITORY: job.repository, LABEL_COMMIT: job.commit,
                **({LABEL_GATED: "1"} if gated else {}),
            },
            workspace=ws.src.resolve(), output_dir=ws.out.resolve(), user=ctx.workspaces.container_user(),
            memory=cfg.memory, cpus=cfg.cpus, pids=cfg.pids, network=cfg.network,
            log_max_bytes=cfg.max_log_bytes,
            environment={"CI": "true", "HOME": "/tmp", "ORCHESTRATOR_COMMIT": job.commit,
                         **({"ORCHESTRATOR_GO_FILE": f"{OUTPUT_DIR}/{GO_FILE}"} if gated else {})},
        )

    def _await_release(self) -> Job:
        """Hold the warm container until the dispatcher claims the job for a free slot."""
        while not self.gate.wait(0.2):
            if self.ctx.stop.is_set():
                raise NotReleased()
        if self.gate.job is None:
            raise NotReleased()
        return self.gate.job

    def _wait(self, state: ContainerState, output: Iterator[bytes], capped: CappedLog, started: datetime
              ) -> tuple[ContainerState, str | None, LogPump]:
        """Wait for the container to exit, killing it at the timeout or on a cancel
        request; return its final state and why it was killed, if it was. The clock is
        the container's own start, so a re-attached job keeps its original deadline."""
        backend, timeout = self.ctx.backend, self.ctx.config.runner.timeout
        cid = state.id
        pump = LogPump(output, capped)
        pump.start()
        killed: str | None = None
        killed_at = 0.0
        engine_down_since: float | None = None
        while True:
            if self.ctx.stop.is_set():
                raise Abandoned()
            elapsed = (utcnow() - started).total_seconds()
            if killed is None:
                reason = "timeout" if elapsed >= timeout else (
                    "cancel" if self.ctx.store.cancel_requested(self.job.id) else None)
                if reason and self._kill(cid, reason):
                    killed, killed_at = reason, time.monotonic()
            try:  # every engine call of the round: a cut anywhere in it means "wait for the engine"
                final = backend.wait(cid, WAIT_SLICE if killed else min(WAIT_SLICE, max(timeout - elapsed, 0.05)))
                gone = final is None and backend.inspect(cid) is None
            except EngineUnavailable as exc:
                self._engine_trouble = True
                self.ctx.engine_error()
                if engine_down_since is None:
                    engine_down_since = time.monotonic()
                    log.warning("job %s: %s; waiting for it", self.job.id, exc)
                if elapsed > timeout + ENGINE_GRACE:
                    raise
                self.ctx.stop.wait(min(5.0, 0.5 + (time.monotonic() - engine_down_since) / 4))  # back off
                continue
            if engine_down_since is not None:
                log.info("job %s: engine reachable again", self.job.id)
                engine_down_since = None
            if final is not None and final.exited:
                return final, killed, pump
            if gone:
                raise ContainerGone(f"container {cid[:12]} disappeared while running")
            if killed and time.monotonic() - killed_at > KILL_GRACE:
                raise EngineUnavailable(f"container {cid[:12]} did not stop {KILL_GRACE:g} s after kill")
            if pump.failed:  # stream cut while the container runs: read it all again
                capped.reset()
                pump = LogPump(backend.logs(cid, follow=True), capped)
                pump.start()

    def _kill(self, container_id: str, reason: str) -> bool:
        log.warning("job %s: %s, killing its container", self.job.id,
                    f"timeout of {self.ctx.config.runner.timeout:g} s reached" if reason == "timeout" else "cancelled")
        try:
            self.ctx.backend.kill(container_id)
            return True
        except EngineUnavailable:
            return False  # tried again on the next round

    def _reread_log(self, capped: CappedLog) -> None:
        """Read the whole log again from the engine (the live stream was cut); if the
        engine stays away, keep what was captured and say so in the log."""
        for delay in REREAD_DELAYS:
            if self.ctx.stop.wait(delay):
                break
            try:
                capped.reset()
                for chunk in self.ctx.backend.logs(self.container_id, follow=False):
                    capped.write(chunk)
                return
            except EngineUnavailable:
                continue
        capped.write(b"\n[orchestrator: the log could not be read again after an engine outage; it may be incomplete]\n")

    def _clean_up(self) -> None:
        """Set the container and the checkout aside for removal in the background, so the
        slot is free for the next job at once; a crash before removal leaves them to the
        next start's reconciling."""
        trash = self.ctx.workspaces.discard(self.job.id)
        self.ctx.cleaner.submit(_remove, self.ctx.backend, self.container_id, trash, self.job.id)

    def _conclude_error(self, reason: str) -> Job:
        """A final error without a verdict from the container (image missing, retries spent)."""
        done = transition(self.job, JobStatus.ERROR, utcnow(), message=reason,
                          container_id=self.container_id or self.job.container_id)
        self.ctx.results.write_without_run(done, self.ctx.store.attempt_history(self.job.id))
        self.job = self.ctx.store.apply(self.job, done)
        self.ctx.finished(self.job)
        log.error("job %s: %s error: %s", self.job.id, self.job.commit[:12], reason)
        self._clean_up_quietly()
        return self.job

    def retry_or_give_up(self, reason: str) -> Job:
        """Re-queue as a new attempt, unless ``retries`` are spent."""
        if self.job.attempts > self.ctx.config.retries:
            return self._conclude_error(f"gave up after {self.job.attempts} attempts: {reason}")
        log.warning("job %s: attempt %s failed (%s); re-queued", self.job.id, self.job.attempts, reason)
        self._clean_up_quietly()
        self.job = self.ctx.store.move(self.job, JobStatus.QUEUED, message=f"attempt {self.job.attempts}: {reason}")
        return self.job

    def _clean_up_quietly(self) -> None:
        try:
            self._clean_up()
        except Exception as exc:  # reconciling later removes what is left
            log.warning("job %s: clean-up incomplete: %s", self.job.id, exc)
