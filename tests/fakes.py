"""An in-memory runner backend for unit tests, driven by its inputs (in the spirit of
woodpecker's dummy backend): each container behaves as its ``Behaviour`` says, and
``faults`` names engine calls that fail with EngineUnavailable, and how many times.
Nothing here claims to show what Docker does: that is the integration tests' job."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.backends.base import Backend, ContainerSpec, ContainerState, ImageInfo, Phase
from orchestrator.config import load_config
from orchestrator.errors import EngineUnavailable, ImageMissing
from orchestrator.models import utcnow
from orchestrator.run.attempt import Attempt
from orchestrator.run.context import Context, Patience
from orchestrator.store import NewCommit, Store
from tests.helpers import PASSING, GitRepo, write_config

JUNIT_PASSED = b'<testsuites><testsuite tests="1" failures="0" errors="0" skipped="0"/></testsuites>'
JUNIT_FAILED = b'<testsuites><testsuite tests="2" failures="1" errors="0" skipped="0"/></testsuites>'


@dataclass(frozen=True)
class Behaviour:
    """What a fake container does once started."""

    exit_code: int = 0
    output: tuple[bytes, ...] = (b"collected 1 item\n", b"1 passed\n")
    report: bytes | None = JUNIT_PASSED
    oom: bool = False
    waits: int = 0  # wait rounds that still find it running; -1: until stopped
    starts_despite_fault: bool = False  # a failed start call still started it (the answer was lost)
    writes: int = 0  # bytes it writes into its output folder once started


@dataclass
class FakeContainer:
    spec: ContainerSpec
    behaviour: Behaviour
    phase: Phase = Phase.CREATED
    waits_left: int = 0
    exit_code: int | None = None
    started_at: object = None
    finished_at: object = None
    starts: int = 0

    def state(self, id_: str) -> ContainerState:
        return ContainerState(
            id_,
            self.phase,
            dict(self.spec.labels),
            exit_code=self.exit_code,
            oom_killed=self.behaviour.oom and self.phase is Phase.EXITED,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )  # type: ignore[arg-type]

    def exit(self, code: int) -> None:
        self.phase, self.exit_code, self.finished_at = Phase.EXITED, code, utcnow()


@dataclass
class FakeBackend(Backend):
    behaviour: Behaviour = field(default_factory=Behaviour)
    faults: Counter = field(default_factory=Counter)
    images: tuple[str, ...] = ("ci-runner:latest",)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    specs: list[ContainerSpec] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.faults[name] > 0:
            self.faults[name] -= 1
            raise EngineUnavailable(f"Docker engine unreachable ({name}): fake outage")

    def _get(self, container_id: str) -> FakeContainer:
        return self.containers[container_id]

    def ping(self) -> None:
        self._call("ping")

    def prioritise(self, container_id: str) -> None:
        self._call("prioritise")

    def image(self, tag: str) -> ImageInfo:
        self._call("image")
        if tag not in self.images:
            raise ImageMissing(f"runner image {tag} is missing: run `orchestrator image build`")
        return ImageInfo(tag, "sha256:" + "f" * 64)

    def prepare(self, spec: ContainerSpec) -> str:
        self._call("prepare")
        self.specs.append(spec)
        container_id = f"{next(self._ids):064x}"
        self.containers[container_id] = FakeContainer(spec, self.behaviour)
        return container_id

    def adopt(self, spec: ContainerSpec, phase: Phase = Phase.RUNNING) -> ContainerState:
        """A container an earlier process started (for recovery tests)."""
        container_id = self.prepare(spec)
        self._run(self._get(container_id))
        if phase is Phase.CREATED:
            self._get(container_id).phase = Phase.CREATED
        return self._get(container_id).state(container_id)

    def _run(self, box: FakeContainer) -> None:
        box.phase, box.started_at, box.starts = Phase.RUNNING, utcnow(), box.starts + 1
        if box.behaviour.writes:
            (box.spec.output_dir / "big").write_bytes(b"x" * box.behaviour.writes)
        box.waits_left = box.behaviour.waits
        if box.waits_left == 0:
            box.exit(box.behaviour.exit_code)

    def start(self, container_id: str) -> ContainerState:
        box = self._get(container_id)
        try:
            self._call("start")
        except EngineUnavailable:
            if box.behaviour.starts_despite_fault:
                self._run(box)
            raise
        self._run(box)
        return box.state(container_id)

    def output(self, container_id: str) -> Iterator[bytes]:
        return self.logs(container_id, follow=True)

    def logs(self, container_id: str, follow: bool = False) -> Iterator[bytes]:
        self._call("logs")
        yield from self._get(container_id).behaviour.output

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        self._call("wait")
        box = self._get(container_id)
        if box.phase is Phase.RUNNING:
            if box.waits_left == 0:
                box.exit(box.behaviour.exit_code)
            else:
                box.waits_left -= 1
                time.sleep(min(seconds, 0.005))
                return None
        return box.state(container_id)

    def inspect(self, container_id: str) -> ContainerState | None:
        self._call("inspect")
        box = self.containers.get(container_id)
        return box.state(container_id) if box else None

    def report(self, container_id: str, output_dir: Path) -> bytes | None:
        return self._get(container_id).behaviour.report

    def stop(self, container_id: str) -> None:
        self._call("stop")
        box = self.containers.get(container_id)  # gone or never there: fine (the port's contract)
        if box is not None and box.phase is Phase.RUNNING:
            box.exit(137)

    def destroy(self, container_id: str) -> None:
        self._call("destroy")
        if self.containers.pop(container_id, None) is not None:
            self.destroyed.append(container_id)

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        self._call("find")
        return [
            box.state(cid)
            for cid, box in self.containers.items()
            if all(box.spec.labels.get(k) == v for k, v in labels.items())
        ]


def behaving(**changes: object) -> Behaviour:
    return replace(Behaviour(), **changes)  # type: ignore[arg-type]


FAST = Patience(
    wait_slice=0.01,
    kill_grace=2,
    engine_grace=2,
    backoff_first=0.01,
    backoff_cap=0.02,
    reread_tries=2,
    reread_first=0.01,
)


class Bed:
    """One repository, one queued commit, a store and a context over a fake backend."""

    def __init__(self, tmp_path: Path, backend: FakeBackend, **runner: object):
        self.repo = GitRepo(tmp_path / "upstream")
        self.sha = self.repo.commit("root", PASSING)
        self.config = load_config(
            write_config(tmp_path, {"demo": self.repo.path}, runner={"timeout": 5, **runner}, retries=1)
        )
        self.store = Store(self.config.db_path)
        self.store.record_commits("demo", [NewCommit(self.sha, "root", ("main",))])
        self.backend = backend
        self.finished: list = []
        self.ctx = Context.create(self.config, self.store, backend, finished=self.finished.append, patience=FAST)

    def attempt(self, **kwargs: object):
        job = self.store.claim_next()
        return Attempt(self.ctx, job, **kwargs).run()

    def result(self) -> dict:
        return json.loads(self.ctx.results.path(self.store.get(1), "result.json").read_text())

    def log(self) -> bytes:
        return self.ctx.results.path(self.store.get(1), "output.log").read_bytes()

    def close(self) -> None:
        self.ctx.cleaner.shutdown(wait=True)
        self.store.close()

    def left_behind(self) -> tuple[list[str], list[str]]:
        work = self.config.state_dir / "work"
        return list(self.backend.containers), sorted(p.name for p in work.iterdir()) if work.exists() else []


def dispatcher(config, store: Store, backend: Backend, **context: object):
    """A dispatcher and its collaborators, as the composition root builds them."""
    from orchestrator.observe.mirror import Mirrors
    from orchestrator.results.metrics import Metrics
    from orchestrator.service import dispatcher_for

    return dispatcher_for(
        config, store, backend, Mirrors(config.state_dir, config.repositories), Metrics(store), **context
    )


def observer(config, sink):
    """An observer of ``config``'s repositories that sends to ``sink``."""
    from orchestrator.observe.mirror import Mirrors
    from orchestrator.observe.observer import Observer

    return Observer(config.repositories, config.poll_interval, Mirrors(config.state_dir, config.repositories), sink)


def spec_of(bed: Bed, job):
    """The spec of ``job``'s current attempt, as the attempt would ask for it."""
    from orchestrator.run.spec import container_spec

    ws = bed.ctx.workspaces.prepare(job.id)
    return container_spec(
        bed.config.runner,
        bed.ctx.instance,
        bed.ctx.workspaces.container_user(),
        job,
        job.attempts,
        ws.src,
        ws.out,
        bed.backend.image("ci-runner:latest"),
        {},
    )
