"""What a job's container is asked to be (run/spec.py, a pure function): by a claimed
job, warm, as one shard of a split suite."""

from __future__ import annotations

from pathlib import Path

from orchestrator.backends.base import ImageInfo
from orchestrator.config import RunnerConfig
from orchestrator.models import Job, JobStatus, utcnow
from orchestrator.run.spec import WARM_CPU_SHARES, Shard, container_spec
from runner_image import orchestrator_protocol as protocol

JOB = Job(7, "demo", "c" * 40, ("main",), "s", JobStatus.RUNNING, utcnow(), attempts=2)
RUNNER = RunnerConfig(memory="512m", cpus=2, pids=99, tmp_size="64m", disk="1g")


def spec(**options):
    return container_spec(
        RUNNER,
        "inst",
        "1000:1000",
        JOB,
        2,
        Path("/w/src"),
        Path("/w/out"),
        ImageInfo("env:x", "sha256:e"),
        {protocol.INSTALL: "1"},
        **options,
    )


def test_a_claimed_jobs_container() -> None:
    made = spec()
    assert made.name == "orchestrator-inst-7-2" and made.image == "sha256:e"
    assert made.labels == {
        "orchestrator.instance": "inst",
        "orchestrator.job": "7",
        "orchestrator.attempt": "2",
        "orchestrator.repository": "demo",
        "orchestrator.commit": "c" * 40,
    }
    assert made.variables == {
        protocol.INSTALL: "1",
        "CI": "true",
        "HOME": "/tmp",
        protocol.COMMIT: "c" * 40,
        protocol.ATTEMPT: "2",
    }
    assert (made.memory, made.cpus, made.pids, made.tmp_size, made.disk, made.network, made.cpu_shares) == (
        "512m",
        2,
        99,
        "64m",
        "1g",
        "none",
        None,
    )


def test_warm_and_shard_options() -> None:
    warm = spec(warm=True)
    assert warm.labels["orchestrator.warm"] == "1" and warm.cpu_shares == WARM_CPU_SHARES
    assert warm.variables[protocol.RELEASE] == f"{protocol.OUTPUT_DIR}/{protocol.RELEASE_FILE}"
    shard = spec(shard=Shard(2, 3, tries=2))
    assert shard.name == "orchestrator-inst-7-2-s2" and shard.labels["orchestrator.shard"] == "2/3"
    assert shard.variables[protocol.SHARD] == "2/3" and shard.variables[protocol.SHARD_TRY] == "2"
    assert "orchestrator.warm" not in shard.labels and shard.cpu_shares is None
    assert shard.claims is None and protocol.SHARD_CLAIMS not in shard.variables  # a fixed share
    queued = spec(shard=Shard(1, 3, claims=Path("/w/claims")))
    assert queued.claims == Path("/w/claims").resolve() and queued.variables[protocol.SHARD_CLAIMS] == "/ci-claims"
