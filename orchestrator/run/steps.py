"""The steps every attempt takes, single or split: the time each phase took, the commit
checked out, what its containers run in, the final state committed and told, and what
it leaves removed off the critical path."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.backends.base import ContainerSpec
from orchestrator.backoff import Backoff
from orchestrator.environment.setup import Setup, setup
from orchestrator.errors import EngineUnavailable, ImageMissing, InfrastructureError, NotActive
from orchestrator.faults import crash_point
from orchestrator.models import Job
from orchestrator.results import rerun
from orchestrator.run.context import Context
from orchestrator.run.watch import Abandoned
from orchestrator.store.db import errors as store_errors
from orchestrator.workspace import Workspace, remove_tree
from runner_image.orchestrator_protocol import ONLY_FILE

log = logging.getLogger("orchestrator.run")
T = TypeVar("T")


class Timings(dict[str, float]):
    """Seconds per phase of an attempt, in result.json (``checkout_s``, ``run_s`` ...)."""

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self[f"{name}_s"] = round(time.perf_counter() - began, 4)


def checkout(ctx: Context, job: Job, ws: Workspace) -> None:
    """Exactly ``job``'s commit into ``ws`` (fetched first if the mirror lacks it), handed
    over to the container's user."""
    mirror = ctx.mirrors[job.repository]
    if not mirror.has_commit(job.commit):
        mirror.fetch()
    mirror.checkout(job.commit, ws.src)
    write_inputs(job, ws.out)
    ctx.workspaces.hand_over(ws)


def checkout_and_environment(
    ctx: Context, job: Job, timings: Timings, on_stage: Callable[[str], None]
) -> tuple[Workspace, Setup]:
    """A fresh workspace with the commit checked out, and what its containers run in (built
    now if need be, ``on_stage`` told what it is doing meanwhile)."""
    with timings.measure("checkout"):
        ws = ctx.workspaces.prepare(job.id)
        checkout(ctx, job, ws)
    with timings.measure("environment"):
        return ws, environment(ctx, job, ws.src, on_stage)


def record(ctx: Context, job: Job, **facts: Any) -> Job:
    """Facts about a running attempt, committed before they are acted on (waiting for a
    store that is away, as every write of an attempt does)."""
    return patiently(ctx, lambda: ctx.store.apply(job, dataclasses.replace(job, **facts)))


def write_inputs(job: Job, out: Path) -> None:
    """What the container reads beside the checkout, in its output folder: the tests to keep
    of a re-run of the failed ones (protocol.ONLY_FILE)."""
    if (only := rerun.only_file(job)) is not None:
        (out / ONLY_FILE).write_bytes(only)


def environment(ctx: Context, job: Job, src: Path, on_build: Callable[[str], None]) -> Setup:
    """What the commit checked out in ``src`` runs in (its environment built now if need be)."""
    return setup(
        ctx.config,
        ctx.backend,
        ctx.environments,
        job.repository,
        src,
        ctx.mirrors[job.repository].version(job.commit),
        on_build=on_build,
        python=job.python,
    )


def prepare(ctx: Context, spec: ContainerSpec, runs_in: Setup) -> str:
    """The container made, not started. An environment image removed between its lookup
    and now (pruned by another repository's build or by an operator) is not the user's to
    build: the attempt is retried, and the next one builds the environment again."""
    try:
        return ctx.backend.prepare(spec)
    except ImageMissing:
        if runs_in.document is None:
            raise
        raise InfrastructureError(
            f"environment image {runs_in.image.tag} was removed before the job's container was made"
        ) from None


STORE_PATIENCE = (0.2, 5.0)  # the first and the longest wait between tries of a store that is away


def patiently(ctx: Context, write: Callable[[], T]) -> T:
    """``write`` to the store, tried again while the store is away (PostgreSQL restarted, a
    network cut), for as long as it takes: what the attempt knows is kept, and its container
    goes on. Leaving (``ctx.abandon``), or no longer the active dispatcher, ends the waiting."""
    backoff = Backoff(*STORE_PATIENCE)
    while True:
        try:
            return write()
        except store_errors() as exc:
            log.warning("the store does not answer (%s); trying again", str(exc).strip().splitlines()[0][:200])
        except NotActive:
            if not ctx.store.still_active():
                raise
            log.warning("the lease is being renewed; trying again")  # it expired while the store was away
        if ctx.abandon.wait(backoff.next()):
            raise Abandoned() from None


def finish(ctx: Context, job: Job, done: Job) -> Job:
    """The final state committed (its files are written before), then told."""
    job = patiently(ctx, lambda: ctx.store.apply(job, done))
    crash_point("job-finished")
    ctx.ended(job)
    log.info("job %s: %s %s %s", job.id, job.commit[:12], job.status.value, job.message or "")
    return job


def clean_up(ctx: Context, job_id: int, containers: Sequence[str]) -> None:
    """Set the containers and the checkout aside for removal in the background, so that
    the slot is free for the next job at once; what a crash leaves, recovery removes."""
    trash = ctx.workspaces.discard(job_id)
    ctx.cleaner.submit(remove_leftovers, ctx, list(containers), trash, job_id)


def clean_up_quietly(ctx: Context, job_id: int, containers: Sequence[str]) -> None:
    """``clean_up`` after an attempt that failed: what cannot be set aside now, recovery removes."""
    try:
        clean_up(ctx, job_id, containers)
    except Exception as exc:
        log.warning("job %s: clean-up incomplete: %s", job_id, exc)


def remove_leftovers(ctx: Context, containers: list[str], trash: Path | None, job_id: int) -> None:
    """Off the critical path (the cleaner's thread); what the engine keeps now, recovery's
    sweep removes later."""
    for container_id in containers:
        try:
            ctx.backend.destroy(container_id)
        except EngineUnavailable as exc:
            log.warning("job %s: container %s not removed yet (%s)", job_id, container_id[:12], exc)
    if trash is not None:
        remove_tree(trash)
