"""The whole of config.yaml: its repositories and every section, with their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from orchestrator.config.base import Strict
from orchestrator.config.repository import RepositoryConfig
from orchestrator.config.runner import RunnerConfig
from orchestrator.config.sections import (
    DispatcherConfig,
    EnvironmentsConfig,
    NotifyConfig,
    QuarantineConfig,
    SearchConfig,
    StoreConfig,
)
from orchestrator.errors import UnknownRepository, UsageError


class Config(Strict):
    """What to watch and how to run it. Relative paths are relative to the config file."""

    repositories: Annotated[list[RepositoryConfig], Field(min_length=1)]
    """The repositories to watch, at least one."""
    poll_interval: Annotated[float, Field(gt=0)] = 5
    """Seconds between polls of a repository elsewhere (`git ls-remote` first, a fetch only when a head
    moved); one on this machine is looked at every 0.5 s by `stat` of its refs."""
    state_dir: Path = Path(".orchestrator")
    """The SQLite store, the mirrors, the per-job checkouts and the caches."""
    results_dir: Path = Path("test_results")
    """The result files: `<repository>/<sha>/result.json`, `output.log`, `junit.xml`."""
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    """The HTTP API and dashboard."""
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    """The containers."""
    retries: Annotated[int, Field(ge=0, le=100)] = 2
    """Re-attempts of infrastructure failures (never of test failures)."""
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    """Webhooks."""
    environments: EnvironmentsConfig = Field(default_factory=EnvironmentsConfig)
    """Where the commits' dependencies come from."""
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    """Tests whose failures do not fail their jobs."""
    search: SearchConfig = Field(default_factory=SearchConfig)
    """The full-text index."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The store: SQLite by default, or PostgreSQL."""
    stop_grace: Annotated[float, Field(ge=0)] = 0
    """Seconds a stopping dispatcher waits for its running jobs before leaving them to be re-attached."""
    source: Path = Path("config.yaml")
    """The file this was read from (set by the loader, never written in one)."""

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [r.name for r in self.repositories]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"repository name {sorted(dup)[0]!r} is used twice")
        return self

    def repository(self, name: str) -> RepositoryConfig | None:
        return next((r for r in self.repositories if r.name == name), None)

    def named_repository(self, name: str | None) -> RepositoryConfig:
        """The named repository, or the only one configured; a usage error otherwise."""
        if name is None:
            if len(self.repositories) == 1:
                return self.repositories[0]
            raise UsageError("several repositories are configured: name one with --repo")
        repo = self.repository(name)
        if repo is None:
            raise UnknownRepository(f"unknown repository {name[:64]!r}")
        return repo

    @property
    def store_location(self) -> Path | str:
        """What ``Store`` opens: the PostgreSQL URL, or the SQLite file."""
        return self.store.url or self.db_path

    @property
    def db_path(self) -> Path:
        return self.state_dir / "orchestrator.db"
