"""What an attempt does once its containers have ended, before its final state is
committed: the verdict (the container's end and its report), the artifacts, the test
history, and the result files, ``result.json`` last. Shared by the single attempt
(attempt.py) and the split one (shards.py)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from orchestrator.backends.base import ContainerState
from orchestrator.errors import ResultsUnwritable
from orchestrator.faults import crash_point
from orchestrator.models import Job, transition, utcnow
from orchestrator.results import artifacts, history, quarantine, rerun, search
from orchestrator.results.report import Report
from orchestrator.results.verdict import Kill, judge
from orchestrator.run import steps
from orchestrator.run.conclude import os_reason
from orchestrator.run.context import Context
from orchestrator.run.steps import Timings
from orchestrator.store.db import errors as store_errors

log = logging.getLogger("orchestrator.run")


def reruns(ctx: Context, repository: str) -> int:
    """How many re-runs of failed tests the entrypoint was asked for: a report's re-run
    suites count up to that many (Report.suites)."""
    repo = ctx.config.repository(repository)
    return repo.rerun_failures if repo else 0


def verdict(
    ctx: Context,
    job: Job,
    final: ContainerState,
    killed: Kill | None,
    started: datetime,
    report: Report,
    log_truncated: bool,
    log_head: bytes = b"",
) -> Job:
    """The job as its one container ended it (not yet saved)."""
    counted = reruns(ctx, job.repository)
    status, message = judge(ctx.config.runner, final, killed, report, log_head, counted)
    done = transition(
        job,
        status,
        utcnow(),
        exit_code=final.exit_code,
        message=message,
        tests=report.counts(counted),
        log_truncated=log_truncated,
        flaky=tuple(report.flaky(counted)),
        started_at=started,
        finished_at=final.finished_at or utcnow(),
        node=final.node or job.node,
    )
    return settled(ctx, done, report)


def settled(ctx: Context, done: Job, report: Report) -> Job:
    """A judged job as the user's controls make it: a re-run of the failed tests counted
    with the suite's other outcomes (rerun.py), then quarantined failures forgiven
    (quarantine.py)."""
    done = rerun.combined(done)
    counted = reruns(ctx, done.repository)
    if not report.failing(counted):  # nothing to forgive: the quarantine is not asked
        return done
    return quarantine.judged(done, report, counted, ctx.store.quarantine.tests(done.repository))


def with_artifacts(ctx: Context, done: Job, root: Path, workspaces: list[tuple[Path, str]]) -> tuple[Job, Path | None]:
    """What the suite left for download, copied aside (artifacts.py) under ``root``, each
    workspace's into its folder ("": the top; a shard's: ``shard-<k>``), and the coverage of
    their reports: read on the host, so not on a backend whose tasks write elsewhere.
    Whatever an artifact looks like, it never changes the verdict."""
    if not ctx.backend.shares_workspace:
        return done, None
    try:
        return _collect_artifacts(ctx, done, root, workspaces)
    except Exception as exc:
        log.exception("job %s: artifacts not collected", done.id)
        return dataclasses.replace(
            done, artifacts={"files": [], "refused": [f"not collected: {type(exc).__name__}"], "bytes": 0}
        ), None


def _collect_artifacts(
    ctx: Context, done: Job, root: Path, workspaces: list[tuple[Path, str]]
) -> tuple[Job, Path | None]:
    repo = ctx.config.repository(done.repository)
    staged = root / "artifacts"
    shutil.rmtree(staged, ignore_errors=True)
    found = artifacts.Collected()
    for src, under in workspaces:
        if src.is_dir():
            found.add(artifacts.collect(src, staged / under, list(repo.artifacts) if repo else []), under)
    reports = [(src, staged / under) for src, under in workspaces]
    covered = artifacts.coverage(*reports[0]) if len(reports) == 1 else artifacts.coverage_of_shards(reports)
    return dataclasses.replace(done, coverage=covered, artifacts=found.document()), staged


def save(
    ctx: Context,
    done: Job,
    report: Report,
    write_log: Callable[[BinaryIO], None],
    timings: Timings,
    staged: Path | None,
    shard_logs: Sequence[Callable[[BinaryIO], None]] = (),
) -> None:
    """The test history, then the result files (``result.json`` last), before the final
    state is committed."""
    if ctx.store.holder is not None:  # several dispatchers: only the active writes, files included
        steps.patiently(ctx, ctx.store.check_active)
    with timings.measure("history"):  # before the files, so that result.json has its time
        try:
            history.record(ctx.store, done, report, reruns(ctx, done.repository))
        except store_errors() as exc:  # a store that refuses them costs the history, not the job
            log.warning("job %s: test history not recorded (%s)", done.id, exc)
    built = ctx.environments.log_of(done.repository, done.environment) if ctx.environments else None
    if ctx.store.holder is not None:  # and still, just before the files
        steps.patiently(ctx, ctx.store.check_active)
    try:
        ctx.results.write(
            done,
            write_log,
            report.data,
            ctx.store.attempt_history(done.id),
            timings,
            built,
            staged,
            shard_logs=shard_logs,
        )
    except OSError as exc:
        raise ResultsUnwritable(f"results could not be written: {os_reason(exc)}") from None
    with timings.measure("index"):  # after result.json: its timings do not hold this one
        search.index(ctx.store, done, ctx.results.path(done, "output.log"), report, ctx.config.search.log_mb)
    crash_point("result-written")
