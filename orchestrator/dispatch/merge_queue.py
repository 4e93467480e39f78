"""The merge queue: a request to merge a branch into its target is tested as it will be
once merged, and the target is moved only to a commit whose job passed.

For the request at the head of a repository's queue, the *candidate* is the target's
current commit with the request put onto it (a merge commit, a rebase or the branch itself,
as ``merge_queue.strategy`` says), made in the orchestrator's mirror and tested as any
commit is. Up to ``depth`` requests behind it are tested at once, each on the candidate
ahead of it (Zuul's dependent pipeline): when the head's candidate passes, the target is
pushed to it, ``--force-with-lease`` from the commit it was made on, and the next
candidate, made on that one, is already tested or under way. A candidate that fails
rejects its request; those behind it were made on it, so they are made again without it.
A target that moved otherwise (a direct push) makes every candidate stale: they are made
again on where it is now. Nothing is ever pushed but a candidate that passed, made on the
commit the target is at (the lease checks that in the repository itself).

Every decision is taken from the store's rows (store/merges.py) and from the repository's
own answer to where the target is, at each step: a dispatcher that restarts, even killed
between a push and its record, carries on from there. A request is ``merging`` before its
push is made, and recovery asks the repository whether the push landed.

The steps run in a thread of their own (``start``), every STEP_EVERY seconds and at once
when the dispatcher says a job ended (``poke``): asking the repository where the target is,
making candidates and pushing never hold up the scheduling of jobs.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Sequence

from orchestrator.config import MergeQueueConfig, RepositoryConfig
from orchestrator.errors import InvalidTransition, MergeRefused, OrchestratorError, RepositoryError
from orchestrator.faults import crash_point
from orchestrator.models import MERGE, Job, JobStatus
from orchestrator.observe.mirror import Mirror, Mirrors
from orchestrator.store import NewCommit, Store
from orchestrator.store.merges import CANCELLED, MERGED, MERGING, QUEUED, REJECTED, TESTING, Merge

log = logging.getLogger("orchestrator.dispatch.merge_queue")

STEP_EVERY = 0.5  # seconds between two looks at the queues


class MergeQueue:
    def __init__(
        self,
        store: Store,
        repositories: Sequence[RepositoryConfig],
        mirrors: Mirrors,
        record: Callable[[str, list[NewCommit]], list[int]],
        ended: Callable[[Merge], None] = lambda _merge: None,
    ):
        """``record(repository, commits)``: queue the candidates' jobs (jobs.Arrivals, which
        gives each its Pythons); ``ended``: a request merged or rejected (its webhook)."""
        self.store = store
        self.queues = {r.name: r for r in repositories if r.merge_queue is not None}
        self.mirrors = mirrors
        self.record = record
        self.ended = ended
        self._next = 0.0
        self._asking: dict[str, str] = {}  # branch heads that asked for a merge, as last seen
        self._failing: set[str] = set()  # repositories whose last step could not reach them
        self._poked = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- its thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Step the queues in a thread of their own, until ``close`` (nothing to do without one)."""
        if not self.queues or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="merge-queue", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A job ended: step now (a candidate that passed is pushed at once)."""
        self._poked.set()

    def close(self, patience: float = 30.0) -> None:
        """Stop stepping (a push under way ends first: a stop in the middle is safe, but
        needless)."""
        self._closing.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(patience)
            self._thread = None

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self.advance(force=True)
            except Exception:  # a step that failed is taken again; the loop must not end
                log.exception("merge queue: a step failed")
            self._poked.wait(STEP_EVERY)
            self._poked.clear()

    # -- the dispatcher's step ----------------------------------------------------------

    def advance(self, force: bool = False) -> None:
        if not self.queues or (not force and time.monotonic() < self._next):
            return
        self._next = time.monotonic() + STEP_EVERY
        for name, repo in self.queues.items():
            try:
                self._requests_from_pushes(repo)
                if self.store.merges.open_requests(name):
                    self._advance(repo)
                self._failing.discard(name)
            except RepositoryError as exc:  # the repository away: the queue waits, losing nothing
                if name not in self._failing:
                    log.warning("merge queue of %s: %s", name, exc)
                self._failing.add(name)

    def busy(self) -> bool:
        """Requests still open in a queue that can move (``run --once`` waits for them)."""
        return any(self.store.merges.open_requests(name) for name in self.queues if name not in self._failing)

    # -- requests ------------------------------------------------------------------------

    def request(self, repository: str, branch: str, sha: str) -> tuple[Merge, bool]:
        """A request for ``branch`` at ``sha`` (resolved by the caller) to enter the target."""
        repo = self.queues[repository]
        assert repo.merge_queue is not None
        return self.store.merges.request(repository, branch, repo.merge_queue.target, sha)

    def _requests_from_pushes(self, repo: RepositoryConfig) -> None:
        """A branch matching ``merge_queue.branches`` that moved (as the mirror, which the
        observer fetches, has it) asks for its new head to be merged."""
        assert repo.merge_queue is not None
        mirror = self.mirrors[repo.name]
        if not mirror.cloned():
            return
        for branch, sha in mirror.branches().items():
            if branch == repo.merge_queue.target or not fnmatch.fnmatchcase(branch, repo.merge_queue.branches):
                continue
            key = f"{repo.name}\0{branch}"
            if self._asking.get(key) == sha:
                continue
            last = self.store.merges.last_for(repo.name, branch)
            if last is None or last.sha != sha:
                merge, changed = self.store.merges.request(repo.name, branch, repo.merge_queue.target, sha)
                if changed:
                    log.info("merge queue of %s: %s asks to enter %s at %s", repo.name, branch, merge.target, sha[:12])
            self._asking[key] = sha

    # -- one step of one queue -------------------------------------------------------------

    def _advance(self, repo: RepositoryConfig) -> None:
        queue = repo.merge_queue
        assert queue is not None
        mirror = self.mirrors[repo.name]
        url = queue.push_url or repo.url
        target = self._target(repo.name, queue, mirror, url)
        if target is None:
            return
        expected, testing = target, 0
        for merge in self.store.merges.open_requests(repo.name):
            if testing >= queue.depth:
                break
            if merge.state == TESTING and merge.base == expected and merge.candidate:
                verdict, why = self._verdict(merge)
                if verdict is None or expected != target:
                    # running, or ended behind the head: a failure there may be the fault of a
                    # request ahead; it counts once everything ahead merged (it is the head)
                    expected, testing = merge.candidate, testing + 1
                elif verdict:  # the head passed: the target moves to it
                    moved = self._push(mirror, url, queue.target, merge)
                    if moved is None:
                        return  # the target moved meanwhile: the next step makes every candidate again
                    expected = target = moved
                else:
                    self._reject(merge, why)
                continue
            candidate = self._candidate(queue, mirror, merge, expected)
            if candidate is None:
                continue  # refused, and said why
            job = self._job_of(repo.name, candidate, mirror)
            tested = self.store.merges.move(merge, TESTING, base=expected, candidate=candidate, job_id=job.id)
            if tested is None:
                return  # changed meanwhile (cancelled, or asked again): the next step sees it
            log.info(
                "merge queue of %s: %s tested as %s on %s (job %s)",
                repo.name,
                merge.branch,
                candidate[:12],
                expected[:12],
                job.id,
            )
            expected, testing = candidate, testing + 1

    def _target(self, repository: str, queue: MergeQueueConfig, mirror: Mirror, url: str) -> str | None:
        """Where the target branch is now, a push left half-done when we stopped settled
        first; None (and every waiting request refused) where the branch does not exist."""
        target = mirror.head_of(url, queue.target)
        requests = self.store.merges.open_requests(repository)
        if target is None:
            for merge in requests:
                if merge.state != MERGING:
                    self._reject(merge, f"the target branch {queue.target} does not exist")
            return None
        if not mirror.has_commit(target):  # moved since the observer's last fetch
            mirror.fetch()
        for merge in [m for m in requests if m.state == MERGING]:  # a push made, or about to be, when we stopped
            target = self._settle_push(mirror, url, queue.target, merge, target)
        return target

    def _candidate(self, queue: MergeQueueConfig, mirror: Mirror, merge: Merge, base: str) -> str | None:
        """The request's candidate made on ``base`` (one made on a base that is gone is
        dropped first); None where it cannot be made, the request refused saying why."""
        if not mirror.has_commit(merge.sha):
            mirror.fetch()
            if not mirror.has_commit(merge.sha):  # force-pushed away: nothing left to merge
                self._reject(merge, f"its commit {merge.sha[:12]} is no longer in the repository")
                return None
        if merge.state == TESTING:  # made on a base that is gone: made again
            self._drop_job(merge)
        try:
            return mirror.candidate(
                base,
                merge.sha,
                queue.strategy,
                f"Merge branch '{merge.branch}' into {queue.target}",
                (queue.committer_name, queue.committer_email),
            )
        except MergeRefused as exc:
            self._reject(merge, str(exc).replace("the target", queue.target))
        except RepositoryError as exc:  # the request's own commits git will not build on (a bad ident, say):
            self._reject(merge, f"its candidate could not be made: {exc}")  # never a queue stuck behind it
        return None

    def _verdict(self, merge: Merge) -> tuple[bool | None, str]:
        """Whether the candidate's jobs (one per Python) passed: None while one has not ended."""
        jobs = self.store.of_commit(merge.repository, merge.candidate or "")
        if not jobs:
            return False, f"its candidate {merge.candidate and merge.candidate[:12]} has no job"
        if not all(job.status.final for job in jobs):
            return None, ""
        failed = [job for job in jobs if job.status is not JobStatus.PASSED]
        if not failed:
            return True, ""
        job = failed[0]
        said = f": {job.message}" if job.message else ""
        counts = f" ({job.tests.failed} failed, {job.tests.errors} errors)" if job.tests else ""
        tests = self.store.tests.failed_in(job.id, job.attempts)
        named = f"; failing: {', '.join(tests)}" if tests else ""
        return False, f"its candidate {job.commit[:12]} {job.status.value} (job {job.id}){counts}{said}{named}"

    def _push(self, mirror: Mirror, url: str, branch: str, merge: Merge) -> str | None:
        """Move the target to the head's candidate that passed; where it is then, or None
        if it had moved (the request is queued again, to be made on where it is now)."""
        assert merge.candidate and merge.base
        merging = self.store.merges.move(merge, MERGING)
        if merging is None:
            return None
        crash_point("merge-before-push")
        try:
            mirror.push(url, merging.candidate or "", branch, merging.base or "")
        except RepositoryError as exc:
            now = mirror.head_of(url, branch)
            if now == merging.candidate:  # it landed all the same
                self._merged(merging)
                return now
            log.warning("merge queue: %s into %s: the push was refused (%s); again", merge.branch, branch, exc)
            self.store.merges.move(merging, QUEUED, base=None, candidate=None, job_id=None)
            return None
        crash_point("merge-after-push")
        self._merged(merging)
        return merging.candidate

    def _settle_push(self, mirror: Mirror, url: str, branch: str, merge: Merge, target: str) -> str:
        """A request left ``merging`` by a stop: merged if the target is at its candidate,
        pushed again if it is still at the candidate's base (its job passed: that was
        recorded first), else queued again. Where the target is then."""
        if target == merge.candidate:
            self._merged(merge)
            return target
        if target == merge.base:
            try:
                mirror.push(url, merge.candidate or "", branch, merge.base or "")
            except RepositoryError:
                pass
            else:
                self._merged(merge)
                return merge.candidate or target
        self.store.merges.move(merge, QUEUED, base=None, candidate=None, job_id=None)
        return mirror.head_of(url, branch) or target

    def _merged(self, merge: Merge) -> None:
        done = self.store.merges.move(merge, MERGED, message=None)
        if done is not None:
            log.info(
                "merge queue of %s: %s merged into %s as %s",
                done.repository,
                done.branch,
                done.target,
                (done.candidate or "")[:12],
            )
            self.ended(done)

    def _reject(self, merge: Merge, why: str) -> None:
        done = self.store.merges.move(merge, REJECTED, message=why)
        if done is not None:
            log.info("merge queue of %s: %s rejected: %s", done.repository, done.branch, why)
            self._drop_job(merge)
            self.ended(done)

    def _job_of(self, repository: str, candidate: str, mirror: Mirror) -> Job:
        """The candidate's job: a new one, or the one its commit has (a fast-forward's
        candidate is the branch's own head, which its push may have queued already)."""
        jobs = self.store.of_commit(repository, candidate)
        if not jobs:
            subject = mirror.subjects([candidate]).get(candidate, "")
            self.record(repository, [NewCommit(candidate, subject, (), trigger=MERGE)])
            jobs = self.store.of_commit(repository, candidate)
        for job in jobs:  # one this queue cancelled when it went stale, made again the same
            if job.status is JobStatus.CANCELLED and not job.branches:
                try:
                    self.store.move(job, JobStatus.QUEUED, message="a merge candidate again")
                except InvalidTransition:
                    pass
        jobs = self.store.of_commit(repository, candidate)
        if not jobs:
            raise OrchestratorError(f"no job could be queued for candidate {candidate[:12]}")
        return jobs[0]

    def _drop_job(self, merge: Merge) -> None:
        drop_job(self.store, merge)


def cancel(store: Store, merge: Merge, why: str = "cancelled") -> Merge | None:
    """Take an open request out of its queue; None if it cannot be (being pushed, or ended)."""
    if merge.state not in (QUEUED, TESTING):
        return None
    done = store.merges.move(merge, CANCELLED, message=why)
    if done is not None:
        drop_job(store, merge)
    return done


def drop_job(store: Store, merge: Merge) -> None:
    """A stale, rejected or cancelled candidate's job, if it is only the queue's (on no
    branch): cancelled if queued, stopped if running, so that it takes no slot for a
    result nobody will use."""
    for job in store.of_commit(merge.repository, merge.candidate or ""):
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and not job.branches:
            try:
                store.request_cancel(job)
            except InvalidTransition:
                pass
