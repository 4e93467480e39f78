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

from orchestrator.backends.base import LABEL_WARM, OUTPUT_DIR, ContainerState
from orchestrator.models import Job

RELEASE_FILE = ".release"
RELEASE_ENV = "ORCHESTRATOR_RELEASE_FILE"
CPU_SHARES = 2   # the lowest weight: a warm container prepares on CPU that running jobs leave idle


class NotReleased(Exception):
    """A warm job was not released (the dispatcher leaves, or the job was cancelled)."""


class Release:
    """Hands a warm attempt its job, claimed when a slot freed (None: discard it)."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self.job: Job | None = None

    def give(self, job: Job | None) -> None:
        self.job = job
        self._given.set()

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


def labels() -> dict[str, str]:
    return {LABEL_WARM: "1"}


def environment() -> dict[str, str]:
    return {RELEASE_ENV: f"{OUTPUT_DIR}/{RELEASE_FILE}"}


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
        """Claim the first warm job and release it; None if it changed meanwhile
        (cancelled), in which case it is discarded."""
        first = self._warm.pop(0)
        claimed = claim(first.job)
        first.handover.give(claimed)
        return (claimed, first.future) if claimed is not None else None
