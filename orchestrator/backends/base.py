"""The runner backend interface: one container per job attempt.

Lifecycle, as the dispatcher drives it::

    create(spec) -> id        container exists, labelled, not started
    attach(id) -> stream      opened before start: every byte of output, live, until exit
    start(id)                 begins the clock of the job's timeout
    logs(id)                  the retained output (and, following, what comes), for re-attaching
    wait(id, seconds)         the final state, or None if still running then
    kill(id)                  best effort, for timeouts and cancels
    remove(id)                idempotent: safe whatever state (or absence) the container is in
    find(labels)              containers carrying all these labels, for reconciling after a restart

Every method raises ``EngineUnavailable`` when the engine does not answer, so the
dispatcher can tell infrastructure failures from what the tests did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

LABEL_INSTANCE = "orchestrator.instance"
LABEL_JOB = "orchestrator.job"
LABEL_REPOSITORY = "orchestrator.repository"
LABEL_COMMIT = "orchestrator.commit"
LABEL_ATTEMPT = "orchestrator.attempt"

WORKSPACE = "/workspace"
OUTPUT_DIR = "/ci-out"


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    labels: dict[str, str]
    workspace: Path            # host folder mounted read-write at WORKSPACE
    output_dir: Path           # host folder mounted read-write at OUTPUT_DIR (junit.xml)
    user: str
    memory: str
    cpus: float
    pids: int
    network: str
    log_max_bytes: int
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str                     # created | running | exited | dead | ...
    labels: dict[str, str]
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")

    @property
    def exited(self) -> bool:
        return self.status in ("exited", "dead")


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    id: str


class Backend(ABC):
    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def image(self, tag: str) -> ImageInfo:
        """The image to run, or ImageMissing."""

    @abstractmethod
    def create(self, spec: ContainerSpec) -> str: ...

    @abstractmethod
    def attach(self, container_id: str) -> Iterator[bytes]:
        """Opens the output stream now (not lazily), so nothing written after start is missed."""

    @abstractmethod
    def start(self, container_id: str) -> ContainerState: ...

    @abstractmethod
    def logs(self, container_id: str, follow: bool = True) -> Iterator[bytes]: ...

    @abstractmethod
    def wait(self, container_id: str, seconds: float) -> ContainerState | None: ...

    @abstractmethod
    def inspect(self, container_id: str) -> ContainerState | None:
        """None if the container does not exist."""

    @abstractmethod
    def kill(self, container_id: str) -> None: ...

    @abstractmethod
    def remove(self, container_id: str) -> None: ...

    @abstractmethod
    def find(self, labels: dict[str, str]) -> list[ContainerState]: ...
