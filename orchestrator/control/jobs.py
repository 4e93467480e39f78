"""``LocalJobs``: the operations of the port (port.py) on this machine's store, in the
dispatcher's own process or a command beside it: submit, poll, list, show, retry, cancel,
read the log, the merge queue's requests, and an operator's controls (controls.py)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import pythons
from orchestrator.backends.base import Backend, container_name
from orchestrator.config import Config, RepositoryConfig
from orchestrator.control.controls import Controls
from orchestrator.control.port import Document, JobRef
from orchestrator.errors import Conflict, RepositoryError, UnknownCommit, UsageError
from orchestrator.models import MANUAL, MANUAL_PRIORITY, Job, JobStatus, iso
from orchestrator.observe.mirror import Mirrors
from orchestrator.results import rerun, variants
from orchestrator.results.files import ResultFiles, result_document
from orchestrator.store import NewCommit, Store
from orchestrator.store.db import errors as store_errors

if TYPE_CHECKING:
    from orchestrator.observe.observer import Observer
    from orchestrator.results.insight import Insight

log = logging.getLogger("orchestrator.control.jobs")


class Arrivals:
    """Where commits found arrive: the store, and a wake-up for the dispatcher (when it
    runs in this process). This process's observer sends here, and so does an observer on
    another machine, through the HTTP API."""

    def __init__(
        self,
        store: Store,
        wake: Callable[[], None] = lambda: None,
        variants: Callable[[str, str], tuple[str, ...]] = lambda _repository, _sha: ("",),
    ):
        """``variants(repository, sha)``: the Pythons a commit runs on (variants.py)."""
        self.store, self.wake, self.variants = store, wake, variants

    def heads(self, repository: str) -> dict[str, str] | None:
        return self.store.heads(repository)

    def record_commits(
        self, repository: str, commits: list[NewCommit], heads: dict[str, str] | None = None
    ) -> list[int]:
        commits = [dataclasses.replace(c, pythons=self.variants(repository, c.sha)) for c in commits]
        created = self.store.record_commits(repository, commits, heads)
        if created:
            self.wake()
        return created


class LocalJobs(Controls):
    """The operations on this machine's store, with the parts service.py gives it: the
    repositories' mirrors, the observer (``poll``, health), the insight (the pictures'
    reads), where commits arrive, and ``backend``, which reaches the engine for live logs
    of running jobs (a callable, so that a command that needs no engine never loads its
    client)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        mirrors: Mirrors,
        observer: Callable[[], Observer],
        insight: Callable[[], Insight],
        arrivals: Arrivals,
        backend: Callable[[], Backend] | None = None,
    ):
        self.config, self.store, self.mirrors = config, store, mirrors
        self._observer, self._insight, self.arrivals, self.backend = observer, insight, arrivals, backend
        self.results = ResultFiles(config.results_dir)
        self.role: Callable[[], dict[str, Any]] | None = None  # this dispatcher's place among several (leadership.py)

    @cached_property
    def observer(self) -> Observer:
        """The process's one observer (``poll``, health), made when first used: a command
        that polls nothing never loads it."""
        return self._observer()

    @cached_property
    def insight(self) -> Insight:
        """What the pictures and the history pages read (insight.py), made when first read:
        a command that shows no picture never loads it."""
        return self._insight()

    # -- commits arriving: found here, or by an observer elsewhere -------------------------

    def heads(self, repository: str) -> dict[str, str] | None:
        return self.arrivals.heads(repository)

    def record_commits(
        self, repository: str, commits: list[NewCommit], heads: dict[str, str] | None = None
    ) -> list[int]:
        return self.arrivals.record_commits(repository, commits, heads)

    # -- operations -----------------------------------------------------------------------

    def repository(self, name: str | None) -> RepositoryConfig:
        """The named repository, or the only one configured."""
        return self.config.named_repository(name)

    def submit(self, rev: str, repository: str | None = None) -> tuple[Document, bool]:
        """Queue a commit named by a branch, tag or sha prefix; (its job, whether new)."""
        repo = self.repository(repository)
        mirror = self.mirrors[repo.name]
        mirror.fetch()
        sha = mirror.resolve(rev)
        branches = tuple(b for b in mirror.branches_containing(sha) if repo.tracks(b))
        created = self.record_commits(
            repo.name, [NewCommit(sha, mirror.subjects([sha]).get(sha, ""), branches, MANUAL_PRIORITY, trigger=MANUAL)]
        )
        return self.document(self.store.find(sha, repo.name)), bool(created)

    def merge(self, branch: str, into: str | None = None, repository: str | None = None) -> tuple[Document, bool]:
        """Ask for ``branch`` (at its head now) to enter the merge queue's target; (the
        request, whether anything changed: asking again for the same head changes nothing)."""
        repo = self.repository(repository)
        queue = repo.merge_queue
        if queue is None:
            raise UsageError(f"{repo.name} has no merge queue: set repositories[].merge_queue in config.yaml")
        if into is not None and into != queue.target:
            raise UsageError(f"the merge queue of {repo.name} merges into {queue.target}, not {into[:100]!r}")
        mirror = self.mirrors[repo.name]
        mirror.fetch()
        sha = mirror.branches().get(branch)
        if sha is None or branch == queue.target:
            raise UnknownCommit(f"no branch {branch[:100]!r} to merge in {repo.name}")
        merge, changed = self.store.merges.request(repo.name, branch, queue.target, sha)
        if changed:
            self.arrivals.wake()
        return merge.document(), changed

    def merges(self, repository: str | None = None, limit: int = 50) -> list[Document]:
        """The open requests in queue order, then the ended ones, newest first."""
        name = self.repository(repository).name if repository else None
        return [m.document() for m in self.store.merges.recent(name, limit)]

    def cancel_merge(self, branch: str, repository: str | None = None) -> Document:
        from orchestrator.dispatch.merge_queue import cancel

        repo = self.repository(repository)
        merge = next((m for m in self.store.merges.open_requests(repo.name) if m.branch == branch), None)
        if merge is None:
            raise UnknownCommit(f"no open merge request of {branch[:100]!r} in {repo.name}")
        done = cancel(self.store, merge, "cancelled by request")
        if done is None:
            raise Conflict(f"the merge of {branch[:100]!r} is being pushed: it cannot be cancelled now")
        return done.document()

    def require_commits(self, repository: str, shas: list[str]) -> None:
        """UnknownCommit unless every sha is a commit of the repository (fetched if need be)."""
        mirror = self.mirrors[self.repository(repository).name]
        missing = [s for s in shas if not mirror.has_commit(s)]
        if missing:
            mirror.fetch()
            missing = [s for s in missing if not mirror.has_commit(s)]
        if missing:
            raise UnknownCommit(f"unknown commit {missing[0]} in {repository}")

    def poll(self, repository: str | None = None) -> int:
        """Fetch now and queue every new commit, oldest first; how many were queued."""
        names = [self.repository(repository).name] if repository else [r.name for r in self.config.repositories]
        return sum(self.observer.poll_repository(name) for name in names)

    def list_jobs(
        self,
        repository: str | None = None,
        status: JobStatus | None = None,
        branch: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Document]:
        """Newest first."""
        if repository is not None:
            self.repository(repository)
        jobs = self.store.list_jobs(repository=repository, status=status, branch=branch, limit=limit, offset=offset)
        return [self.document(j) for j in jobs]

    def show(self, ref: JobRef) -> Document:
        return self.document(self.job(ref))

    def deliveries(self, ref: JobRef) -> list[Document]:
        """The webhook deliveries of a job: sent, retrying (with the last error) or failed."""
        return [d.document() for d in self.store.outbox.of_job(self.job(ref).id)]

    def bisections(self, repository: str | None = None, limit: int = 20) -> list[Document]:
        """The newest bisections: their range, where they are, and what they named."""
        if repository is not None:
            self.repository(repository)
        return [b.document() for b in self.store.bisections.recent(repository, limit)]

    def latest(self, repository: str, branch: str, python: str | None = None) -> Document | None:
        """The newest job of a branch (what its badge shows): of its variant on ``python``;
        without, where the newest commit runs on several Pythons, its job that a user looks
        at first, with the commit's status (the worst of its variants')."""
        name = self.repository(repository).name
        python = _offered(python)
        job = self.store.latest_on_branch(name, branch, python=python)
        if job is None or not job.python or python is not None:
            return self.document(job) if job else None
        found = variants.ordered(self.store.of_commit(name, job.commit))
        first = self.job(JobRef(id=None, commit=job.commit, repository=name))
        return {**self.document(first), "status": variants.overall(j.status for j in found).value}

    def branches(self, repository: str) -> list[tuple[str, Document | None]]:
        """Each branch the observer has seen, with its newest job."""
        heads = self.store.heads(self.repository(repository).name) or {}
        return [(b, self.latest(repository, b)) for b in sorted(heads)]

    def health(self) -> dict[str, Any]:
        """Jobs queued and running now, and each repository's state: ``degraded`` while
        any repository cannot be polled."""
        repositories = {
            name: {"ok": state.ok, "error": state.error, "since": iso(state.since)}
            for name, state in self.observer.health().items()
        }
        role = {"dispatcher": self.role()} if self.role is not None else {}
        try:
            counts = {"queued": self.store.count(JobStatus.QUEUED), "running": self.store.count(JobStatus.RUNNING)}
            controls = self.controls_health()
        except store_errors() as exc:  # the store is away: say so, with what this process knows without it
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            return {"status": "degraded", "store": f"unreachable: {reason}", "repositories": repositories, **role}
        return {
            "status": "ok" if all(r["ok"] for r in repositories.values()) else "degraded",
            **counts,
            "repositories": repositories,
            **controls,
            **role,
        }

    def retry(self, ref: JobRef, failed: bool = False) -> list[Document]:
        """Queue a finished job again; a commit's variants without ``ref.python``: each
        finished one (a Conflict if none is). With ``failed``, a new attempt runs only the
        failing tests of each failed one (rerun.py)."""
        chosen = self._jobs_of(ref)
        finished = [j for j in chosen if j.status.final and (not failed or j.status is JobStatus.FAILED)]
        if not finished:
            job = chosen[0]
            if failed:
                rerun.plan(self.store, job, False)  # raises, saying why
            raise Conflict(f"job {job.id} ({job.commit[:12]}) is {job.status.value}: only finished jobs can be retried")
        command = self.repository(finished[0].repository).command is not None
        plans = [rerun.plan(self.store, job, command) if failed else None for job in finished]
        queued = [
            self.store.move(
                job,
                JobStatus.QUEUED,
                message=(
                    f"re-running the {len(plan['tests'])} failed tests of attempt {job.attempts}"
                    if plan
                    else f"retry asked after attempt {job.attempts}"
                ),
                priority=MANUAL_PRIORITY,
                trigger=MANUAL,
                rerun=plan,
            )
            for job, plan in zip(finished, plans, strict=True)
        ]
        self.arrivals.wake()
        return [self.document(job) for job in queued]

    def cancel(self, ref: JobRef) -> list[Document]:
        """A queued job is cancelled at once (its files say so); a running one is flagged,
        and the dispatcher stops its container. A commit's variants without
        ``ref.python``: each one not yet finished (a Conflict if none is)."""
        chosen = self._jobs_of(ref)
        pending = [j for j in chosen if not j.status.final]
        if not pending:
            job = chosen[0]
            raise Conflict(f"job {job.id} ({job.commit[:12]}) is already {job.status.value}")
        done = []
        for job in pending:
            cancelled = self.store.request_cancel(job)
            if cancelled.status is JobStatus.CANCELLED:
                self.results.write_without_run(cancelled, self.store.attempt_history(job.id))
            done.append(self.document(self.store.get(job.id) or cancelled))
        if pending[0].python:
            self.results.summarise(self.store.of_commit(pending[0].repository, pending[0].commit))
        return done

    def variants(self, ref: JobRef) -> list[Document]:
        """The jobs a reference names: a commit's variants (or the one named), or the job."""
        return [self.document(job) for job in self._jobs_of(ref)]

    def open_log(
        self, ref: JobRef, follow: bool = True, shard: int | None = None
    ) -> tuple[Document, Iterator[bytes] | None]:
        """The log (with ``shard``, one shard's of a split suite): from the engine while the
        container runs (live with ``follow``), else the saved file; None when there is none yet."""
        job = self.job(ref)
        saved, container = self.log_source(job, shard)
        if job.status is JobStatus.RUNNING and container and self.backend is not None:
            return self.document(job), _live(self.backend().logs(container, follow=follow), saved)
        if job.status.final and saved.is_file():
            return self.document(job), _file(saved)
        return self.document(job), None

    def log_source(self, job: Job, shard: int | None = None) -> tuple[Path, str | None]:
        """Where a job's log is saved, and the container that prints it now, if any (a
        shard's by its name: the store keeps no shard's container id while it runs)."""
        if shard is None:
            return self.results.path(job, "output.log"), job.container_id
        if not job.shards or not 1 <= shard <= len(job.shards):
            raise UsageError(
                f"job {job.id} has no shard {shard}"
                + (f" (it has {len(job.shards)})" if job.shards else " (its suite was not split)")
            )
        return (
            self.results.path(job, f"output.{shard}.log"),
            container_name(self.store.instance_id(), job.id, job.attempts, shard),
        )

    def failures(self, ref: JobRef) -> list[dict[str, Any]]:
        """The failing tests, each with its record on the branch (history.py)."""
        from orchestrator.results.history import History

        job = self.job(ref)
        junit = self.results.report(job) if job.status.final else None
        from orchestrator.results.report import Report

        found = Report(junit).failures()
        record = History(self.store)
        parents = self._parents(job) if found else None
        return [{**f, "history": record.record_of(job, f["test"], parents)} for f in found]

    def _parents(self, job: Job) -> dict[str, list[str]] | None:
        """The commit graph before the job's commit, from the repository's mirror (None if
        it cannot be read: the record then follows the branch's jobs)."""
        try:
            return self.mirrors[job.repository].parents(job.commit)
        except (KeyError, OSError, RepositoryError) as exc:  # no mirror here (an observer elsewhere), say
            log.debug("no commit graph for %s: %s", job.commit[:12], exc)
            return None

    # -- lookups ------------------------------------------------------------------------

    def job(self, ref: JobRef) -> Job:
        """The one job ``ref`` names; of a commit's variants with no Python named, the one
        a user looks at first: the first that failed, else the first not yet finished,
        else the first."""
        found = self._jobs_of(ref)
        return next(
            (j for j in found if j.status.bad),
            next((j for j in found if not j.status.final), found[0]),
        )

    def _jobs_of(self, ref: JobRef) -> list[Job]:
        if ref.id is not None:
            job = self.store.get(ref.id)
            if job is None:
                raise UnknownCommit(f"no job {ref.id}")
            return [job]
        if ref.repository is not None:
            self.repository(ref.repository)
        if ref.python is not None:
            return [self.store.find(ref.commit or "", ref.repository, _offered(ref.python))]
        return variants.ordered(self.store.variants(ref.commit or "", ref.repository))

    def document(self, job: Job) -> Document:
        return result_document(job, self.store.attempt_history(job.id))


def _offered(python: str | None) -> str | None:
    """A Python a user named (``--python``, ``?python=``), or a usage error naming the offered ones."""
    if python is None:
        return None
    try:
        return pythons.named(python)
    except pythons.NotOffered as exc:
        raise UsageError(str(exc)) from None


def _file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 16):
            yield block


def _live(stream: Iterator[bytes], saved: Path) -> Iterator[bytes]:
    """Follow the container; if it is already gone (finished and removed), the saved log."""
    sent = False
    try:
        for chunk in stream:
            sent = True
            yield chunk
    except Exception:  # engine away or container removed (docker's NotFound is not ours)
        if not sent and saved.is_file():
            yield from _file(saved)
