"""Which Pythons a commit runs on, and what a commit's variants add up to.

A repository that names one Python runs each commit once, as ever: one job whose
``python`` is "" (its results where they always were). One that names several, or
``auto``, runs a *variant* of each commit per Python: a job of its own each, with its own
container, environment, result files, retries and cancellation; the commit's verdict is
the worst of theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from orchestrator import pythons
from orchestrator.config import Config
from orchestrator.environment.needs import requires_python
from orchestrator.models import Job, JobStatus
from orchestrator.observe.mirror import Mirrors

# worst first: the commit's status is the first of these that any variant has
_WORST_FIRST = (
    JobStatus.RUNNING,
    JobStatus.QUEUED,
    JobStatus.ERROR,
    JobStatus.TIMED_OUT,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.SKIPPED,
    JobStatus.PASSED,
)


class Variants:
    """The Pythons of a commit, decided when it arrives (``auto`` reads its
    ``requires-python`` from the mirror's object store, as text)."""

    def __init__(self, config: Config, mirrors: Mirrors):
        self.config, self.mirrors = config, mirrors

    def __call__(self, repository: str, sha: str) -> tuple[str, ...]:
        repo = self.config.repository(repository)
        if repo is None or not repo.matrix:
            return ("",)
        declared = None
        if repo.python == pythons.AUTO:
            mirror = self.mirrors[repository]
            if not mirror.has_commit(sha):
                mirror.fetch()
            declared = requires_python(mirror.file(sha, "pyproject.toml"))
        return repo.pythons_for(declared)


def overall(statuses: Iterable[JobStatus]) -> JobStatus:
    """A commit's status from its variants': any still to run makes it running (or queued);
    else the worst verdict."""
    seen = set(statuses)
    return next((s for s in _WORST_FIRST if s in seen), JobStatus.QUEUED)


def folder(job: Job) -> str:
    """Where a variant's files go below the commit's folder ("" for a single Python)."""
    return pythons.folder(job.python) if job.python else ""


def ordered(jobs: Sequence[Job]) -> list[Job]:
    """A commit's variants in the order its repository lists its Pythons (offered order)."""
    rank = {name: i for i, name in enumerate(pythons.OFFERED)}
    return sorted(jobs, key=lambda j: rank.get(j.python, -1))
