"""The operations' port: what users do to jobs and an operator's controls, as both sides
offer them: ``LocalJobs`` (jobs.py) on this machine's store, ``RemoteJobs`` (client.py)
through a dispatcher's HTTP API. The command line and the API speak only to this, so that a
command says the same whichever side answers. Jobs are named by a ``JobRef``; every answer
is the job's ``result.json`` document."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orchestrator.models import JobStatus

Document = dict[str, Any]


@dataclass(frozen=True)
class JobRef:
    """A job as a user names it: its id (the API), or a prefix of its commit's sha and,
    where several repositories could match, the repository (the command line)."""

    id: int | None = None
    commit: str | None = None
    repository: str | None = None
    python: str | None = None  # one variant of a commit on several Pythons (None: as the operation chooses)

    def __str__(self) -> str:
        return f"job {self.id}" if self.id is not None else f"commit {self.commit}"


class Jobs(Protocol):
    def submit(self, rev: str, repository: str | None = None) -> tuple[Document, bool]: ...
    def poll(self, repository: str | None = None) -> int: ...
    def list_jobs(
        self,
        repository: str | None = None,
        status: JobStatus | None = None,
        branch: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Document]: ...
    def show(self, ref: JobRef) -> Document: ...
    def variants(self, ref: JobRef) -> list[Document]: ...
    def retry(self, ref: JobRef, failed: bool = False) -> list[Document]: ...
    def cancel(self, ref: JobRef) -> list[Document]: ...
    def open_log(
        self, ref: JobRef, follow: bool = True, shard: int | None = None
    ) -> tuple[Document, Iterator[bytes] | None]: ...
    def bisections(self, repository: str | None = None, limit: int = 20) -> list[Document]: ...
    def merge(self, branch: str, into: str | None = None, repository: str | None = None) -> tuple[Document, bool]: ...
    def merges(self, repository: str | None = None, limit: int = 50) -> list[Document]: ...
    def cancel_merge(self, branch: str, repository: str | None = None) -> Document: ...
    def pause(self, repository: str, reason: str = "", by: str = "cli") -> Document: ...
    def resume(self, repository: str) -> Document: ...
    def paused(self) -> list[Document]: ...
    def quarantine_add(
        self, repository: str | None, test_id: str, reason: str, until: datetime | None = None, by: str = "cli"
    ) -> Document: ...
    def quarantine_remove(self, repository: str | None, test_id: str) -> Document: ...
    def quarantined(self, repository: str | None = None) -> list[Document]: ...
    def search(
        self, query: str, repository: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[Document]: ...
