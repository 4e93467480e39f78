"""The observer's side of the dispatcher's HTTP API, for when they run apart."""

from __future__ import annotations

from dataclasses import asdict

import requests

from orchestrator.errors import DispatcherUnavailable
from orchestrator.store import NewCommit

TIMEOUT = 30


class DispatcherClient:
    def __init__(self, address: str, token: str | None = None):
        self.base = address if "://" in address else f"http://{address}"
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: object) -> dict:
        try:
            resp = self._session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise DispatcherUnavailable(f"dispatcher at {self.base} unreachable: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text[:200]
            raise DispatcherUnavailable(f"dispatcher refused {method} {path}: {resp.status_code} {detail}")
        return resp.json()

    def heads(self, repository: str) -> dict[str, str] | None:
        return self._call("GET", f"/api/repositories/{repository}/heads")["heads"]

    def record_commits(self, repository: str, commits: list[NewCommit],
                       heads: dict[str, str] | None = None) -> list[int]:
        body = {"repository": repository,
                "commits": [{**asdict(c), "branches": list(c.branches)} for c in commits],
                "heads": heads}
        return self._call("POST", "/api/commits", json=body)["created"]
