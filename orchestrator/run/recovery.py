"""Recovery after a restart: what the store and the engine show is turned into decisions.

Every job the store says is running is matched to its container by label:

- its current attempt's container runs or has exited -> **adopt** it (re-attach, or collect),
  unless the attempt was split across containers (run/shards.py): those are not re-attached;
- no such container, but complete result files of this attempt -> **adopt the files**
  (a crash came between ``result.json`` and the final state);
- nothing -> **re-queue** it as a new attempt, by the retry policy;

and every other container of this instance (an earlier attempt's, one never started, a
warm one never released, one whose job is no longer running) is **discarded**.
``plan`` decides without side effects; ``Recovery`` carries the decisions out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.backends.base import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_SHARD, ContainerState, Phase
from orchestrator.errors import EngineUnavailable
from orchestrator.models import Job, JobStatus
from orchestrator.run import warm
from orchestrator.run.conclude import conclude
from orchestrator.run.context import Context

log = logging.getLogger("orchestrator.run")


@dataclass(frozen=True)
class Adopt:
    job: Job
    container: ContainerState


@dataclass(frozen=True)
class AdoptFiles:
    job: Job
    done: Job  # the final job the files describe


@dataclass(frozen=True)
class Requeue:
    job: Job
    reason: str


@dataclass(frozen=True)
class Discard:
    container: ContainerState


Decision = Adopt | AdoptFiles | Requeue | Discard


def plan(
    running: list[Job],
    containers: list[ContainerState],
    *,
    released: Callable[[Job, ContainerState], bool],
    completed: Callable[[Job], Job | None],
    me: str | None = None,
) -> list[Decision]:
    """What to do with each running job and each container of this instance.
    ``released``: whether a warm container's tests began; ``completed``: the final job
    that complete result files of the current attempt describe, if any; ``me``: this
    dispatcher's name (a job another one ran, and nothing of it found here, says it was lost)."""
    by_job: dict[int, list[ContainerState]] = {}
    decisions: list[Decision] = []
    for state in containers:
        job_id = state.labels.get(LABEL_JOB, "")
        if job_id.isdigit():
            by_job.setdefault(int(job_id), []).append(state)
        else:
            decisions.append(Discard(state))
    for job in running:
        current = None
        for state in by_job.pop(job.id, []):
            if (
                current is None
                and state.labels.get(LABEL_ATTEMPT) == str(job.attempts)
                and not job.shards
                and LABEL_SHARD not in state.labels
                and state.phase is not Phase.CREATED
                and released(job, state)
            ):
                current = state
            else:
                decisions.append(Discard(state))
        if current is not None:
            decisions.append(Adopt(job, current))
        elif (done := completed(job)) is not None:
            decisions.append(AdoptFiles(job, done))
        else:
            reason = (
                "the dispatcher stopped while its shards ran: a split suite runs again whole"
                if job.shards
                else "the dispatcher stopped before its container ran"
                if job.container_id is None
                else f"container {job.container_id[:12]} is gone"
            )
            if job.dispatcher is not None and job.dispatcher != me:  # its engine went with it
                reason = f"dispatcher {job.dispatcher} lost: {reason}"
            decisions.append(Requeue(job, reason))
    decisions += [Discard(state) for states in by_job.values() for state in states]
    return decisions


class Recovery:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def reconcile(self, adopt: Callable[[Job, ContainerState], None], active: set[int]) -> None:
        """Carry out ``plan`` for this instance; ``adopt`` resumes a job's attempt. Then
        remove the workspaces no running job owns (``active``: jobs this process runs)."""
        ctx = self.ctx
        running = ctx.store.with_status(JobStatus.RUNNING)
        containers = ctx.backend.find({LABEL_INSTANCE: ctx.instance})
        released = lambda job, state: not warm.never_released(state, ctx.workspaces.get(job.id).out)  # noqa: E731
        decisions = plan(running, containers, released=released, completed=ctx.results.completed, me=ctx.store.holder)
        for decision in decisions:
            if isinstance(decision, Adopt):
                adopt(decision.job, decision.container)
            elif isinstance(decision, AdoptFiles):
                ctx.store.apply(decision.job, decision.done)
                ctx.workspaces.remove(decision.job.id)
                log.info(
                    "job %s: adopted the complete result files of attempt %s", decision.job.id, decision.job.attempts
                )
            elif isinstance(decision, Requeue):
                ctx.workspaces.remove(decision.job.id)
                conclude(ctx, decision.job, decision.reason)  # the same policy as a failure seen live
            else:
                self._discard(decision.container)
        alive = {job.id for job in running} | active
        for job_id in ctx.workspaces.job_ids():
            if job_id not in alive:
                ctx.workspaces.remove(job_id)
        ctx.workspaces.remove_discarded()

    def sweep(self, owned: Callable[[ContainerState], bool]) -> None:
        """Remove this instance's containers that no attempt in progress owns (left when
        the engine went away during a removal or a retry)."""
        try:
            for state in self.ctx.backend.find({LABEL_INSTANCE: self.ctx.instance}):
                if not owned(state):
                    self._discard(state)
        except EngineUnavailable as exc:
            log.warning("sweeping leftover containers failed: %s", exc)

    def _discard(self, state: ContainerState) -> None:
        log.info("removing leftover container %s", state.id[:12])
        self.ctx.backend.destroy(state.id)
