"""The local Docker Engine backend: one container per job on one engine (engine.py).

The output is read through ``attach``, opened before the container starts (the json-file
log loses lines when it rotates under a follower, and a flooding suite makes it rotate),
and the json-file log is read only to catch up after a cut or a restart. What a
``ContainerSpec`` asks of the engine is ``create_args``, a pure function.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound

from orchestrator.backends.base import (
    CLAIMS_DIR,
    MAX_REPORT_BYTES,
    OUTPUT_DIR,
    WORKSPACE,
    Backend,
    ContainerSpec,
    ContainerState,
    ImageInfo,
)
from orchestrator.backends.confinement import confined
from orchestrator.backends.engine import Engine, Stream, engine_call
from orchestrator.errors import EngineUnavailable, ImageMissing
from orchestrator.workspace import read_regular_file

DEFAULT_CPU_SHARES = 1024  # the engine's weight for a container that names none


def create_args(spec: ContainerSpec) -> dict[str, Any]:
    """docker-py's ``create_container`` arguments for ``spec``, with ``host_config`` as the
    arguments of ``create_host_config``: the workspace and output folders, and the
    confinement every container of the project has (confinement.py)."""
    return {
        "image": spec.image,
        "name": spec.name,
        "labels": spec.labels,
        "user": spec.user,
        "working_dir": WORKSPACE,
        "environment": spec.variables,
        "network_disabled": spec.network == "none",
        "detach": True,
        "host_config": {
            "binds": {
                str(spec.workspace): {"bind": WORKSPACE, "mode": "rw"},
                str(spec.output_dir): {"bind": OUTPUT_DIR, "mode": "rw"},
                **({str(spec.claims): {"bind": CLAIMS_DIR, "mode": "rw"}} if spec.claims else {}),
            },
            **confined(
                network=spec.network,
                memory=spec.memory,
                cpus=spec.cpus,
                pids=spec.pids,
                tmp_size=spec.tmp_size,
                log_bytes=max(spec.log_max_bytes, 1 << 20),
                log_files=2,
                cpu_shares=spec.cpu_shares,
            ),
        },
    }


class DockerBackend(Backend):
    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._attached: dict[str, Stream] = {}  # prepared here: output streams opened before start

    def close(self) -> None:
        with self._lock:
            streams, self._attached = list(self._attached.values()), {}
        for stream in streams:
            stream.close()
        self.engine.close()

    def ping(self) -> None:
        self.engine.ping()

    def prioritise(self, container_id: str) -> None:
        with engine_call("update a container"):
            self.engine.api.update_container(container_id, cpu_shares=DEFAULT_CPU_SHARES)

    def memory_total(self) -> int | None:
        return self.engine.memory_total()

    def image(self, tag: str) -> ImageInfo:
        return self.engine.image(tag)

    def prepare(self, spec: ContainerSpec) -> str:
        container_id = self._create(spec)
        try:
            with engine_call("attach to a container"):
                stream = self.engine.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True)
        except EngineUnavailable:
            with contextlib.suppress(EngineUnavailable, APIError):
                self.destroy(container_id)  # else recovery's sweep removes it when the engine is back
            raise
        with self._lock:
            self._attached[container_id] = Stream(stream, "stream a container log")
        return container_id

    def _create(self, spec: ContainerSpec) -> str:
        api = self.engine.api
        args = create_args(spec)
        host_config = api.create_host_config(**args.pop("host_config"))
        try:
            with engine_call("create a container"):
                created = api.create_container(**args, host_config=host_config)
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {spec.image} is missing: run `orchestrator image build`") from None
        return str(created["Id"])

    def start(self, container_id: str) -> ContainerState:
        with engine_call("start a container"):
            self.engine.api.start(container_id)
        state = self.inspect(container_id)
        if state is None:
            raise EngineUnavailable(f"container {container_id[:12]} vanished right after it started")
        return state

    def output(self, container_id: str) -> Iterator[bytes]:
        with self._lock:
            attached = self._attached.pop(container_id, None)
        return iter(attached) if attached is not None else self.logs(container_id, follow=True)

    def logs(self, container_id: str, follow: bool = False) -> Iterator[bytes]:
        # a generator: the engine is asked on the first read, so a cut is the reader's to handle
        with engine_call("stream a container log"):
            stream = self.engine.api.logs(container_id, stdout=True, stderr=True, stream=True, follow=follow)
        yield from Stream(stream, "stream a container log")

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        return self.engine.wait(container_id, seconds)

    def inspect(self, container_id: str) -> ContainerState | None:
        return self.engine.inspect(container_id)

    def report(self, container_id: str, output_dir: Path) -> bytes | None:
        """The report in ``output_dir``; else where the container's output folder really is
        (a container adopted from another dispatcher on this engine, which shares its store
        but not its state_dir: the engine says where its folder is)."""
        found = read_regular_file(output_dir / "junit.xml", MAX_REPORT_BYTES)
        if found is not None:
            return found
        with engine_call("inspect a container's mounts"):
            mounts = self.engine.api.inspect_container(container_id).get("Mounts") or []
        source = next((Path(m["Source"]) for m in mounts if m.get("Destination") == OUTPUT_DIR), None)
        if source is None or source == output_dir.resolve():
            return None
        return read_regular_file(source / "junit.xml", MAX_REPORT_BYTES)

    def stop(self, container_id: str) -> None:
        self.engine.kill(container_id)

    def destroy(self, container_id: str) -> None:
        with self._lock:
            attached = self._attached.pop(container_id, None)
        if attached is not None:
            attached.close()
        self.engine.remove(container_id)

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with engine_call("list containers"):
            found = self.engine.api.containers(all=True, filters=filters)
        states = []
        for summary in found:
            state = self.inspect(summary["Id"])
            if state is not None:
                states.append(state)
        return states
