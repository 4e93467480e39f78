"""One suite of behaviour for the runner backend port (backends/base.py), run against the
in-memory fake the unit tests drive (tests/fakes.py) and against the Docker backend on the
real engine: what the fake does, the real one does, so that the fake cannot pass what the
real one fails. Each side is given the same two commits' worth of work, one that passes
and one that fails, and must answer every method as its contract says."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.backends.base import LABEL_INSTANCE, LABEL_JOB, Backend, ContainerSpec, Phase
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.engine import Engine
from orchestrator.errors import ImageMissing
from orchestrator.workspace import RUNNER_UID, container_user, make_output
from tests.fakes import JUNIT_FAILED, JUNIT_PASSED, FakeBackend, behaving

SAYS = "test_contract_{verdict}"  # the test's name: pytest -v prints it, passed or failed
SUITE = "def {says}():\n    assert {passes}\n"


@dataclass
class Side:
    """One backend, and how a commit's work is laid out for it."""

    backend: Backend
    image: str
    spec_for: Callable[[Path, str, bool], ContainerSpec]


def _spec(workspace: Path, image: str, instance: str, job: str) -> ContainerSpec:
    return ContainerSpec(
        name=f"orchestrator-{instance}-{job}-1",
        image=image,
        labels={LABEL_INSTANCE: instance, LABEL_JOB: job},
        workspace=workspace / "src",
        output_dir=workspace / "out",
        user=container_user(),
        memory="256m",
        cpus=1.0,
        pids=128,
        network="none",
        log_max_bytes=1 << 20,
    )


def _lay_out(workspace: Path, passes: bool) -> None:
    """A checkout whose one test, named as it ends, passes or fails."""
    (workspace / "src" / "tests").mkdir(parents=True)
    says = SAYS.format(verdict="passed" if passes else "failed")
    (workspace / "src" / "tests" / "test_contract.py").write_text(SUITE.format(says=says, passes=passes))
    make_output(workspace / "out")
    if os.getuid() == 0:
        for folder, _, files in os.walk(workspace):
            os.chown(folder, RUNNER_UID, RUNNER_UID)
            for name in files:
                os.chown(Path(folder) / name, RUNNER_UID, RUNNER_UID)


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def side(request, tmp_path: Path) -> Iterator[Side]:
    instance = uuid.uuid4().hex[:16]
    if request.param == "fake":
        fake = FakeBackend()

        def fake_spec(folder: Path, job: str, passes: bool) -> ContainerSpec:
            fake.behaviour = behaving(
                exit_code=0 if passes else 1,
                output=(f"tests/test_contract.py::{SAYS.format(verdict='passed' if passes else 'failed')}\n".encode(),),
                report=JUNIT_PASSED if passes else JUNIT_FAILED,
            )
            _lay_out(folder, passes)
            return _spec(folder, "ci-runner:latest", instance, job)

        yield Side(fake, "ci-runner:latest", fake_spec)
        return
    image = request.getfixturevalue("runner_image")
    backend = DockerBackend(Engine(None))

    def docker_spec(folder: Path, job: str, passes: bool) -> ContainerSpec:
        _lay_out(folder, passes)
        return _spec(folder, backend.image(image).id, instance, job)

    try:
        yield Side(backend, image, docker_spec)
    finally:
        for state in backend.find({LABEL_INSTANCE: instance}):
            with contextlib.suppress(Exception):
                backend.destroy(state.id)
        backend.close()


def _to_the_end(backend: Backend, container_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if backend.wait(container_id, 2) is not None:
            return
    raise AssertionError(f"container {container_id[:12]} still runs after {timeout:g} s")


def test_an_image_that_is_not_there_is_image_missing(side: Side) -> None:
    assert side.backend.image(side.image).tag == side.image
    with pytest.raises(ImageMissing):
        side.backend.image("orchestrator-contract-absent:nowhere")


@pytest.mark.parametrize("passes", [True, False], ids=["passing", "failing"])
def test_a_container_from_prepare_to_destroy(side: Side, tmp_path: Path, passes: bool) -> None:
    backend = side.backend
    spec = side.spec_for(tmp_path / "job", "1", passes)
    container = backend.prepare(spec)

    prepared = backend.inspect(container)  # it exists, labelled, not started
    assert prepared is not None and prepared.phase is Phase.CREATED
    assert spec.labels.items() <= prepared.labels.items()
    assert [s.id for s in backend.find(spec.labels)] == [container]
    assert backend.find({**spec.labels, LABEL_JOB: "2"}) == []  # every label must match

    backend.start(container)
    output = b"".join(backend.output(container))  # the attempt's capture, to the container's end
    _to_the_end(backend, container)
    final = backend.inspect(container)
    assert final is not None and final.phase is Phase.EXITED
    assert (final.exit_code == 0) is passes and final.exit_code is not None
    says = SAYS.format(verdict="passed" if passes else "failed").encode()
    assert says in output and says in b"".join(backend.logs(container))  # kept, and read again
    report = backend.report(container, spec.output_dir)
    assert report is not None and b"<testsuite" in report

    backend.stop(container)  # stopping what has ended is fine
    backend.destroy(container)
    backend.destroy(container)  # and so is removing it twice
    backend.stop(container)  # or stopping what is gone
    assert backend.inspect(container) is None
    assert backend.find(spec.labels) == []


def test_a_container_that_never_existed_is_none_and_removing_it_is_fine(side: Side) -> None:
    nobody = "f" * 64
    assert side.backend.inspect(nobody) is None
    side.backend.stop(nobody)
    side.backend.destroy(nobody)
