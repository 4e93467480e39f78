"""The warm start: while every slot is busy and work is queued, the next queued job is
checked out and its container started *warm* (its entrypoint imports pytest, then waits
for the release file), so that it begins the moment a slot frees.

A warm job stays ``queued`` in the store: nothing about it is written until the
dispatcher claims it for a free slot and *releases* it; its timeout counts from then. A
warm job that is not released (it was cancelled, or the dispatcher leaves) is undone and
stays queued. After a crash, a warm container whose release file was never written is
removed: its tests never began.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

from orchestrator.backends.base import LABEL_WARM, OUTPUT_DIR, ContainerState
from orchestrator.models import Job
from orchestrator.store import Store

RELEASE_FILE = ".release"
RELEASE_ENV = "ORCHESTRATOR_RELEASE_FILE"


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


class WarmSlot:
    """At most one warm job, with the future of its attempt."""

    def __init__(self) -> None:
        self.job: Job | None = None
        self._release: Release | None = None
        self._future: Future[Job] | None = None

    def fill(self, job: Job, handover: Release, future: Future[Job]) -> None:
        self.job, self._release, self._future = job, handover, future

    @property
    def empty(self) -> bool:
        return self.job is None

    def failed(self) -> bool:
        """Preparing the warm job ended before its release (the engine went away, say);
        the slot is emptied, the job is still queued."""
        if self._future is not None and self._future.done():
            self.job = self._release = self._future = None
            return True
        return False

    def release(self, store: Store) -> tuple[Job, Future[Job]] | None:
        """Claim the warm job and release it; None if it changed meanwhile (cancelled),
        in which case it is discarded."""
        job, handover, future = self.job, self._release, self._future
        self.job = self._release = self._future = None
        assert job is not None and handover is not None and future is not None
        claimed = store.claim(job)
        handover.give(claimed)
        return (claimed, future) if claimed is not None else None
