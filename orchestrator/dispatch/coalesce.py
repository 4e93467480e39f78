"""Which queued job runs next, with coalescing: for a repository with ``coalesce: true``,
when several commits of a branch wait, only the newest is tested (with all of its
variants, one per Python), and the older ones end ``skipped`` ("covered by <sha>"), which a
bisection may test later (bisection.py).

Every repository without it keeps the plain order: highest priority first, then oldest.
Only pushes coalesce: a bisection's jobs (a lower priority), a user's, a schedule's and the
merge queue's are never coalesced, and never cover anything (a nightly run of a branch's head
must not skip the commits pushed before it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.errors import InvalidTransition
from orchestrator.models import NORMAL_PRIORITY, PUSH, Job, JobStatus
from orchestrator.store import Store

log = logging.getLogger("orchestrator.dispatch.coalesce")


class Picker:
    """Which queued job runs next (the store is the queue): ``pick`` it (without taking it:
    for a warm start), ``claim`` it."""

    def __init__(self, store: Store, coalescing: frozenset[str], skipped: Callable[[Job], None] = lambda _job: None):
        self.store = store
        self.coalescing = coalescing
        self.skipped = skipped  # told of each job ended skipped (its result files are written)

    def _coalesces(self, job: Job) -> bool:
        return (
            job.repository in self.coalescing
            and job.priority == NORMAL_PRIORITY
            and job.trigger == PUSH
            and bool(job.branches)
        )

    def pick(self, besides: frozenset[int] = frozenset()) -> Job | None:
        """The job to run next, not counting ``besides`` (already started warm) nor the
        older commits those will cover."""
        excluded = set(besides)
        for job_id in besides:
            job = self.store.get(job_id)
            if job is not None and self._coalesces(job):
                excluded |= {older.id for older in self._older(job)}
        job = self.store.next_queued(frozenset(excluded))
        if job is None or not self._coalesces(job):
            return job
        newer = [j for j in self._pushes(job) if j.id not in excluded]
        if not newer:
            return job
        return next(j for j in newer if j.commit == newer[-1].commit)  # the newest commit's first variant

    def claim(self, job: Job, spare: frozenset[int] = frozenset()) -> Job | None:
        """Claim ``job`` (None if it changed meanwhile); first, with coalescing, end the
        older queued commits of its branches ``skipped``, but for ``spare`` (warm ones).
        Skipped before the claim: a crash between leaves the newest queued, never an
        older commit skipped for a newer one that will not run."""
        if self._coalesces(job):
            for older in self._older(job):
                if older.id not in spare:
                    self._skip(older, job)
        return self.store.claim(job)

    def claim_next(self, spare: frozenset[int] = frozenset()) -> Job | None:
        while (job := self.pick(spare)) is not None:
            claimed = self.claim(job, spare)
            if claimed is not None:
                return claimed
        return None

    def _older(self, job: Job) -> list[Job]:
        """The older commits ``job`` covers: every variant of each (never ``job``'s own commit's)."""
        return [j for j in self._pushes(job) if j.id < job.id and j.commit != job.commit]

    def _pushes(self, job: Job) -> list[Job]:
        """The pushed commits queued on ``job``'s branches, oldest first."""
        return [
            j for j in self.store.queued_on_branches(job.repository, job.branches, NORMAL_PRIORITY) if j.trigger == PUSH
        ]

    def _skip(self, older: Job, newest: Job) -> None:
        try:
            skipped = self.store.move(older, JobStatus.SKIPPED, message=f"covered by {newest.commit[:12]}")
        except InvalidTransition as exc:  # cancelled or claimed meanwhile: no longer ours to skip
            log.debug("job %s not skipped: %s", older.id, exc)
            return
        self.skipped(skipped)
