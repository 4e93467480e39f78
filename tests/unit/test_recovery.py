"""Recovery after a restart, on the in-memory backend: each running job and each leftover
container gets the right decision, and carrying them out leaves nothing behind. The real
crashes are in tests/faults/test_crash.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.backends.base import LABEL_ATTEMPT, LABEL_JOB, LABEL_WARM, ContainerState, Phase
from orchestrator.models import Job, JobStatus, utcnow
from orchestrator.run.recovery import Adopt, AdoptFiles, Discard, Recovery, Requeue, plan
from tests.fakes import Bed, FakeBackend, spec_of


def _job(job_id: int, attempts: int = 1, container: str | None = None) -> Job:
    return Job(
        id=job_id,
        repository="demo",
        commit=f"{job_id:040x}",
        branches=("main",),
        subject="",
        status=JobStatus.RUNNING,
        queued_at=utcnow(),
        attempts=attempts,
        container_id=container,
    )


def _box(name: str, job: int | str, attempt: int, phase: Phase = Phase.RUNNING, **labels: str) -> ContainerState:
    return ContainerState(name, phase, {LABEL_JOB: str(job), LABEL_ATTEMPT: str(attempt), **labels})


def test_plan_decides_for_every_job_and_container() -> None:
    running = [_job(1), _job(2, container="c2"), _job(3, attempts=2, container="c3"), _job(4, container="c4"), _job(5)]
    containers = [
        _box("c1", 1, 1),  # its job's current attempt: adopted
        _box("c3-old", 3, 1, Phase.EXITED),  # an earlier attempt's
        _box("c3", 3, 2, Phase.EXITED),  # exited: adopted, to be collected
        _box("c4", 4, 1, Phase.CREATED),  # never started: its job re-queued
        _box("c5", 5, 1, **{LABEL_WARM: "1"}),  # warm, never released: as if gone
        _box("c9", 9, 1),  # its job is no longer running
        _box("cx", "junk", 1),  # not ours to understand
    ]
    done2 = dataclasses.replace(running[1], status=JobStatus.PASSED)
    decisions = plan(
        running,
        containers,
        released=lambda job, state: state.id != "c5",
        completed=lambda job: done2 if job.id == 2 else None,
    )
    adopted = {d.job.id: d.container.id for d in decisions if isinstance(d, Adopt)}
    assert adopted == {1: "c1", 3: "c3"}
    assert [d.job.id for d in decisions if isinstance(d, AdoptFiles)] == [2]
    requeued = {d.job.id: d.reason for d in decisions if isinstance(d, Requeue)}
    assert requeued == {4: "container c4 is gone", 5: "the dispatcher stopped before its container ran"}
    assert sorted(d.container.id for d in decisions if isinstance(d, Discard)) == ["c3-old", "c4", "c5", "c9", "cx"]


def test_reconcile_adopts_requeues_and_cleans(tmp_path: Path) -> None:
    bed = Bed(tmp_path, FakeBackend())
    job = bed.store.claim_next()
    running = bed.backend.adopt(spec_of(bed, job))
    job = bed.store.apply(job, dataclasses.replace(job, container_id=running.id))
    stray = bed.backend.adopt(
        dataclasses.replace(bed.backend.specs[0], labels={**bed.backend.specs[0].labels, LABEL_JOB: "77"})
    )
    (bed.config.state_dir / "work" / "55").mkdir()  # a checkout a crash left
    adopted: list[tuple[int, str]] = []
    Recovery(bed.ctx).reconcile(adopt=lambda j, state: adopted.append((j.id, state.id)), active=set())
    assert adopted == [(job.id, running.id)]
    assert bed.backend.destroyed == [stray.id]
    assert sorted(p.name for p in (bed.config.state_dir / "work").iterdir()) == [str(job.id)]
    bed.close()


def test_a_job_another_dispatcher_ran_and_nothing_of_it_here_was_lost_with_it() -> None:
    """Several dispatchers on one store, each with its own engine: the new active finds
    nothing of the lost one's running job on its engine, and says whose it was."""
    theirs = dataclasses.replace(_job(1, container="c1"), dispatcher="alpha")
    mine = dataclasses.replace(_job(2, container="c2"), dispatcher="beta")
    decisions = plan([theirs, mine], [], released=lambda job, state: True, completed=lambda job: None, me="beta")
    requeued = {d.job.id: d.reason for d in decisions if isinstance(d, Requeue)}
    assert requeued == {1: "dispatcher alpha lost: container c1 is gone", 2: "container c2 is gone"}
