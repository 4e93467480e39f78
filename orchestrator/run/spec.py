"""What a job's container is asked to be: its name, labels, limits and environment, from
the job, the checkout, what it runs in and how it is started (warm, as one shard of a
split suite). A pure function: the same inputs give the same spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.base import (
    LABEL_ATTEMPT,
    LABEL_COMMIT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_REPOSITORY,
    LABEL_SHARD,
    LABEL_WARM,
    ContainerSpec,
    ImageInfo,
    container_name,
)
from orchestrator.config import RunnerConfig
from orchestrator.models import Job
from runner_image import orchestrator_protocol as protocol

WARM_CPU_SHARES = 2  # the lowest weight: a warm container prepares on CPU that running jobs leave idle


@dataclass(frozen=True)
class Shard:
    index: int  # from 1
    count: int
    tries: int = 1
    claims: Path | None = None  # the queue shared with the other shards (one engine), else a fixed share


def container_spec(
    runner: RunnerConfig,
    instance: str,
    user: str,
    job: Job,
    attempt: int,
    src: Path,
    out: Path,
    image: ImageInfo,
    variables: dict[str, str],
    warm: bool = False,
    shard: Shard | None = None,
) -> ContainerSpec:
    """The spec of attempt ``attempt`` of ``job``, checked out in ``src`` with its output
    folder ``out``: ``warm`` starts it before its slot frees (at the lowest CPU weight,
    waiting for its release file), ``shard`` runs one share of a split suite."""
    labels = {
        LABEL_INSTANCE: instance,
        LABEL_JOB: str(job.id),
        LABEL_ATTEMPT: str(attempt),
        LABEL_REPOSITORY: job.repository,
        LABEL_COMMIT: job.commit,
    }
    variables_ = {
        **variables,
        "CI": "true",
        "HOME": "/tmp",
        protocol.COMMIT: job.commit,
        protocol.ATTEMPT: str(attempt),
    }
    if job.rerun:
        variables_[protocol.ONLY] = f"{protocol.OUTPUT_DIR}/{protocol.ONLY_FILE}"
    if warm:
        labels[LABEL_WARM] = "1"
        variables_[protocol.RELEASE] = f"{protocol.OUTPUT_DIR}/{protocol.RELEASE_FILE}"
    if shard is not None:
        labels[LABEL_SHARD] = f"{shard.index}/{shard.count}"
        variables_.update({protocol.SHARD: f"{shard.index}/{shard.count}", protocol.SHARD_TRY: str(shard.tries)})
        if shard.claims is not None:
            variables_[protocol.SHARD_CLAIMS] = protocol.CLAIMS_DIR
    return ContainerSpec(
        name=container_name(instance, job.id, attempt, shard.index if shard else None),
        image=image.id,
        labels=labels,
        workspace=src.resolve(),
        output_dir=out.resolve(),
        user=user,
        memory=runner.memory,
        cpus=runner.cpus,
        pids=runner.pids,
        network=runner.network,
        log_max_bytes=runner.max_log_bytes,
        tmp_size=runner.tmp_size,
        disk=runner.disk,
        cpu_shares=WARM_CPU_SHARES if warm else None,
        variables=variables_,
        claims=shard.claims.resolve() if shard is not None and shard.claims is not None else None,
    )
