"""What an environment build is given and what it gives: its settings (from config.yaml),
the environment it made or found, and the two ways it fails (a failure of the commit's own
declarations, the job's result; an index that did not answer, tried again later). Apart from
the build itself (build.py), so that what reads them need not load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.base import ImageInfo
from orchestrator.config import Config, memory_bytes
from orchestrator.environment.needs import Needs
from orchestrator.environment.sandbox import Limits
from orchestrator.errors import InfrastructureError, OrchestratorError
from orchestrator.workspace import container_user

LABEL_ENVIRONMENT = "orchestrator.environment"
LABEL_REPOSITORY = "orchestrator.repository"
KEEP = 3  # environment images kept per repository, newest first


@dataclass(frozen=True)
class Settings:
    """How environments are made (config.yaml's ``environments`` and ``runner``)."""

    @classmethod
    def of(cls, config: Config, instance: str) -> Settings:
        runner, environments = config.runner, config.environments
        return cls(
            environments.index_url,
            tuple(environments.extra_index_urls),
            environments.timeout,
            memory_bytes(environments.cache_size),
            Limits(runner.memory, runner.cpus, runner.pids, runner.tmp_size),
            container_user(),
            instance,
        )

    index_url: str | None  # None: the index pip on this host is configured with (read once)
    extra_index_urls: tuple[str, ...]
    timeout: float  # the whole build, from its first step to the image
    cache_size: int  # bytes of wheel files kept, for every environment (the least recently used go first)
    limits: Limits  # of each build container, as of a test container
    user: str  # the runner's unprivileged user
    instance: str = ""  # the label the build containers carry (recovery removes leftovers)


class IndexUnreachable(InfrastructureError):
    """The package index did not answer as an index does: the job is tried again later."""


class EnvironmentBroken(OrchestratorError):
    """The environment could not be built: the job's result, not an infrastructure retry."""

    def __init__(self, reason: str, log_path: Path | None):
        super().__init__(f"environment build failed: {reason}")
        self.log_path = log_path


@dataclass(frozen=True)
class Environment:
    fingerprint: str
    image: ImageInfo
    needs: Needs
    python: str
    built: bool  # built for this job (else reused)

    def document(self) -> dict[str, Any]:
        """What result.json says of it."""
        return {
            "fingerprint": self.fingerprint,
            "image": self.image.tag,
            "python": self.python,
            "detected": list(self.needs.sources),
            "requirements": list(self.needs.requirements),
            "system_packages": list(self.needs.system_packages),
            "built": self.built,
        }
