"""What the local backend asks of the engine for a job's container (``create_args``, a
pure function), and how it handles what the engine answers, on a recording stand-in for
docker-py's client. That the engine does what is asked is tests/integration's job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.backends.base import ContainerSpec, Phase
from orchestrator.backends.docker import DockerBackend, create_args
from orchestrator.backends.engine import state

SPEC = ContainerSpec(
    name="orchestrator-i-1-1",
    image="sha256:abc",
    labels={"orchestrator.job": "1"},
    workspace=Path("/w/src"),
    output_dir=Path("/w/out"),
    user="1000:1000",
    memory="256m",
    cpus=0.5,
    pids=64,
    network="none",
    log_max_bytes=1000,
    variables={"CI": "true"},
    tmp_size="100m",
)


def test_a_job_container_is_confined() -> None:
    args = create_args(SPEC)
    host = args["host_config"]
    assert (args["image"], args["name"], args["user"], args["working_dir"]) == (
        "sha256:abc",
        "orchestrator-i-1-1",
        "1000:1000",
        "/workspace",
    )
    assert args["labels"] == {"orchestrator.job": "1"} and args["environment"] == {"CI": "true"}
    assert args["network_disabled"] is True and host["network_mode"] == "none"
    assert host["binds"] == {
        "/w/src": {"bind": "/workspace", "mode": "rw"},
        "/w/out": {"bind": "/ci-out", "mode": "rw"},
    }
    assert (host["mem_limit"], host["memswap_limit"], host["nano_cpus"], host["pids_limit"]) == (
        "256m",
        "256m",
        500_000_000,
        64,
    )  # no swap beyond the memory
    assert host["cap_drop"] == ["ALL"] and host["security_opt"] == ["no-new-privileges"]
    assert host["read_only"] is True and host["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev,size=100m"}
    assert host["init"] is True and host["cpu_shares"] is None
    assert host["log_config"]["Config"] == {"max-size": str(1 << 20), "max-file": "2"}  # at least 1 MiB a file


def test_a_shard_of_a_queued_split_also_mounts_the_shared_claims_folder() -> None:
    binds = create_args(dataclasses.replace(SPEC, claims=Path("/w/claims")))["host_config"]["binds"]
    assert binds["/w/claims"] == {"bind": "/ci-claims", "mode": "rw"} and len(binds) == 3


def test_a_warm_container_waits_at_the_lowest_weight_and_a_network_is_kept() -> None:
    from dataclasses import replace

    args = create_args(replace(SPEC, cpu_shares=2, network="ci-net"))
    assert args["host_config"]["cpu_shares"] == 2
    assert args["network_disabled"] is False and args["host_config"]["network_mode"] == "ci-net"


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_host_config(self, **kwargs):
        return {"made": kwargs}

    def create_container(self, **kwargs):
        self.calls.append(("create_container", kwargs))
        return {"Id": "c1"}

    def attach(self, container_id, **kwargs):
        self.calls.append(("attach", kwargs))
        return Lines([b"a line\n"])


class Lines(list):
    """A stream as docker-py gives it: iterable, and closed by its reader."""

    def close(self) -> None:
        pass


class RecordingEngine:
    def __init__(self) -> None:
        self.api = RecordingApi()

    def close(self) -> None:
        pass


def test_prepare_creates_from_the_args_and_attaches_before_the_start() -> None:
    engine = RecordingEngine()
    backend = DockerBackend(engine)  # type: ignore[arg-type]
    assert backend.prepare(SPEC) == "c1"
    (create, created), (attach, attached) = engine.api.calls
    expected = create_args(SPEC)
    assert (
        created["host_config"] == {"made": expected.pop("host_config")}
        and {k: v for k, v in created.items() if k != "host_config"} == expected
    )
    assert attach == "attach" and attached == {"stdout": True, "stderr": True, "stream": True, "logs": True}
    assert list(backend.output("c1")) == [b"a line\n"]  # the attached stream, from the start


def test_the_engines_words_become_phases() -> None:
    exited = state(
        {
            "Id": "c",
            "State": {
                "Status": "exited",
                "ExitCode": 137,
                "OOMKilled": True,
                "StartedAt": "2026-12-04T10:00:00.123456789Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
            },
            "Config": {"Labels": None},
        }
    )
    assert (exited.phase, exited.exit_code, exited.oom_killed, exited.labels) == (Phase.EXITED, 137, True, {})
    assert exited.started_at is not None and exited.finished_at is None  # Go's zero time is "never"
    for status, phase in (
        ("created", Phase.CREATED),
        ("running", Phase.RUNNING),
        ("paused", Phase.RUNNING),
        ("dead", Phase.EXITED),
    ):
        seen = state({"Id": "c", "State": {"Status": status, "ExitCode": 0}})
        assert seen.phase is phase and (seen.exit_code is None) == (phase is not Phase.EXITED)
