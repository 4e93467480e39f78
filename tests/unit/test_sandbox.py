"""What the containers of an environment build are asked for (on a recording stand-in for
docker-py's client and the engine; that they hold on the real engine is tests/integration and
tests/faults/test_hostile_declarations.py): no network, a test container's limits, the
instance's label, not root for the unpack, and removed whatever happens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.backends.base import ContainerState, ImageInfo, Phase
from orchestrator.environment.sandbox import Limits, Sandbox, TimedOut


class RecordingApi:
    def __init__(self, exits: bool = True):
        self.created: list[dict] = []
        self.removed: list[str] = []
        self.exits = exits

    def create_host_config(self, **kwargs):
        return kwargs

    def create_container(self, image, **kwargs):
        self.created.append({"image": image, **kwargs})
        return {"Id": f"c{len(self.created)}"}

    def start(self, container_id):
        pass

    def logs(self, container_id, **kwargs):
        return (
            b"error: No solution found when resolving dependencies\n"
            b"  cause: Because x was not found in the package registry\n"
        )

    def remove_container(self, container_id, **kwargs):
        self.removed.append(container_id)


class RecordingEngine:
    def __init__(self, api: RecordingApi):
        self.api = api
        self.stopped: list[str] = []

    def wait(self, container_id, seconds):
        if self.api.exits:
            return ContainerState(container_id, Phase.EXITED, {}, exit_code=1)
        time.sleep(min(seconds, 0.05))
        return None

    def inspect(self, container_id):
        return ContainerState(container_id, Phase.RUNNING, {})

    def kill(self, container_id):
        self.stopped.append(container_id)

    def remove(self, container_id):
        self.api.remove_container(container_id)


def sandbox(api: RecordingApi, deadline: float) -> Sandbox:
    return Sandbox(
        RecordingEngine(api), {"orchestrator.instance": "i"}, Limits("256m", 0.5, 64, "1g"), deadline, "1000:1000"
    )  # type: ignore[arg-type]


def test_the_unpack_runs_confined(tmp_path: Path) -> None:
    api = RecordingApi()
    for name in ("requirements.txt", "constraints.txt"):
        (tmp_path / name).write_text("x\n")
    uv = tmp_path / "uv"
    ended = sandbox(api, time.monotonic() + 30).unpack("runner", tmp_path, 2, tmp_path, uv, open(tmp_path / "log", "w"))
    (created,) = api.created
    host = created["host_config"]
    assert host["network_mode"] == "none" and created["network_disabled"] is True
    assert (host["mem_limit"], host["memswap_limit"], host["nano_cpus"], host["pids_limit"]) == (
        "256m",
        "256m",
        500_000_000,
        64,
    )
    assert host["cap_drop"] == ["ALL"] and host["read_only"] and "no-new-privileges" in host["security_opt"]
    assert created["user"] == "1000:1000" and created["labels"] == {"orchestrator.instance": "i"}
    command = created["entrypoint"]
    assert "--no-build" in command and "--no-config" in command and "--no-python-downloads" in command
    assert [a for a in command if a.startswith("http")] == [
        "http://127.0.0.1:{port}/simple/0/",
        "http://127.0.0.1:{port}/simple/1/",
    ]
    # uv is this host's, read-only; the one folder it may write is the one the host reads back
    assert host["binds"][str(uv)] == {"bind": "/tmp/uv", "mode": "ro"}
    assert [b["bind"] for b in host["binds"].values() if b["mode"] == "rw"] == ["/tmp/environment/out"]
    assert api.removed == ["c1"] and ended.status == 1 and "not found in the package registry" in ended.output


def test_the_system_packages_are_confined_and_a_build_past_its_deadline_is_killed(tmp_path: Path) -> None:
    api = RecordingApi(exits=False)
    box = sandbox(api, time.monotonic() + 0.3)
    with pytest.raises(TimedOut):
        box.system_packages(
            ImageInfo("runner", "sha256:r"), tmp_path, "orchestrator-env/x:1", {}, open(tmp_path / "log", "w")
        )
    (created,) = api.created
    host = created["host_config"]
    assert host["network_mode"] == "none" and host["pids_limit"] == 64 and host["mem_limit"] == "256m"
    assert created["user"] == "0" and created["environment"] is None  # nothing of ours in the committed image
    assert "dpkg -i" in created["entrypoint"][-1] and "chmod a-s" in created["entrypoint"][-1]
    assert box.engine.stopped == ["c1"] and api.removed == ["c1"]


def test_a_build_container_is_confined_as_a_job_container_is(tmp_path: Path) -> None:
    """One spelling of the confinement (backends/confinement.py): the unpack's container and
    a job's differ only in their mounts, limits and log size, never in what confines them."""
    from orchestrator.backends.docker import create_args
    from tests.unit.test_docker_backend import SPEC

    api = RecordingApi()
    for name in ("requirements.txt", "constraints.txt"):
        (tmp_path / name).write_text("x\n")
    sandbox(api, time.monotonic() + 30).unpack(
        "runner", tmp_path, 0, tmp_path, tmp_path / "uv", open(tmp_path / "log", "w")
    )
    build = api.created[0]["host_config"]
    job = create_args(SPEC)["host_config"]
    assert build.keys() == job.keys()
    for key in ("cap_drop", "security_opt", "read_only", "init"):
        assert build[key] == job[key], key
    assert build["tmpfs"]["/tmp"].split(",size=")[0] == job["tmpfs"]["/tmp"].split(",size=")[0]
