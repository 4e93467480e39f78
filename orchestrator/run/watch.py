"""Watching a running container: its output into a capped log, the timeout, a cancel
request, and the engine going away and coming back, until the container has exited.

The clock is the job's own start, so a re-attached container keeps its original deadline.
While the engine is away, the container may still run: it is waited for (with back-off),
never re-queued, and its log is read again from the engine once it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from orchestrator.backends.base import ContainerState
from orchestrator.backoff import Backoff
from orchestrator.config import memory_bytes
from orchestrator.errors import ContainerGone, EngineUnavailable
from orchestrator.models import Job, utcnow
from orchestrator.results.logcapture import CappedLog
from orchestrator.results.verdict import Kill
from orchestrator.run.context import Context
from orchestrator.store.db import errors as store_errors
from runner_image import orchestrator_protocol as protocol

log = logging.getLogger("orchestrator.run")


class Abandoned(Exception):
    """The dispatcher is leaving: the container is left running, to be re-adopted."""


class LogPump(threading.Thread):
    """Copies a container's output into a CappedLog while the container runs."""

    def __init__(self, source: Iterator[bytes], sink: CappedLog):
        super().__init__(daemon=True, name="log")
        self._source = source
        self._sink = sink
        self._lock = threading.Lock()
        self._stopped = False
        self.failed = False

    def run(self) -> None:
        try:
            for chunk in self._source:
                with self._lock:
                    if self._stopped:
                        return
                    self._sink.write(chunk)
        except Exception:  # engine cut mid-stream: the log is read again later
            self.failed = True

    def stop(self) -> None:
        """Write nothing more into the log from now on (a stream that does not end by
        itself may go on being read, into nothing, until it does)."""
        with self._lock:
            self._stopped = True


class DiskWatch:
    """What the job's workspace takes on disk (its checkout and its output), measured every
    ``every`` seconds: a suite can pass ``limit`` by what it writes in that time, no more.
    Blocks are counted (a sparse file costs what it uses), each inode once."""

    def __init__(self, roots: list[Path], limit: int, every: float):
        self.roots, self.limit, self.every = roots, limit, every
        self._next = 0.0

    def exceeded(self) -> bool:
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.every
        return self.used() > self.limit

    def used(self) -> int:
        return protocol.disk_used(self.roots, self.limit)


class Watch:
    """One container of one attempt, watched until it exits."""

    def __init__(
        self,
        ctx: Context,
        job: Job,
        container_id: str,
        log_: CappedLog,
        workspace: list[Path],
        engine_trouble: bool = False,
    ):
        self.ctx, self.job, self.container_id, self.log = ctx, job, container_id, log_
        self.engine_trouble = engine_trouble  # the output stream may have been cut: read it again
        self._backoff = Backoff(ctx.patience.backoff_first, ctx.patience.backoff_cap)
        self._disk = DiskWatch(workspace, memory_bytes(ctx.config.runner.disk), ctx.patience.disk_every)

    def until_exit(self, started: datetime, live: bool = True) -> tuple[ContainerState, Kill | None]:
        """The container's final state and why it was killed, if it was; its whole log is
        in ``self.log`` then. With ``live``, the output is captured as it comes (the attempt
        that started the container); without (a container re-adopted after a restart), or
        when the live stream is cut, the engine's copy is read once the container has
        ended: following that copy live loses and repeats lines when the engine rotates it."""
        pump = LogPump(self.ctx.backend.output(self.container_id), self.log) if live else None
        if pump is not None:
            pump.start()
        final, killed = self._wait(started)
        if pump is not None:
            pump.join(timeout=10)
            pump.stop()
        if pump is None or pump.failed or pump.is_alive() or self.engine_trouble:
            self._read_again()
        return final, killed

    def _cancel_requested(self) -> bool:
        """Whether a cancel was asked; not while the store is away (the container goes on)."""
        try:
            return self.ctx.store.cancel_requested(self.job.id)
        except store_errors():
            return False

    def _wait(self, started: datetime) -> tuple[ContainerState, Kill | None]:
        ctx, cid, patience = self.ctx, self.container_id, self.ctx.patience
        timeout = ctx.config.runner.timeout
        killed: Kill | None = None
        killed_at = 0.0
        while True:
            if ctx.abandon.is_set():
                raise Abandoned()
            elapsed = (utcnow() - started).total_seconds()
            if killed is None:
                reason = (
                    Kill.TIMEOUT
                    if elapsed >= timeout
                    else (Kill.CANCEL if self._cancel_requested() else Kill.DISK if self._disk.exceeded() else None)
                )
                if reason and self._kill(reason):
                    killed, killed_at = reason, time.monotonic()
            slice_ = (
                patience.wait_slice
                if killed
                else min(patience.wait_slice, patience.disk_every, max(timeout - elapsed, 0.05))
            )
            try:  # every engine call of the round: a cut anywhere in it means "wait for the engine"
                final = ctx.backend.wait(cid, slice_)
                gone = final is None and ctx.backend.inspect(cid) is None
            except EngineUnavailable as exc:
                self._engine_away(exc, elapsed > timeout + patience.engine_grace)
                continue
            if self._backoff.reset():
                log.info("job %s: engine reachable again", self.job.id)
            if final is not None and final.exited:
                return final, killed
            if gone:
                raise ContainerGone(f"container {cid[:12]} disappeared while running")
            if killed and time.monotonic() - killed_at > patience.kill_grace:
                raise EngineUnavailable(f"container {cid[:12]} did not stop {patience.kill_grace:g} s after kill")

    def _engine_away(self, exc: EngineUnavailable, past_grace: bool) -> None:
        self.engine_trouble = True
        self.ctx.engine_error()
        if not self._backoff.failing:
            log.warning("job %s: %s; waiting for it", self.job.id, exc)
        if past_grace:
            raise exc
        self.ctx.abandon.wait(self._backoff.next())

    def _kill(self, reason: Kill) -> bool:
        why = {
            Kill.TIMEOUT: f"timeout of {self.ctx.config.runner.timeout:g} s reached",
            Kill.CANCEL: "cancelled",
            Kill.DISK: f"more than {self.ctx.config.runner.disk} written into its workspace",
        }[reason]
        log.warning("job %s: %s, killing its container", self.job.id, why)
        try:
            self.ctx.backend.stop(self.container_id)
            return True
        except EngineUnavailable:
            return False  # tried again on the next round

    def _read_again(self) -> None:
        """Read the whole log again from the engine (the live stream was cut); if the
        engine stays away, keep what was captured and say so in the log."""
        backoff = Backoff(self.ctx.patience.reread_first, 8 * self.ctx.patience.reread_first)
        for attempt in range(self.ctx.patience.reread_tries):
            if attempt and self.ctx.abandon.wait(backoff.next()):
                break
            try:
                self.log.restart()
                for chunk in self.ctx.backend.logs(self.container_id, follow=False):
                    self.log.write(chunk)
                return
            except EngineUnavailable:
                continue
        self.log.write(
            b"\n[orchestrator: the log could not be read again after an engine outage; it may be incomplete]\n"
        )
