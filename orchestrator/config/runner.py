"""``runner:``: where the containers run, from which images, and within which limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator import pythons
from orchestrator.config.base import Strict, is_size, memory_bytes


class RunnerConfig(Strict):
    """The containers every job runs in."""

    docker_host: str | None = None
    """The engine's address (`unix:///…`, `tcp://…`; on a Swarm, its manager's); default `DOCKER_HOST`, else
    the local socket."""
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:-]*$")] = "ci-runner:latest"
    """The runner image of the default Python; every other Python runs in this name tagged
    `py<version>` (`ci-runner:py3.13`)."""
    base_image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]*$")] = str(pythons.OFFERED[pythons.DEFAULT].base)
    """`FROM` of the default (3.11) Python's runner image; where it can be neither found nor pulled, a Debian
    bookworm base is built here with mmdebstrap. 3.13's is `python:3.13-slim-trixie`, else trixie built
    here; 3.14, 3.15 and PyPy's is forky, built here (docs/guide/pythons.md)."""
    parallelism: Annotated[int, Field(ge=1, le=256)] = 2
    """Containers at once."""
    warm: Annotated[int, Field(ge=0, le=256)] | None = None
    """Jobs started warm while every slot is busy, so that a slot that frees starts one at once
    (default: `parallelism`, fewer when the engine's memory cannot hold `parallelism + warm` containers of
    `memory`; `0`: off). On a Swarm a warm job is prepared ahead, its image pushed, and its service made
    when a slot frees."""
    timeout: Annotated[float, Field(gt=0)] = 600
    """Seconds a job may run, from its container's start."""
    memory: str = "1g"
    """Each container's memory, with no swap beyond it."""
    cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0
    """Each container's CPUs."""
    pids: Annotated[int, Field(ge=16)] = 512
    """Each container's processes and threads."""
    network: Annotated[str, Field(min_length=1)] = "none"
    """The Docker network of the test container: untrusted code gets none."""
    max_log_bytes: Annotated[int, Field(ge=1024)] = 10_000_000
    """The log kept of a job: past it, its head and its tail with a marker where it was cut."""
    disk: str = "2g"
    """What a job may write into its checkout and output folder, measured every 0.5 s; past it, the job is
    killed and ends `error` "disk limit exceeded"."""
    tmp_size: str = "1g"
    """The scratch space at `/tmp`, mounted exec (suites may run what they write there)."""
    backend: Literal["docker", "swarm"] = "docker"
    """`swarm`: each job a one-shot service on the Swarm whose manager is `docker_host`."""
    registry: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9._-]+)*$")] | None = None
    """Swarm: `host:port` of the registry every node pulls job images from (required with `swarm`)."""
    constraints: Annotated[
        list[Annotated[str, Field(pattern=r"^[\w.-]+ *(==|!=) *[^\s]+$", max_length=500)]], Field(max_length=50)
    ] = []
    """Swarm: placement constraints of the job services (`["node.role==worker"]`)."""
    swarm_job_networks: bool = True
    """Swarm, `network: none`: each job an internal network of its own (a service cannot join `none`);
    `false` where every worker's engine runs with `--bridge=none`, so that a task has no network at all
    (about 1 s less a job; each task checks it has nothing but loopback before anything of the commit
    runs, and is `error` otherwise)."""

    @model_validator(mode="after")
    def _swarm_needs_a_registry(self) -> RunnerConfig:
        if self.backend == "swarm" and self.registry is None:
            raise ValueError("backend swarm needs runner.registry (host:port of a registry every node reaches)")
        return self

    @field_validator("memory", "disk", "tmp_size")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not is_size(value) or memory_bytes(value) < 6 * 1024**2:
            raise ValueError(f"{value!r} is not a memory size of at least 6m like 512m or 1g")
        return value

    def image_for(self, python: str) -> str:
        """The runner image of a Python version (``base_image`` is the default version's FROM)."""
        return pythons.runner_image(self.image, python)
