"""The runner backend interface: where a job's container runs.

It works at the level of a job's steps, not of one engine's API calls, so that a second
engine (a Swarm, whose services have no attach and no created-but-not-started state) can
stand behind it. The dispatcher drives it in this order::

    prepare(spec) -> id      the container exists, labelled, not started; its output is
                             already being captured, so nothing printed after start is missed
    start(id) -> state       begins the clock of the job's timeout
    output(id)               the attempt's own capture of the output, from its beginning,
                             live until the container ends
    logs(id, follow)         what the engine kept of the output (for onlookers, and to read
                             it again after a cut), following it live if asked
    wait(id, seconds)        the final state, or None if it still runs then
    report(id, output_dir)   the JUnit report the tests wrote, or None
    stop(id)                 best effort, for timeouts and cancels
    destroy(id)              idempotent: safe whatever state (or absence) the container is in
    find(labels)             containers carrying all these labels, for recovery after a restart

Every method raises ``EngineUnavailable`` when the engine does not answer, so that the
dispatcher can tell infrastructure failures from what the tests did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

from runner_image import orchestrator_protocol as protocol

LABEL_INSTANCE = "orchestrator.instance"
LABEL_JOB = "orchestrator.job"
LABEL_REPOSITORY = "orchestrator.repository"
LABEL_COMMIT = "orchestrator.commit"
LABEL_ATTEMPT = "orchestrator.attempt"
LABEL_WARM = "orchestrator.warm"
LABEL_SHARD = "orchestrator.shard"  # "k/N" on each container of a split suite

WORKSPACE, OUTPUT_DIR, MAX_REPORT_BYTES = protocol.WORKSPACE, protocol.OUTPUT_DIR, protocol.MAX_REPORT_BYTES
CLAIMS_DIR = protocol.CLAIMS_DIR


def container_name(instance: str, job_id: int, attempt: int, shard: int | None = None) -> str:
    """A job's container's name (a service's, on a Swarm): known without asking the engine,
    so that a shard's log can be followed by it."""
    return f"orchestrator-{instance}-{job_id}-{attempt}" + (f"-s{shard}" if shard else "")


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    labels: dict[str, str]
    workspace: Path  # host folder mounted read-write at WORKSPACE
    output_dir: Path  # host folder mounted read-write at OUTPUT_DIR (junit.xml)
    user: str
    memory: str
    cpus: float
    pids: int
    network: str
    log_max_bytes: int
    variables: dict[str, str] = field(default_factory=dict)  # its environment variables
    tmp_size: str = "1g"  # the scratch space at /tmp (exec: suites run what they write there)
    disk: str = "2g"  # what the workspace may hold (watched on the host; a bound of the task's own on a Swarm)
    cpu_shares: int | None = None  # a warm container's low weight until its release (None: the engine's default)
    claims: Path | None = None  # host folder mounted read-write at CLAIMS_DIR: a split suite's shared queue


class Phase(str, Enum):
    """Where a container is in its life, whatever the engine calls it."""

    CREATED = "created"  # prepared, never started
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class ContainerState:
    id: str
    phase: Phase
    labels: dict[str, str]
    exit_code: int | None = None
    oom_killed: bool = False
    over_disk: bool = False  # its workspace outgrew the disk limit (a backend that cannot watch it from the host)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node: str | None = None  # where it runs, on a backend of several machines

    @property
    def exited(self) -> bool:
        return self.phase is Phase.EXITED


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    id: str


class Backend(ABC):
    """Where jobs' containers run. Every method raises EngineUnavailable when the engine
    does not answer (the attempt then waits, or is re-queued); none raises for what the
    tests did. Methods are called from many threads at once, each for its own container."""

    warm_starts = True  # whether a container may start before its slot frees (runner_image's release file)
    prepares_ahead = True  # whether a job may be prepared (checked out, its container or image made) before then
    shares_workspace = True  # whether the container's workspace is the host folder (artifacts are read there)

    @abstractmethod
    def ping(self) -> None:
        """Returns at once, or raises EngineUnavailable."""

    @abstractmethod
    def image(self, tag: str) -> ImageInfo:
        """The image to run, or ImageMissing (a configuration error: not retried)."""

    def memory_total(self) -> int | None:
        """Bytes of memory where the containers run, if one engine runs them all: what
        bounds how many may wait warm (None: no bound known)."""
        return None

    def prioritise(self, container_id: str) -> None:  # noqa: ARG002 (a default: no warm starts, nothing to do)
        """Give a released warm container the CPU weight of any other (it waited with the
        lowest, so that preparing it never slowed the jobs running). Nothing where there
        are no warm starts."""
        return None

    def publish(self, image: ImageInfo) -> str | None:  # noqa: ARG002 (a default: one engine runs everything)
        """Make a built image reachable by every machine that runs jobs; where it now is
        (None: nothing to do, one engine runs everything). May block for a push."""
        return None

    @abstractmethod
    def prepare(self, spec: ContainerSpec) -> str:
        """Create the container, not started, labelled, with its output captured from the
        start; its id. Not idempotent: a second call makes a second container (the name
        is the attempt's, so the engine refuses it while the first exists). May block (a
        Swarm builds and pushes the job's image). ImageMissing if ``spec.image`` is gone."""

    @abstractmethod
    def start(self, container_id: str) -> ContainerState:
        """Start it (the clock of the job's timeout begins); its state. If the engine goes
        away during the call, the container may or may not have started: the caller asks
        ``inspect`` before starting it again."""

    @abstractmethod
    def output(self, container_id: str) -> Iterator[bytes]:
        """Everything the container prints, from its beginning, until it ends: for the one
        attempt that watches it. Blocks between chunks; a cut raises EngineUnavailable."""

    @abstractmethod
    def logs(self, container_id: str, follow: bool = False) -> Iterator[bytes]:
        """What the engine kept of the output; never disturbs ``output``. With ``follow``,
        blocks until the container ends."""

    @abstractmethod
    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        """Block up to ``seconds``: the final state once exited, None if it still runs."""

    @abstractmethod
    def inspect(self, container_id: str) -> ContainerState | None:
        """Its state now; None if the container does not exist."""

    @abstractmethod
    def report(self, container_id: str, output_dir: Path) -> bytes | None:
        """The JUnit report of an exited container, read as the untrusted data it is
        (a regular file, at most MAX_REPORT_BYTES), or None."""

    @abstractmethod
    def stop(self, container_id: str) -> None:
        """Kill it. Best effort, idempotent: a container gone or stopped is fine."""

    @abstractmethod
    def destroy(self, container_id: str) -> None:
        """Remove it and what it holds. Idempotent: safe whatever state (or absence) it is in."""

    @abstractmethod
    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        """The containers carrying all these labels (recovery after a restart)."""

    def close(self) -> None:  # noqa: B027  (nothing to release by default)
        """Release connections; the backend may be used again afterwards (it reconnects)."""
