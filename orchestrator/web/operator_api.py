"""The JSON API of an operator's controls: pause and resume a repository, quarantine a
test, search every log. As api.py's routes: one operation each, a pydantic body, the same
guard on every change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from orchestrator.web.api import Jobs, RepositoryName, guarded, safe_text

router = APIRouter()


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(max_length=500), AfterValidator(safe_text)] = ""


@router.post("/api/repositories/{name}/pause", dependencies=guarded)
def pause(name: RepositoryName, jobs: Jobs, body: PauseIn | None = None) -> dict[str, Any]:
    return jobs.pause(name, body.reason if body else "", by="api")


@router.post("/api/repositories/{name}/resume", dependencies=guarded)
def resume(name: RepositoryName, jobs: Jobs) -> dict[str, Any]:
    return jobs.resume(name)


@router.get("/api/paused")
def list_paused(jobs: Jobs) -> list[dict[str, Any]]:
    return jobs.paused()


TestId = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(safe_text)]


class QuarantineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: RepositoryName | None = None
    test: TestId
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(safe_text)]
    until: datetime | None = None
    by: Literal["api", "dashboard"] = "api"


class QuarantineOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: RepositoryName | None = None
    test: TestId


@router.post("/api/quarantine", status_code=201, dependencies=guarded)
def quarantine_add(body: QuarantineIn, jobs: Jobs) -> dict[str, Any]:
    until = body.until if body.until is None or body.until.tzinfo else body.until.replace(tzinfo=UTC)
    return jobs.quarantine_add(body.repository, body.test, body.reason, until, by=body.by)


@router.post("/api/quarantine/remove", dependencies=guarded)
def quarantine_remove(body: QuarantineOut, jobs: Jobs) -> dict[str, Any]:
    return jobs.quarantine_remove(body.repository, body.test)


@router.get("/api/quarantine")
def list_quarantine(jobs: Jobs, repository: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    return jobs.quarantined(repository)


@router.get("/api/search")
def search(
    jobs: Jobs,
    q: Annotated[str, Query(min_length=1, max_length=500)],
    repository: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Every indexed log line, failing test and reason that matches ``q`` (FTS5's syntax),
    newest first; a query it cannot parse is a 422 naming why."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return jobs.search(q, repository, since, limit)
