"""Runner backends: where a job's container runs (the local engine now; a Swarm later)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.config import RunnerConfig


def connect(runner: "RunnerConfig") -> "DockerBackend":
    """The backend ``runner`` names: the one place that picks it (it connects lazily)."""
    from orchestrator.backends.docker import DockerBackend

    return DockerBackend(runner.docker_host)
