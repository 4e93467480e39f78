"""How an attempt ends when its container gave no verdict: the retry policy re-queues it,
or it ends ``error`` with result files that say why (and the state is recorded even when
those files cannot be written). Used live by an attempt, and by recovery after a restart."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from orchestrator.models import Job, JobStatus, after_infrastructure_failure, transition, utcnow
from orchestrator.run.context import Context

log = logging.getLogger("orchestrator.run")


def conclude(ctx: Context, job: Job, reason: str, final: bool = False, container_id: str | None = None,
             environment_log: Path | None = None, timings: dict[str, float] | None = None) -> Job:
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
    ctx.finished(done)
    log.error("job %s: %s error: %s", done.id, done.commit[:12], done.message)
    return done


def os_reason(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
