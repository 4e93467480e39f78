"""The warm start: while every slot is busy and work is queued, the next queued jobs (up
to ``runner.warm``) are checked out and their containers started *warm* (the entrypoint
imports pytest, then waits for the release file), so that each begins the moment a slot
frees.

A warm job stays ``queued`` in the store: nothing about it is written until the
dispatcher claims it for a free slot and *releases* it; its timeout counts from then. A
warm job that is not released (it was cancelled, or the dispatcher leaves) is undone and
stays queued. After a crash, a warm container whose release file was never written is
removed: its tests never began.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.base import LABEL_WARM, ContainerState
from orchestrator.models import Job
from runner_image import orchestrator_protocol as protocol

RELEASE_FILE = protocol.RELEASE_FILE


class NotReleased(Exception):
    """A warm job was not released (the dispatcher leaves, or the job was cancelled)."""


class Release:
    """Hands a warm attempt its job, claimed when a slot freed (None: discard it).

    The handover is one decision between two threads: the dispatcher ``reserve``s the
    release before it claims the job in the store, and an attempt that fails while warm
    ``withdraw``s before it leaves the job queued; whichever comes first wins. A reserved
    release is always given (the claimed job, or None), so an attempt that lost the race
    waits for it and ends the job it was given: no job is claimed with nothing to run it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given = threading.Event()
        self._state = "warm"  # -> reserved -> given, or -> withdrawn
        self.job: Job | None = None

    def reserve(self) -> bool:
        """The dispatcher's: True if the attempt is still warm (it will be given a job)."""
        with self._lock:
            if self._state != "warm":
                return False
            self._state = "reserved"
            return True

    def give(self, job: Job | None) -> None:
        with self._lock:
            self.job, self._state = job, "given"
        self._given.set()

    def withdraw(self, patience: float = 60.0) -> Job | None:
        """The attempt's, when it ends before its release: None if the job stays queued
        (never reserved, or given None); else the job the dispatcher claimed for it."""
        with self._lock:
            if self._state == "warm":
                self._state = "withdrawn"
                return None
        self._given.wait(patience)  # reserved: the claim is one transaction away
        return self.job

    def wait(self, abandon: threading.Event, poll: float = 0.2) -> Job:
        """The claimed job, once given; NotReleased if discarded or the dispatcher leaves."""
        while not self._given.wait(poll):
            if abandon.is_set():
                raise NotReleased()
        if self.job is None:
            raise NotReleased()
        return self.job

    @property
    def given(self) -> bool:
        return self.job is not None


class WarmStart:
    """How an attempt started warm differs from one started for a claimed job: its job is
    still queued (so its attempt is the next one, and nothing about it may be written),
    its container waits at the lowest CPU weight for its release file, and the claimed job
    reaches it through ``handover`` when a slot frees."""

    def __init__(self, handover: Release | None = None):
        self.handover = handover or Release()

    @staticmethod
    def attempt_of(job: Job) -> int:
        return job.attempts + 1  # the job is not claimed yet

    @property
    def claimed(self) -> bool:
        return self.handover.given

    def wait(self, abandon: threading.Event) -> Job:
        """The claimed job, once a slot freed; NotReleased if discarded or the dispatcher leaves."""
        return self.handover.wait(abandon)

    def ended_early(self) -> Job | None:
        """The attempt ended before its container ran: None if the job stays queued; else
        the job the dispatcher claimed for it meanwhile (which the attempt must end)."""
        return self.handover.job if self.handover.given else self.handover.withdraw()


def release(output_dir: Path) -> None:
    """Let the warm container begin its tests."""
    (output_dir / RELEASE_FILE).touch()


def never_released(container: ContainerState, output_dir: Path) -> bool:
    """A warm container whose tests have not begun (so it may be removed, not adopted)."""
    return container.labels.get(LABEL_WARM) == "1" and not (output_dir / RELEASE_FILE).exists()


@dataclass
class _Warm:
    job: Job
    handover: Release
    future: Future[Job]


class WarmPool:
    """The jobs started warm, in queue order (each the next queued after those before it),
    with the futures of their attempts: as many as there are slots about to free, so that
    when a wave of jobs ends together, every slot starts warm, not one."""

    def __init__(self) -> None:
        self._warm: list[_Warm] = []

    def add(self, job: Job, handover: Release, future: Future[Job]) -> None:
        self._warm.append(_Warm(job, handover, future))

    def __len__(self) -> int:
        return len(self._warm)

    @property
    def job_ids(self) -> frozenset[int]:
        return frozenset(w.job.id for w in self._warm)

    def failed(self) -> bool:
        """Drop the warm jobs whose preparation ended before their release (the engine went
        away, say): they are still queued. Whether there were any."""
        kept = [w for w in self._warm if not w.future.done()]
        failed, self._warm = len(kept) < len(self._warm), kept
        return failed

    def release_first(self, claim: Callable[[Job], Job | None]) -> tuple[Job, Future[Job]] | None:
        """Claim the first warm job and release it; None if its attempt ended before (the
        job is still queued), or the job changed meanwhile (cancelled): then it is discarded."""
        first = self._warm.pop(0)
        if not first.handover.reserve():
            return None
        claimed = claim(first.job)
        first.handover.give(claimed)
        return (claimed, first.future) if claimed is not None else None
