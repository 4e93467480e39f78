"""The dispatcher's HTTP face (FastAPI): the JSON API, the dashboard, badges, metrics.

Request bodies are validated by pydantic models and bounded in size; every bad input is
a 4xx with a reason. Nothing from a request reaches the file system as a path: jobs are
looked up by integer id and their files found from the stored repository name and sha,
repositories by configured name. Mutating endpoints require the api token when one is set.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import InvalidTransition, RepositoryError
from orchestrator.metrics import CONTENT_TYPE
from orchestrator.mirror import Mirror
from orchestrator.models import Job, JobStatus
from orchestrator.observer import Observer
from orchestrator.results import MAX_JUNIT_BYTES, failures, read_regular_file, result_document
from orchestrator.store import NewCommit

if TYPE_CHECKING:
    from orchestrator.dispatcher import Dispatcher

MAX_BODY_BYTES = 8 * 1024 * 1024
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
BranchName = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
JobId = Annotated[int, PathParam(ge=1, le=2**62)]


class CommitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha: Sha
    subject: Annotated[str, Field(max_length=2000)] = ""
    branches: Annotated[list[BranchName], Field(max_length=1000)] = []


class CommitBatch(BaseModel):
    """Commits to queue. ``heads``, sent by the observer, records its progress in the same
    transaction; a manual submission leaves it out, and its commits must exist."""

    model_config = ConfigDict(extra="forbid")
    repository: Annotated[str, Field(max_length=64)]
    commits: Annotated[list[CommitIn], Field(max_length=20000)]
    heads: Annotated[dict[BranchName, Sha], Field(max_length=20000)] | None = None


class QueuedOut(BaseModel):
    created: list[int]
    jobs: list[int]


class BodyLimit:
    """Rejects request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(dispatcher: "Dispatcher") -> FastAPI:
    config, store, mirrors = dispatcher.config, dispatcher.store, dispatcher.mirrors
    results = dispatcher.ctx.results
    observer = Observer(config, dispatcher)  # for the instant trigger
    app = FastAPI(title="orchestrator", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    token = config.dispatcher.api_token

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, token.encode()):
            raise HTTPException(401, "missing or wrong api token (Authorization: Bearer <token>)")

    def repository(name: str) -> Mirror:
        if config.repository(name) is None:
            raise HTTPException(404, f"unknown repository {name[:64]!r}")
        return mirrors[name]

    def job_or_404(job_id: int) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    def document(job: Job) -> dict[str, Any]:
        return result_document(job, store.attempt_history(job.id))

    # -- JSON API ---------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": store.count(JobStatus.QUEUED), "running": store.count(JobStatus.RUNNING)}

    @app.post("/api/commits", status_code=201, response_model=QueuedOut, dependencies=[Depends(authorised)])
    def post_commits(batch: CommitBatch) -> QueuedOut:
        mirror = repository(batch.repository)
        if batch.heads is None:
            _require_commits(mirror, [c.sha for c in batch.commits])
        commits = [NewCommit(c.sha, c.subject, tuple(c.branches)) for c in batch.commits]
        created = dispatcher.record_commits(batch.repository, commits, batch.heads)
        ids = [store.find(c.sha, batch.repository).id for c in batch.commits[:100]]
        return QueuedOut(created=created, jobs=ids)

    @app.post("/api/repositories/{name}/poll", status_code=202, dependencies=[Depends(authorised)])
    def poll_now(name: str) -> dict[str, Any]:
        """The instant trigger (a post-receive hook calls it): fetch and queue now."""
        repository(name)
        try:
            queued = observer.poll_repository(name)
        except RepositoryError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"repository": name, "queued": queued}

    @app.get("/api/repositories/{name}/heads")
    def get_heads(name: str) -> dict[str, Any]:
        repository(name)
        return {"repository": name, "heads": store.heads(name)}

    @app.get("/api/jobs")
    def list_jobs(
        repository: Annotated[str | None, Query(max_length=64)] = None,
        status: JobStatus | None = None,
        branch: Annotated[str | None, Query(max_length=255)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        jobs = store.list_jobs(repository=repository, status=status, branch=branch, limit=limit, offset=offset)
        return [document(j) for j in jobs]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: JobId) -> dict[str, Any]:
        return document(job_or_404(job_id))

    @app.get("/api/jobs/{job_id}/failures")
    def get_failures(job_id: JobId) -> list[dict[str, str]]:
        job = job_or_404(job_id)
        junit = read_regular_file(results.directory(job.repository, job.commit) / "junit.xml", MAX_JUNIT_BYTES)
        return failures(junit) if junit and job.status.final else []

    @app.get("/api/jobs/{job_id}/log")
    def get_log(job_id: JobId) -> Response:
        """The log: streamed live from the container while it runs, then the result file."""
        job = job_or_404(job_id)
        saved = results.directory(job.repository, job.commit) / "output.log"
        if job.status is JobStatus.RUNNING and job.container_id:
            return StreamingResponse(_live_log(dispatcher, job.container_id, saved),
                                     media_type="text/plain; charset=utf-8",
                                     headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
        if job.status.final and saved.is_file():
            return StreamingResponse(_file(saved), media_type="text/plain; charset=utf-8")
        return Response(b"", media_type="text/plain; charset=utf-8")

    @app.post("/api/jobs/{job_id}/cancel", status_code=202, dependencies=[Depends(authorised)])
    def cancel(job_id: JobId) -> dict[str, Any]:
        try:
            job = store.request_cancel(job_or_404(job_id))
        except InvalidTransition as exc:
            raise HTTPException(409, str(exc)) from None
        if job.status is JobStatus.CANCELLED:  # it never ran: its files say so
            results.write_without_run(job, store.attempt_history(job.id))
        return document(store.get(job.id) or job)

    @app.post("/api/jobs/{job_id}/retry", status_code=202, dependencies=[Depends(authorised)])
    def retry(job_id: JobId) -> dict[str, Any]:
        job = job_or_404(job_id)
        if not job.status.final:
            raise HTTPException(409, f"job {job_id} is {job.status.value}: only finished jobs can be retried")
        try:
            job = store.move(job, JobStatus.QUEUED, message=f"retry asked after attempt {job.attempts}")
        except InvalidTransition as exc:
            raise HTTPException(409, str(exc)) from None
        dispatcher.wake()
        return document(job)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(dispatcher.metrics.render(), media_type=CONTENT_TYPE)

    # -- what people look at ----------------------------------------------------------

    @app.get("/badge/{name}/{branch:path}", response_class=Response)
    def badge(name: str, branch: str) -> Response:
        repository(name)
        if not branch.endswith(".svg"):
            raise HTTPException(404, "badges end in .svg")
        job = store.latest_on_branch(name, branch[:-4])
        label = BADGE.get(job.status if job else None, ("unknown", "#9f9f9f"))
        return Response(_badge_svg(*label), media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        repos = []
        for repo in config.repositories:
            heads = store.heads(repo.name) or {}
            branches = [(b, store.latest_on_branch(repo.name, b)) for b in sorted(heads)]
            repos.append({"name": repo.name, "url": repo.url, "branches": branches})
        jobs = [document(j) for j in store.list_jobs(limit=50)]
        return TEMPLATES.TemplateResponse(request, "index.html", {"repos": repos, "jobs": jobs,
                                                                  "token_required": token is not None})

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: JobId) -> Response:
        job = document(job_or_404(job_id))
        return TEMPLATES.TemplateResponse(request, "job.html", {"job": job, "token_required": token is not None})

    return app


BADGE = {
    JobStatus.PASSED: ("passing", "#2ea44f"),
    JobStatus.FAILED: ("failing", "#cb2431"),
    JobStatus.ERROR: ("error", "#8250df"),
    JobStatus.TIMED_OUT: ("timed out", "#dbab09"),
    JobStatus.RUNNING: ("running", "#0969da"),
    JobStatus.QUEUED: ("queued", "#6e7781"),
    JobStatus.CANCELLED: ("cancelled", "#6e7781"),
}


def _badge_svg(message: str, colour: str, label: str = "tests") -> bytes:
    left, right = 6 * len(label) + 12, 6 * len(message) + 12
    width = left + right
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="{label}: {message}">'
        f'<title>{label}: {message}</title>'
        f'<rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{label}</text><text x="{left + right / 2}" y="14">{message}</text></g></svg>'
    ).encode()


def _file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 16):
            yield block


def _live_log(dispatcher: "Dispatcher", container_id: str, saved: Path) -> Iterator[bytes]:
    """Follow the container; if it is already gone (finished and removed), the saved log."""
    sent = False
    try:
        for chunk in dispatcher.backend.logs(container_id, follow=True):
            sent = True
            yield chunk
    except Exception:  # engine away or container removed (docker's NotFound is not ours)
        if not sent and saved.is_file():
            yield from _file(saved)


def _require_commits(mirror: Mirror, shas: list[str]) -> None:
    missing = [s for s in shas if not mirror.has_commit(s)]
    if missing:
        try:
            mirror.fetch()
        except RepositoryError as exc:
            raise HTTPException(503, str(exc)) from None
        missing = [s for s in missing if not mirror.has_commit(s)]
    if missing:
        raise HTTPException(404, f"unknown commit {missing[0]} in {mirror.path.name}")
