"""Automatic bisection: when coalescing (coalesce.py) skipped commits and the newest one
failed right after a commit of its branch that passed, the skipped range is tested by
halves until the first failing commit is named; then that commit is tested once more
before it is named (a failure that does not repeat is flaky: no culprit, and it says so).

The state of each bisection is a row of the store (store/bisections.py: its first-parent
commits, the known-good index ``low``, the known-bad index ``high``, the commit under test),
and each step is taken from what the store says, so a dispatcher that restarts in the
middle carries on from there. Its jobs run at BISECT_PRIORITY, after every new push, and a new
push does not cancel it. At most ceil(log2(range)) + 1 jobs: the halving, and the re-run.
A commit on several Pythons is bisected in the variant that failed (its bad job's Python),
and the culprit is named for that variant.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from orchestrator.errors import InvalidTransition
from orchestrator.models import BISECT_PRIORITY, BISECTION, NORMAL_PRIORITY, Job, JobStatus, utcnow
from orchestrator.store import Store
from orchestrator.store.bisections import ABANDONED, FLAKY, FOUND, SEARCH, VERIFY, Bisection

__all__ = ["ABANDONED", "FLAKY", "FOUND", "SEARCH", "VERIFY", "Bisection", "Bisector"]

log = logging.getLogger("orchestrator.dispatch.bisection")


class Bisector:
    def __init__(
        self,
        store: Store,
        coalescing: frozenset[str],
        first_parent: Callable[[str, str, str], list[str]],
        named: Callable[[Job, Bisection], None] = lambda _job, _bisection: None,
    ):
        """``first_parent(repository, good, bad)``: the commits between (mirror.py);
        ``named(job, bisection)``: told when a bisection ends with a culprit."""
        self.store = store
        self.coalescing = coalescing
        self.first_parent = first_parent
        self.named = named
        self._noticed: deque[Job] = deque()  # finished jobs a bisection may start from (from attempt threads)

    def noticed(self, job: Job) -> None:
        """A job ended (any thread): a failure of a coalescing repository is considered at
        the next ``advance``."""
        if job.status is JobStatus.FAILED and job.repository in self.coalescing:
            self._noticed.append(job)

    def busy(self) -> bool:
        """Whether there is a failure to consider or a bisection under way (cheap when no
        repository coalesces)."""
        return bool(self.coalescing) and (bool(self._noticed) or bool(self.running()))

    # -- starting one ------------------------------------------------------------------

    def consider(self, job: Job) -> Bisection | None:
        """Start a bisection if ``job`` (final) is a coalesced newest commit that failed
        right after a pass on one of its branches, with untested commits between."""
        if (
            job.repository not in self.coalescing
            or job.priority != NORMAL_PRIORITY
            or job.status is not JobStatus.FAILED
        ):
            return None
        for branch in job.branches:
            last = self.store.latest_on_branch(job.repository, branch, final=True, before=job.id, python=job.python)
            if last is None or last.status is not JobStatus.PASSED:
                continue
            commits = self.first_parent(job.repository, last.commit, job.commit)
            if len(commits) < 2 or commits[-1] != job.commit:
                continue
            return self._insert(job, branch, last.commit, commits)
        return None

    def _insert(self, job: Job, branch: str, good: str, commits: list[str]) -> Bisection | None:
        started = self.store.bisections.start(job, branch, good, commits)
        if started is not None:
            log.info(
                "%s/%s: bisecting %d commits after %s to find where it began to fail",
                job.repository,
                branch,
                len(commits),
                good[:12],
            )
        return started

    def catch_up(self) -> None:
        """After a restart: the newest tested job of each branch, in case the process
        stopped between its failure and the start of its bisection."""
        for repository in sorted(self.coalescing):
            for branch in sorted(self.store.heads(repository) or {}):
                newest = self.store.latest_on_branch(repository, branch, final=True)
                for job in self.store.of_commit(repository, newest.commit) if newest is not None else ():
                    if job.status is JobStatus.FAILED and self.of_job(job.id) is None:
                        self.consider(job)

    # -- taking steps ------------------------------------------------------------------

    def advance(self) -> None:
        """Start the bisections the failures noticed since call for, then take one step of
        every bisection whose awaited result is in: in the scheduling thread, one at a
        time. Nothing at all (not even a query) unless a repository coalesces."""
        if not self.coalescing:
            return
        while self._noticed:
            self.consider(self._noticed.popleft())
        for bisection in self.running():
            try:
                self._advance(bisection)
            except InvalidTransition as exc:  # a job changed underneath (a user retried it): next time
                log.debug("bisection %s: %s", bisection.id, exc)

    def _advance(self, b: Bisection) -> None:
        probe = b.probe
        if probe is not None:
            job = self.store.by_commit(b.repository, probe, self._python(b))
            if job is None:
                self._end(b, ABANDONED, reason=f"the job of {probe[:12]} is gone")
                return
            if not job.status.final or job.status is JobStatus.SKIPPED:
                return None
            if b.phase == VERIFY:
                return self._verified(b, job)
            index = b.commits.index(probe)
            if job.status is JobStatus.PASSED:
                b = replace(b, low=index, probe=None)
            elif job.status is JobStatus.FAILED:
                b = replace(b, high=index, probe=None)
            else:
                self._end(
                    b,
                    ABANDONED,
                    reason=f"{probe[:12]} ended {job.status.value}: its tests gave no verdict to bisect on",
                )
                return
        if b.high - b.low > 1:
            return self._probe(b, SEARCH, b.commits[(b.low + b.high) // 2])
        return self._probe(b, VERIFY, b.commits[b.high])

    def _probe(self, b: Bisection, phase: str, sha: str) -> None:
        """Test ``sha``: a commit already tested in the search (not for the re-run) is read
        as it is; a skipped one is queued at the bisection's priority."""
        job = self.store.by_commit(b.repository, sha, self._python(b))
        if job is None:
            self._end(b, ABANDONED, reason=f"{sha[:12]} has no job")
            return
        started = 0
        if phase == VERIFY or job.status in (
            JobStatus.SKIPPED,
            JobStatus.CANCELLED,
            JobStatus.ERROR,
            JobStatus.TIMED_OUT,
        ):
            if job.status.final:
                self.store.move(
                    job,
                    JobStatus.QUEUED,
                    priority=BISECT_PRIORITY,
                    trigger=BISECTION,
                    message=f"bisecting {b.good[:12]}..{b.commits[-1][:12]}",
                )
                started = 1
        self._save(replace(b, phase=phase, probe=sha, jobs=b.jobs + started))

    def _python(self, b: Bisection) -> str:
        """The variant a bisection searches: its failing job's Python ("": the one)."""
        bad = self.store.get(b.bad_job)
        return bad.python if bad is not None else ""

    def _verified(self, b: Bisection, job: Job) -> None:
        if job.status is JobStatus.FAILED:
            found = self._end(b, FOUND, culprit=job.commit)
            marked = self.store.apply(job, replace(job, culprit=found.document()))
            log.info(
                "%s/%s: %s is the first failing commit (%d jobs)", b.repository, b.branch, job.commit[:12], found.jobs
            )
            self.named(marked, found)
        elif job.status is JobStatus.PASSED:
            self._end(
                b,
                FLAKY,
                reason=f"{job.commit[:12]} failed, then passed when tested again: "
                "the failure is flaky, no culprit is named",
            )
        else:
            self._end(b, ABANDONED, reason=f"the re-run of {job.commit[:12]} ended {job.status.value}")

    def _end(self, b: Bisection, phase: str, culprit: str | None = None, reason: str | None = None) -> Bisection:
        ended = replace(b, phase=phase, culprit=culprit, reason=reason, probe=None, finished_at=utcnow())
        if phase != FOUND:
            log.warning("%s/%s: bisection %s ended %s: %s", b.repository, b.branch, b.id, phase, reason)
        self._save(ended)
        return ended

    # -- the table ---------------------------------------------------------------------

    def running(self) -> list[Bisection]:
        return self.store.bisections.running()

    def get(self, bisection_id: int) -> Bisection | None:
        return self.store.bisections.get(bisection_id)

    def of_job(self, job_id: int) -> Bisection | None:
        """The bisection started by the failure of job ``job_id``, if any."""
        return self.store.bisections.of_job(job_id)

    def _save(self, b: Bisection) -> None:
        self.store.bisections.save(b)
