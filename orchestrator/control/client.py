"""The dispatcher's HTTP API from the other side: for a separate observer (the commit
sink), and for every command run against a dispatcher on another machine (``RemoteJobs``,
the same operations as ``jobs.LocalJobs``).

HTTP errors become the errors a local operation raises, so a command exits with the same
status and says the same thing, wherever the dispatcher is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import requests

from orchestrator.control.port import Document, JobRef
from orchestrator.errors import Conflict, DispatcherUnavailable, UnknownCommit, UnknownRepository, UsageError
from orchestrator.models import JobStatus, iso
from orchestrator.store import NewCommit

TIMEOUT = 30
_ERRORS = {404: UnknownCommit, 409: Conflict, 400: UsageError, 422: UsageError}


class DispatcherClient:
    def __init__(self, address: str, token: str | None = None, observer_key: str | None = None):
        self.base = (address if "://" in address else f"http://{address}").rstrip("/")
        self._session = requests.Session()
        self._session.headers["X-Orchestrator"] = "1"  # not a browser's form: see web/guard.py
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        if observer_key:
            self._session.headers["X-Observer-Key"] = observer_key

    def call(self, method: str, path: str, stream: bool = False, **kwargs: Any) -> requests.Response:
        """``method path`` answered 2xx, else the error a local operation raises. A change a
        standby refused (503 naming the active in ``Location``: it did nothing) is sent there,
        once; the next call asks ``base`` again, which may be the active by then."""
        resp = self._send(self.base, method, path, stream, **kwargs)
        active = resp.headers.get("Location", "")
        if resp.status_code == 503 and active.startswith(("http://", "https://")):
            resp.close()
            resp = self._send(active.rstrip("/"), method, path, stream, **kwargs)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text[:200]
            error = _ERRORS.get(resp.status_code)
            if error is UnknownCommit and str(detail).startswith("unknown repository"):
                error = UnknownRepository
            if error is not None and isinstance(detail, str):
                raise error(detail)
            raise DispatcherUnavailable(f"dispatcher refused {method} {path}: {resp.status_code} {detail}")
        return resp

    def document(self, method: str, path: str, **kwargs: Any) -> Document:
        """The answer, which must be a JSON object (a dispatcher of another version, or a
        proxy's page, is a clear error, not a KeyError further on)."""
        answer = _json(self.call(method, path, **kwargs))
        if not isinstance(answer, dict):
            raise DispatcherUnavailable(f"dispatcher answered {method} {path} with something other than a JSON object")
        return answer

    def documents(self, method: str, path: str, **kwargs: Any) -> list[Document]:
        """The answer, which must be a JSON list of objects."""
        answer = _json(self.call(method, path, **kwargs))
        if not isinstance(answer, list) or not all(isinstance(d, dict) for d in answer):
            raise DispatcherUnavailable(f"dispatcher answered {method} {path} with something other than a JSON list")
        return answer

    def _send(self, base: str, method: str, path: str, stream: bool, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, base + path, timeout=TIMEOUT, stream=stream, **kwargs)
        except requests.RequestException as exc:
            raise DispatcherUnavailable(f"dispatcher at {base} unreachable: {type(exc).__name__}") from None

    # -- the observer's sink ----------------------------------------------------------------

    def heads(self, repository: str) -> dict[str, str] | None:
        heads = self.document("GET", f"/api/repositories/{repository}/heads")["heads"]
        return dict(heads) if heads is not None else None

    def record_commits(
        self, repository: str, commits: list[NewCommit], heads: dict[str, str] | None = None
    ) -> list[int]:
        body = {
            "repository": repository,
            "commits": [{"sha": c.sha, "subject": c.subject, "branches": list(c.branches)} for c in commits],
            "heads": heads,
        }
        return [int(n) for n in self.document("POST", "/api/commits", json=body)["created"]]


FINAL = {"passed", "failed", "error", "timed_out", "cancelled", "skipped"}


class RemoteJobs:
    """``jobs.Jobs`` through the HTTP API of a dispatcher on another machine."""

    def __init__(self, client: DispatcherClient):
        self.client = client

    def submit(self, rev: str, repository: str | None = None) -> tuple[Document, bool]:
        answer = self.client.document("POST", "/api/jobs", json={"rev": rev, "repository": repository})
        return answer["job"], answer["created"]

    def poll(self, repository: str | None = None) -> int:
        if repository is None:
            return int(self.client.document("POST", "/api/poll")["queued"])
        return int(self.client.document("POST", f"/api/repositories/{repository}/poll")["queued"])

    def list_jobs(
        self,
        repository: str | None = None,
        status: JobStatus | None = None,
        branch: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Document]:
        params = {
            "repository": repository,
            "status": status.value if status else None,
            "branch": branch,
            "limit": limit,
            "offset": offset,
        }
        return self.client.documents("GET", "/api/jobs", params={k: v for k, v in params.items() if v is not None})

    def show(self, ref: JobRef) -> Document:
        return self.client.document("GET", f"/api/jobs/{self._id(ref)}")

    def bisections(self, repository: str | None = None, limit: int = 20) -> list[Document]:
        params = {"repository": repository, "limit": limit}
        return self.client.documents(
            "GET", "/api/bisections", params={k: v for k, v in params.items() if v is not None}
        )

    def merge(self, branch: str, into: str | None = None, repository: str | None = None) -> tuple[Document, bool]:
        body = {"branch": branch, "into": into, "repository": repository}
        answer = self.client.document("POST", "/api/merges", json={k: v for k, v in body.items() if v is not None})
        return answer["merge"], answer["changed"]

    def merges(self, repository: str | None = None, limit: int = 50) -> list[Document]:
        params = {"repository": repository, "limit": limit}
        return self.client.documents("GET", "/api/merges", params={k: v for k, v in params.items() if v is not None})

    def cancel_merge(self, branch: str, repository: str | None = None) -> Document:
        body = {"branch": branch, "repository": repository}
        return self.client.document("POST", "/api/merges/cancel", json={k: v for k, v in body.items() if v is not None})

    def variants(self, ref: JobRef) -> list[Document]:
        if ref.id is not None:
            return [self.show(ref)]
        return self.client.documents("GET", "/api/jobs/variants", params=self._params(ref))

    def retry(self, ref: JobRef, failed: bool = False) -> list[Document]:
        if failed:
            return self._each(ref, "retry?only=failed", lambda d: d["status"] == "failed")
        return self._each(ref, "retry", lambda d: d["status"] in FINAL)

    # -- an operator's controls (controls.py) ---------------------------------------------

    def pause(self, repository: str, reason: str = "", by: str = "cli") -> Document:
        del by  # the dispatcher records a pause made through its API as by "api"
        return self.client.document("POST", f"/api/repositories/{repository}/pause", json={"reason": reason})

    def resume(self, repository: str) -> Document:
        return self.client.document("POST", f"/api/repositories/{repository}/resume")

    def paused(self) -> list[Document]:
        return self.client.documents("GET", "/api/paused")

    def quarantine_add(
        self, repository: str | None, test_id: str, reason: str, until: datetime | None = None, by: str = "cli"
    ) -> Document:
        del by  # through the API it is recorded as by "api" (the API takes "api" or "dashboard" only)
        body = {"repository": repository, "test": test_id, "reason": reason, "until": iso(until)}
        return self.client.document("POST", "/api/quarantine", json={k: v for k, v in body.items() if v})

    def quarantine_remove(self, repository: str | None, test_id: str) -> Document:
        body = {"repository": repository, "test": test_id}
        return self.client.document("POST", "/api/quarantine/remove", json={k: v for k, v in body.items() if v})

    def quarantined(self, repository: str | None = None) -> list[Document]:
        params = {"repository": repository} if repository else {}
        return self.client.documents("GET", "/api/quarantine", params=params)

    def search(
        self, query: str, repository: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[Document]:
        params = {"q": query, "repository": repository, "since": iso(since), "limit": limit}
        return self.client.documents("GET", "/api/search", params={k: v for k, v in params.items() if v})

    def cancel(self, ref: JobRef) -> list[Document]:
        return self._each(ref, "cancel", lambda d: d["status"] not in FINAL)

    def _each(self, ref: JobRef, action: str, fits: Callable[[Document], bool]) -> list[Document]:
        """``action`` on each job ``ref`` names that ``fits`` (the first one regardless, so
        that the dispatcher's own refusal is what the user reads)."""
        found = self.variants(ref)
        chosen = [d for d in found if fits(d)] or found[:1]
        return [self.client.document("POST", f"/api/jobs/{d['id']}/{action}") for d in chosen]

    def open_log(
        self, ref: JobRef, follow: bool = True, shard: int | None = None
    ) -> tuple[Document, Iterator[bytes] | None]:
        document = self.show(ref)
        resp = self.client.call(
            "GET",
            f"/api/jobs/{document['id']}/log",
            stream=True,
            params={"follow": str(follow).lower(), **({"shard": shard} if shard else {})},
        )
        if resp.headers.get("X-Log") == "none":
            resp.close()
            return document, None
        return document, resp.iter_content(chunk_size=None)

    def _id(self, ref: JobRef) -> int:
        if ref.id is not None:
            return ref.id
        return int(self.client.document("GET", "/api/jobs/find", params=self._params(ref))["id"])

    @staticmethod
    def _params(ref: JobRef) -> dict[str, str]:
        return {
            "commit": ref.commit or "",
            **({"repository": ref.repository} if ref.repository else {}),
            **({"python": ref.python} if ref.python else {}),
        }


def _json(resp: requests.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return None
