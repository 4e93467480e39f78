"""The Swarm backend's own logic, without an engine: the report's frame taken out of the
output however the chunks fall, the job image's build context, task states. What the
engine does with services is tested on a real Swarm (tests/swarm)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from orchestrator.backends.base import ContainerSpec, Phase
from orchestrator.backends.engine import Engine
from orchestrator.backends.registry import checkout_archive
from orchestrator.backends.report_frame import frame, new_marker
from orchestrator.backends.swarm import SwarmBackend
from orchestrator.config import ConfigError, load_config
from orchestrator.errors import ContainerGone
from runner_image import orchestrator_protocol as protocol

MARKER = new_marker()
REPORT = b'<testsuites><testsuite tests="1"/></testsuites>'

RUNNER = Path(__file__).resolve().parents[2] / "runner_image"


def framed_output(report: bytes, marker: str = MARKER) -> bytes:
    body = base64.encodebytes(report).decode()
    return f"line one\nline two\n\n{frame(marker)} begin\n{body}{frame(marker)} end\n".encode()


def swarm() -> SwarmBackend:
    backend = SwarmBackend(Engine(), "registry.test:5000", [])
    backend._markers["svc"] = MARKER  # as prepare keeps it
    return backend


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_the_report_is_taken_out_of_the_output_whatever_the_chunks(size: int, monkeypatch) -> None:
    backend = swarm()
    data = framed_output(REPORT)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    monkeypatch.setattr(backend, "_engine_log", lambda *_a, **_k: iter(chunks))
    assert b"".join(backend.logs("svc")) == b"line one\nline two\n\n"
    assert backend.report("svc", Path("/nonexistent")) == REPORT
    assert backend.report("svc", Path("/nonexistent")) == REPORT  # read again from the engine's log


def test_a_frame_without_the_attempts_marker_is_only_output(monkeypatch) -> None:
    """What the suite prints: a frame named after the service (the old marker), or any other."""
    backend = swarm()
    forged = framed_output(b"<testsuites/>", marker="svc") + framed_output(b"<x/>", marker=new_marker())
    data = forged + framed_output(REPORT)[len(b"line one\nline two\n") :]
    monkeypatch.setattr(backend, "_engine_log", lambda *_a, **_k: iter([data]))
    assert b"".join(backend.logs("svc")) == forged + b"\n"
    assert backend.report("svc", Path("/nonexistent")) == REPORT


def test_a_followed_log_ends_at_the_frame_though_the_stream_does_not(monkeypatch) -> None:
    backend = swarm()
    data = framed_output(REPORT)

    def endless(*_a, **_k):
        yield data[:10]
        yield data[10:]
        raise AssertionError("read past the frame's end")

    monkeypatch.setattr(backend, "_engine_log", endless)
    assert b"".join(backend.logs("svc", follow=True)) == b"line one\nline two\n\n"
    assert backend.report("svc", Path("/nonexistent")) == REPORT


def test_output_without_a_frame_is_whole_and_there_is_no_report(monkeypatch) -> None:
    backend = swarm()
    data = b"no frame here\n" * 100 + b"--- orchestrator report other begin\n"
    assert b"".join(backend._without_report("svc", iter([data[:50], data[50:]]))) == data
    monkeypatch.setattr(backend, "_engine_log", lambda *_a, **_k: iter([data]))
    assert backend.report("svc", Path("/nonexistent")) is None


def test_the_checkout_archive_holds_every_file_owned_by_the_container_user(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    (src / "tests" / "test_a.py").write_text("def test_a(): pass\n")
    (src / ".dockerignore").write_text("tests\n")  # means nothing here: no build context
    spec = ContainerSpec(
        name="job",
        image="sha256:abc",
        labels={},
        workspace=src,
        output_dir=tmp_path / "out",
        user="1000:1000",
        memory="1g",
        cpus=1,
        pids=64,
        network="none",
        log_max_bytes=1 << 20,
    )
    buffer = io.BytesIO()
    checkout_archive(buffer, spec)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"workspace", "workspace/tests/test_a.py", "workspace/.dockerignore", "ci-out"} <= set(members)
    assert {(m.uid, m.gid) for m in members.values()} == {(1000, 1000)}


def task(state: str, exit_code: int | None = None, err: str = "") -> dict:
    status = {"State": state, "Timestamp": "2026-11-28T10:00:00Z", "Err": err}
    if exit_code is not None:
        status["ContainerStatus"] = {"ExitCode": exit_code}
    return {"Status": status, "NodeID": ""}


def test_task_states() -> None:
    backend = SwarmBackend(Engine(), "registry.test:5000", [])
    assert backend._task_state("s", {}, task("failed", 1)).exit_code == 1
    assert backend._task_state("s", {}, task("complete", 0)).phase is Phase.EXITED
    assert backend._task_state("s", {}, task("failed", 104)).oom_killed  # the entrypoint saw the OOM killer
    assert backend._task_state("s", {}, task("failed", 103)).over_disk  # ... the workspace over runner.disk
    assert not backend._task_state("s", {}, task("failed", 1)).over_disk
    assert backend._task_state("s", {}, task("running")).phase is Phase.RUNNING
    for lost in ("orphaned", "rejected", "shutdown"):
        with pytest.raises(ContainerGone, match=lost):
            backend._task_state("s", {}, task(lost, err="no suitable node"))
    backend._stopped.add("s")  # removed by a timeout or a cancel: killed, as on one engine
    assert backend._task_state("s", {}, task("shutdown")).exit_code == 137


def test_swarm_needs_a_registry(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"repositories:\n  - name: a\n    url: {tmp_path}\nrunner:\n  backend: swarm\n")
    with pytest.raises(ConfigError, match="runner: .*registry"):
        load_config(path)
    path.write_text(
        f"repositories:\n  - name: a\n    url: {tmp_path}\nrunner:\n  backend: swarm\n"
        "  registry: 10.0.0.1:5000\n  constraints: ['node.role==worker', 'node.labels.ci == true']\n"
    )
    assert load_config(path).runner.constraints == ["node.role==worker", "node.labels.ci == true"]


def test_a_published_image_keeps_its_path_and_loses_only_a_registry() -> None:
    from orchestrator.backends.registry import _without_registry

    assert _without_registry("ci-runner:latest") == "ci-runner:latest"
    assert _without_registry("orchestrator-env/demo:0123") == "orchestrator-env/demo:0123"
    assert _without_registry("registry.example:5000/ci-runner:py3.13") == "ci-runner:py3.13"
    assert _without_registry("localhost/team/ci-runner") == "team/ci-runner"


@pytest.mark.skipif(
    not [name for _, name in socket.if_nameindex() if name != "lo"], reason="this host has no network interface but lo"
)
def test_a_task_that_must_have_no_network_refuses_to_run_where_it_has_one(tmp_path: Path) -> None:
    """The entrypoint itself, on this host (which has interfaces): asked to run with no
    network, it stops before anything else, naming them, with the exit the host reads."""
    env = {**os.environ, protocol.NO_NETWORK: "1", "PYTHONPATH": str(RUNNER)}
    proc = subprocess.run(
        [sys.executable, str(RUNNER / "entrypoint.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == protocol.EXIT_HAS_NETWORK, proc.stdout + proc.stderr
    assert "orchestrator: this task has a network (" in proc.stdout and "nothing of the commit ran" in proc.stdout
