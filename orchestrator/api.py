"""The dispatcher's HTTP API (FastAPI): queue commits, read jobs, health.

Request bodies are validated by pydantic models and bounded in size; every bad input is
a 4xx with a reason. Nothing from a request reaches the file system as a path: jobs are
looked up by integer id, repositories by configured name.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.config import Config
from orchestrator.errors import RepositoryError
from orchestrator.mirror import Mirror
from orchestrator.models import JobStatus
from orchestrator.results import result_document
from orchestrator.store import NewCommit, Store

MAX_BODY_BYTES = 8 * 1024 * 1024

Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
BranchName = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]


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


def create_app(config: Config, store: Store, mirrors: dict[str, Mirror],
               on_queued: Callable[[], None] = lambda: None) -> FastAPI:
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

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": store.count(JobStatus.QUEUED), "running": store.count(JobStatus.RUNNING)}

    @app.post("/api/commits", status_code=201, response_model=QueuedOut, dependencies=[Depends(authorised)])
    def post_commits(batch: CommitBatch) -> QueuedOut:
        mirror = repository(batch.repository)
        if batch.heads is None:
            _require_commits(mirror, [c.sha for c in batch.commits])
        commits = [NewCommit(c.sha, c.subject, tuple(c.branches)) for c in batch.commits]
        created = store.record_commits(batch.repository, commits, batch.heads)
        if created:
            on_queued()
        ids = [store.find(c.sha, batch.repository).id for c in batch.commits[:100]]
        return QueuedOut(created=created, jobs=ids)

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
        return [result_document(j, store.attempt_history(j.id)) for j in jobs]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return result_document(job, store.attempt_history(job.id))

    return app


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

