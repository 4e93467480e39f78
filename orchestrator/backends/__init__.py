"""Runner backends: where a job's container runs (one Docker engine, or a Swarm).

May import: store, workspace and the ground floor below them (tests/unit/test_architecture.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend
    from orchestrator.backends.engine import Engine
    from orchestrator.config import RunnerConfig


def connect(runner: RunnerConfig, engine: Engine) -> Backend:
    """The backend ``runner`` names, on ``engine`` (one engine's, or a Swarm manager's): the
    one place that picks it (it connects lazily)."""
    if runner.backend == "swarm":
        from orchestrator.backends.swarm import SwarmBackend

        assert runner.registry is not None
        return SwarmBackend(engine, runner.registry, runner.constraints, job_networks=runner.swarm_job_networks)
    from orchestrator.backends.docker import DockerBackend

    return DockerBackend(engine)
