"""The JSON API: every route is one operation of ``jobs.py``, its body a pydantic model.

Mutating routes depend on the token guard. Errors are raised as the operations raise
them and answered by ``app.py`` (404 unknown, 409 conflict, 422 malformed, 503 away).
What the routes use (the operations, the metrics, the guard) is the application's state,
set by ``app.create_app``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from orchestrator.backends.base import MAX_REPORT_BYTES
from orchestrator.control.jobs import LocalJobs
from orchestrator.control.port import JobRef
from orchestrator.models import MANUAL, PUSH, JobStatus, subject_line
from orchestrator.results.metrics import CONTENT_TYPE, Metrics
from orchestrator.store import NewCommit
from orchestrator.workspace import read_regular_file


def safe_text(value: str) -> str:
    """Text that can reach git and the store: no control characters, no lone surrogates."""
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("control characters and unpaired surrogates are not allowed")
    return value


def _subject(value: str) -> str:
    """Cut as the observer cuts it, never refused; what cannot be stored is replaced."""
    return subject_line(value.encode("utf-8", "replace").decode())


Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
BranchName = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(safe_text)]
RepositoryName = Annotated[str, Field(max_length=64)]
JobId = Annotated[int, PathParam(ge=1, le=2**62)]


class CommitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha: Sha
    subject: Annotated[str, AfterValidator(_subject)] = ""
    branches: Annotated[list[BranchName], Field(max_length=1000)] = []


class CommitBatch(BaseModel):
    """Commits to queue. ``heads``, sent by the observer, records its progress in the same
    transaction; a manual submission leaves it out, and its commits must exist."""

    model_config = ConfigDict(extra="forbid")
    repository: RepositoryName
    commits: Annotated[list[CommitIn], Field(max_length=20000)]
    heads: Annotated[dict[BranchName, Sha], Field(max_length=20000)] | None = None


class QueuedOut(BaseModel):
    created: list[int]
    jobs: list[int]


class SubmitIn(BaseModel):
    """A commit named as a user names it: a branch, a tag or a sha prefix."""

    model_config = ConfigDict(extra="forbid")
    rev: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(safe_text)]
    repository: RepositoryName | None = None


class MergeIn(BaseModel):
    """A merge request: a branch of the repository, into its merge queue's target."""

    model_config = ConfigDict(extra="forbid")
    branch: BranchName
    into: BranchName | None = None
    repository: RepositoryName | None = None


class MergeCancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branch: BranchName
    repository: RepositoryName | None = None


def _jobs(request: Request) -> LocalJobs:
    jobs: LocalJobs = request.app.state.jobs
    return jobs


def _authorised(request: Request) -> None:
    request.app.state.guard.change(request)


def _active(request: Request) -> None:
    """A change asked of a standby (several dispatchers on one store) is refused with 503,
    naming the active in ``Location``: the client sends it there (never forwarded: a
    standby holds no lease to write with, and a forwarded change could land twice)."""
    role = request.app.state.jobs.role
    if role is None:
        return
    state = role()
    if state["role"] != "active":
        where = state["active_address"]
        raise HTTPException(
            503,
            f"this dispatcher ({state['name']}) is a standby: "
            + (f"the active one is {state['active']} at {where}" if where else "no dispatcher is active now"),
            headers={"Location": where} if where else None,
        )


Jobs = Annotated[LocalJobs, Depends(_jobs)]
router = APIRouter()
guarded = [Depends(_authorised), Depends(_active)]


@router.get("/healthz")
def healthz(jobs: Jobs, request: Request) -> dict[str, Any]:
    return {**jobs.health(), "log_followers": request.app.state.live.followers}


