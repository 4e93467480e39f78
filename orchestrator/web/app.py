"""The FastAPI application: the JSON API and the pages, request bodies bounded in size,
and every error a user can cause answered as a 4xx with a reason.

Nothing from a request reaches the file system as a path: jobs are looked up by integer
id and their files found from the stored repository name and sha, repositories by
configured name.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.config import Config
from orchestrator.control.jobs import LocalJobs
from orchestrator.errors import (
    Conflict,
    EngineUnavailable,
    OrchestratorError,
    RepositoryError,
    UnknownCommit,
    UnknownRepository,
    UsageError,
)
from orchestrator.results.metrics import Metrics
from orchestrator.web import api, operator_api, pages
from orchestrator.web.guard import Guard, observer_key
from orchestrator.web.live import LiveLogs

MAX_BODY_BYTES = 8 * 1024 * 1024

# most specific first: the first class an error is an instance of gives its status
_STATUS: list[tuple[type[OrchestratorError], int]] = [
    (UnknownCommit, 404),
    (UnknownRepository, 404),
    (Conflict, 409),
    (UsageError, 422),
    (RepositoryError, 503),
    (EngineUnavailable, 503),
]


def create_app(jobs: LocalJobs, metrics: Metrics, config: Config) -> FastAPI:
    app = FastAPI(title="orchestrator", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.dispatcher.hosts())
    app.add_exception_handler(OrchestratorError, _answer_error)
    app.add_exception_handler(RequestValidationError, _answer_invalid)
    token = config.dispatcher.api_token
    app.state.jobs, app.state.metrics, app.state.token_required = jobs, metrics, token is not None
    app.state.guard = Guard(token, observer_key(config.state_dir) if token is None else None)
    app.state.live = LiveLogs(
        lambda container_id: jobs.backend().logs(container_id, follow=True),  # type: ignore[misc]
        cap=config.runner.max_log_bytes,
        per_job=config.dispatcher.max_followers_per_job,
        overall=config.dispatcher.max_followers,
    )
    app.include_router(api.router)
    app.include_router(operator_api.router)
    app.include_router(pages.router)
    return app


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error that echoes what a client
    sent (an unpaired surrogate, say) can always be written."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def _answer_error(_request: Request, exc: Exception) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 503)
    return AsciiJSONResponse({"detail": str(exc)}, status)


async def _answer_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)


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
