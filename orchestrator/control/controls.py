"""An operator's controls over this machine's store: pause and resume a repository,
quarantine a test, search every log, and what the schedules will do next. ``LocalJobs``
offers them beside the job operations (the command line and the API reach them the same
way); ``RemoteJobs`` (client.py) offers them through the API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Conflict, UnknownCommit, UsageError
from orchestrator.models import iso
from orchestrator.results import quarantine, search

if TYPE_CHECKING:
    from orchestrator.config import Config, RepositoryConfig
    from orchestrator.store import Store

Document = dict[str, Any]
MAX_REASON = 500


class Controls:
    """Mixed into LocalJobs, whose config and store it works on."""

    config: Config
    store: Store

    def repository(self, name: str | None) -> RepositoryConfig:  # LocalJobs's
        raise NotImplementedError

    # -- pause -------------------------------------------------------------------------

    def pause(self, repository: str, reason: str = "", by: str = "cli") -> Document:
        """Nothing of the repository starts until it is resumed; it is still observed, and
        its commits still queued. Running jobs finish."""
        name = self.repository(repository).name
        text = " ".join(reason.split())[:MAX_REASON] or "paused"
        return self.store.pauses.pause(name, text, by).document()

    def resume(self, repository: str) -> Document:
        name = self.repository(repository).name
        if not self.store.pauses.resume(name):
            raise Conflict(f"{name} is not paused")
        return {"repository": name, "paused": False}

    def paused(self) -> list[Document]:
        return [p.document() for p in self.store.pauses.all().values()]

    # -- quarantine ----------------------------------------------------------------------

    def quarantine_add(
        self, repository: str | None, test_id: str, reason: str, until: datetime | None = None, by: str = "cli"
    ) -> Document:
        name = self.repository(repository).name
        entry = quarantine.add(self.store, self.config.quarantine, name, test_id, reason, by, until)
        return entry.document()

    def quarantine_remove(self, repository: str | None, test_id: str) -> Document:
        name = self.repository(repository).name
        if not self.store.quarantine.remove(name, test_id):
            raise UnknownCommit(f"{test_id[:200]!r} is not quarantined in {name}")
        return {"repository": name, "test": test_id, "quarantined": False}

    def quarantined(self, repository: str | None = None) -> list[Document]:
        name = self.repository(repository).name if repository else None
        return [e.document() for e in self.store.quarantine.active(name)]

    # -- search --------------------------------------------------------------------------

    def search(
        self, query: str, repository: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[Document]:
        """Every indexed log, test failure and reason (search.py), newest first."""
        if not query.strip():
            raise UsageError("search: give the text to look for")
        name = self.repository(repository).name if repository else None
        return search.search(self.store, query, name, iso(since), limit)

    # -- what health shows ---------------------------------------------------------------

    def controls_health(self) -> Document:
        """Paused repositories, and each schedule with its next run in the dispatcher's zone."""
        from orchestrator.observe.schedule import next_runs

        return {
            "paused": {p.repository: p.document() for p in self.store.pauses.all().values()},
            "schedules": next_runs(self.config.repositories),
        }