@router.get("/metrics")
def get_metrics(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@router.post("/api/commits", status_code=201, response_model=QueuedOut, dependencies=guarded)
def post_commits(batch: CommitBatch, jobs: Jobs, request: Request) -> QueuedOut:
    if batch.heads is not None:
        request.app.state.guard.progress(request)
    jobs.repository(batch.repository)
    if batch.heads is None:
        jobs.require_commits(batch.repository, [c.sha for c in batch.commits])
    trigger = PUSH if batch.heads is not None else MANUAL  # the observer's, or a user's submission
    commits = [NewCommit(c.sha, c.subject, tuple(c.branches), trigger=trigger) for c in batch.commits]
    created = jobs.record_commits(batch.repository, commits, batch.heads)
    ids = [jobs.job(JobRef(commit=c.sha, repository=batch.repository)).id for c in batch.commits[:100]]
    return QueuedOut(created=created, jobs=ids)


@router.post("/api/jobs", status_code=201, dependencies=guarded)
def submit(body: SubmitIn, jobs: Jobs) -> dict[str, Any]:
    document, created = jobs.submit(body.rev, body.repository)
    return {"job": document, "created": created}


@router.post("/api/poll", status_code=202, dependencies=guarded)
def poll_all(jobs: Jobs) -> dict[str, Any]:
    return {"queued": jobs.poll()}


@router.post("/api/repositories/{name}/poll", status_code=202, dependencies=guarded)
def poll_now(name: str, jobs: Jobs) -> dict[str, Any]:
    """The instant trigger (a post-receive hook calls it): fetch and queue now."""
    return {"repository": name, "queued": jobs.poll(name)}


@router.get("/api/repositories/{name}/heads")
def get_heads(name: str, jobs: Jobs) -> dict[str, Any]:
    return {"repository": name, "heads": jobs.heads(jobs.repository(name).name)}


@router.get("/api/jobs")
def list_jobs(
    jobs: Jobs,
    repository: Annotated[str | None, Query(max_length=64)] = None,
    status: JobStatus | None = None,
    branch: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[dict[str, Any]]:
    return jobs.list_jobs(repository=repository, status=status, branch=branch, limit=limit, offset=offset)


@router.get("/api/tests/{repository}/{test_id:path}")
def get_test_runs(
    repository: str,
    test_id: Annotated[str, PathParam(max_length=2000)],
    jobs: Jobs,
    branch: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    python: Annotated[str | None, Query(max_length=20)] = None,
) -> list[dict[str, Any]]:
    """A test's runs, newest first; ``python``: only that Python's variants."""
    return jobs.insight.test_runs(repository, test_id, branch, limit, python)


@router.get("/api/repositories/{name}/trends")
def get_trends(name: str, jobs: Jobs, branch: Annotated[str | None, Query(max_length=255)] = None) -> dict[str, Any]:
    return jobs.insight.trends(name, branch)


@router.get("/api/load")
def get_load(jobs: Jobs) -> list[dict[str, Any]]:
    return jobs.insight.load()


@router.get("/api/flaky")
def list_flaky(jobs: Jobs, repository: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    return jobs.insight.flaky(repository)


@router.get("/api/bisections")
def list_bisections(
    jobs: Jobs,
    repository: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> list[dict[str, Any]]:
    return jobs.bisections(repository=repository, limit=limit)


@router.post("/api/merges", status_code=201, dependencies=guarded)
def request_merge(body: MergeIn, jobs: Jobs) -> dict[str, Any]:
    merge, changed = jobs.merge(body.branch, body.into, body.repository)
    return {"merge": merge, "changed": changed}


@router.get("/api/merges")
def list_merges(
    jobs: Jobs,
    repository: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    return jobs.merges(repository=repository, limit=limit)


@router.post("/api/merges/cancel", status_code=202, dependencies=guarded)
def cancel_merge(body: MergeCancelIn, jobs: Jobs) -> dict[str, Any]:
    return jobs.cancel_merge(body.branch, body.repository)


@router.get("/api/jobs/find")
def find_job(
    jobs: Jobs,
    commit: Annotated[str, Query(max_length=40)],
    repository: Annotated[str | None, Query(max_length=64)] = None,
    python: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """The job of the commit a sha prefix names (what the command line names jobs by): the
    variant on ``python``, else the one a user looks at first."""
    return jobs.show(JobRef(commit=commit, repository=repository, python=python))


@router.get("/api/jobs/variants")
def find_variants(
    jobs: Jobs,
    commit: Annotated[str, Query(max_length=40)],
    repository: Annotated[str | None, Query(max_length=64)] = None,
    python: Annotated[str | None, Query(max_length=20)] = None,
) -> list[dict[str, Any]]:
    """Every job of the commit a sha prefix names: one per Python it runs on."""
    return jobs.variants(JobRef(commit=commit, repository=repository, python=python))


@router.get("/api/jobs/{job_id}")
def get_job(job_id: JobId, jobs: Jobs) -> dict[str, Any]:
    return jobs.show(JobRef(id=job_id))


@router.get("/api/jobs/{job_id}/deliveries")
def get_deliveries(job_id: JobId, jobs: Jobs) -> list[dict[str, Any]]:
    return jobs.deliveries(JobRef(id=job_id))


@router.get("/api/jobs/{job_id}/failures")
def get_failures(job_id: JobId, jobs: Jobs) -> list[dict[str, Any]]:
    return jobs.failures(JobRef(id=job_id))


@router.get("/api/jobs/{job_id}/log")
async def get_log(
    job_id: JobId,
    jobs: Jobs,
    request: Request,
    follow: bool = True,
    shard: Annotated[int | None, Query(ge=1, le=64)] = None,
) -> Response:
    """The log (``shard``: one shard's of a split suite): followed live while the container
    runs (web/live.py: no thread per follower), what it printed so far without ``follow``,
    then the result file."""
    job = await run_in_threadpool(jobs.job, JobRef(id=job_id))
    saved, container = await run_in_threadpool(jobs.log_source, job, shard)
    if follow and job.status is JobStatus.RUNNING and container and jobs.backend is not None:
        live = request.app.state.live.follow(request, container, saved)
        return StreamingResponse(
            live,
            media_type="text/plain; charset=utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
        )
    _, stream = await run_in_threadpool(jobs.open_log, JobRef(id=job_id), follow, shard)
    if stream is None:
        return Response(b"", media_type="text/plain; charset=utf-8", headers={"X-Log": "none"})
    return StreamingResponse(
        stream,
        media_type="text/plain; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


@router.get("/api/jobs/{job_id}/environment.log")
def get_environment_log(job_id: JobId, jobs: Jobs) -> Response:
    """The build log of a job's environment, kept when building it failed."""
    path = jobs.results.path(jobs.job(JobRef(id=job_id)), "environment.log")
    data = read_regular_file(path, MAX_REPORT_BYTES)
    if data is None:
        raise HTTPException(404, f"job {job_id} has no environment log")
    return Response(data, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})


@router.get("/api/jobs/{job_id}/artifacts/{name:path}")
def get_artifact(job_id: JobId, name: Annotated[str, PathParam(max_length=1000)], jobs: Jobs) -> Response:
    """One of the files collected from a job's workspace, as a download: only a name the job
    lists, read as a regular file (never through a link)."""
    job = jobs.job(JobRef(id=job_id))
    if not job.artifacts or name not in job.artifacts.get("files", []):
        raise HTTPException(404, f"job {job_id} has no artifact {name[:200]!r}")
    data = read_regular_file(jobs.results.path(job, "artifacts") / name, 20 * 1024 * 1024)
    if data is None:
        raise HTTPException(404, f"job {job_id}: artifact {name[:200]!r} is gone")
    filename = name.rsplit("/", 1)[-1].encode("ascii", "replace").decode().replace('"', "_")
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Content-Type-Options": "nosniff"},
    )


@router.post("/api/jobs/{job_id}/cancel", status_code=202, dependencies=guarded)
def cancel(job_id: JobId, jobs: Jobs) -> dict[str, Any]:
    return jobs.cancel(JobRef(id=job_id))[0]


@router.post("/api/jobs/{job_id}/retry", status_code=202, dependencies=guarded)
def retry(job_id: JobId, jobs: Jobs, only: Literal["failed"] | None = None) -> dict[str, Any]:
    """A new attempt: of the whole suite, or (``only=failed``) of its failing tests alone."""
    return jobs.retry(JobRef(id=job_id), failed=only == "failed")[0]
