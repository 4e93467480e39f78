"""How an attempt ends when its container gave no verdict: the retry policy re-queues it,
or it ends ``error`` with result files that say why (and the state is recorded even when
those files cannot be written). Used live by an attempt, and by recovery after a restart."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from orchestrator.environment.settings import EnvironmentBroken
from orchestrator.errors import ImageMissing, InfrastructureError, InvalidTransition
from orchestrator.models import Job, JobStatus, after_infrastructure_failure, transition, utcnow
from orchestrator.run.context import Context

log = logging.getLogger("orchestrator.run")


def conclude(
    ctx: Context,
    job: Job,
    reason: str,
    final: bool = False,
    container_id: str | None = None,
    environment_log: Path | None = None,
    timings: dict[str, float] | None = None,
) -> Job:
    """End a running attempt that got no verdict from its container: re-queued by the
    retry policy, or (retries spent, or ``final``: the image is missing) ``error`` with
    result files that say why."""
    now = utcnow()
    if final:
        done = transition(job, JobStatus.ERROR, now, message=reason, container_id=container_id)
    else:
        done = after_infrastructure_failure(job, ctx.config.retries, reason, now, container_id=container_id)
    if done.status is JobStatus.QUEUED:
        log.warning("job %s: attempt %s failed (%s); re-queued", job.id, job.attempts, reason)
        return ctx.store.apply(job, done)
    try:
        ctx.results.write_without_run(done, ctx.store.attempt_history(job.id), environment_log, timings)
    except OSError as exc:  # the final state is recorded all the same, and says so
        done = dataclasses.replace(done, message=f"{done.message} (no result files: {os_reason(exc)})")
    done = ctx.store.apply(job, done)
    ctx.ended(done)
    log.error("job %s: %s error: %s", done.id, done.commit[:12], done.message)
    return done


def os_reason(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


def after(
    ctx: Context, job: Job, exc: Exception, container_id: str | None, timings: dict[str, float] | None = None
) -> Job:
    """How an attempt ends when ``exc`` escaped it: what the commit declares that cannot be
    built, or a missing image, ends it ``error`` (not retried); an infrastructure failure
    is retried by the policy; anything else is a bug, logged, that must not lose the job.
    If the store's copy of the job moved on from ``job`` meanwhile, that copy is concluded,
    while it is still this attempt's."""
    if isinstance(exc, ImageMissing):
        reason, final, environment_log = str(exc), True, None
    elif isinstance(exc, EnvironmentBroken):
        reason, final, environment_log = str(exc), True, exc.log_path
    elif isinstance(exc, InfrastructureError):
        reason, final, environment_log = str(exc), False, None
    else:
        log.error("job %s: internal error", job.id, exc_info=exc)
        reason, final, environment_log = f"internal error: {type(exc).__name__}: {exc}", False, None

    def end(current: Job) -> Job:
        return conclude(
            ctx,
            current,
            reason,
            final=final,
            container_id=container_id or current.container_id,
            environment_log=environment_log,
            timings=timings,
        )

    try:
        return end(job)
    except InvalidTransition:
        fresh = ctx.store.get(job.id)
        if fresh is None or fresh.status is not JobStatus.RUNNING or fresh.attempts != job.attempts:
            log.warning(
                "job %s: not concluded (%s): the store has it %s",
                job.id,
                reason,
                fresh.status.value if fresh else "gone",
            )
            return fresh or job
        return end(fresh)
