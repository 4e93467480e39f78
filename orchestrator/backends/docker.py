"""The local Docker Engine backend (docker-py).

The engine's quirks stay in here: the output is read through ``attach``, opened before
the container starts (the json-file log loses lines when it rotates under a follower, and
a flooding suite makes it rotate), and the json-file log is read only to catch up after a
cut or a restart; the engine's status strings become ``Phase``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig

from orchestrator.backends.base import (
    MAX_REPORT_BYTES, OUTPUT_DIR, WORKSPACE, Backend, ContainerSpec, ContainerState, ImageInfo, Phase,
)
from orchestrator.errors import EngineUnavailable, ImageMissing
from orchestrator.models import parse_iso
from orchestrator.workspace import read_regular_file

DEFAULT_CPU_SHARES = 1024   # the engine's weight for a container that names none
_PHASES = {"created": Phase.CREATED, "exited": Phase.EXITED, "dead": Phase.EXITED}

_ENGINE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, DockerException)


@contextlib.contextmanager
def engine_call(what: str) -> Iterator[None]:
    """docker-py's and requests' errors, for one call of ``what``: NotFound and 4xx stay
    as they are (the caller decides), all else is EngineUnavailable."""
    try:
        yield
    except (NotFound, ImageNotFound):
        raise
    except requests.exceptions.RequestException as exc:
        if _is_read_timeout(exc):
            raise
        raise EngineUnavailable(f"Docker engine unreachable ({what}): {_short(exc)}") from None
    except APIError as exc:
        if exc.status_code is not None and exc.status_code < 500:
            raise
        raise EngineUnavailable(f"Docker engine failed to {what}: {exc.explanation or exc}") from None
    except _ENGINE_ERRORS as exc:
        raise EngineUnavailable(f"Docker engine unreachable ({what}): {_short(exc)}") from None


def _is_read_timeout(exc: BaseException) -> bool:
    """docker-py's unix-socket adapter reports a read timeout as a ConnectionError."""
    return isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


class DockerBackend(Backend):
    """Connects lazily, so a dispatcher can start (and wait) while the engine is down."""

    def __init__(self, docker_host: str | None = None, timeout: float = 30):
        self._docker_host = docker_host
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: docker.APIClient | None = None
        self._attached: dict[str, _Stream] = {}  # prepared here: output streams opened before start

    @property
    def builder(self) -> "DockerBackend":
        return self

    @property
    def api(self) -> docker.APIClient:
        """The docker-py client, connected on first use (also for building images)."""
        with self._lock:
            if self._client is None:
                with engine_call("connect"):
                    if self._docker_host:
                        self._client = docker.APIClient(base_url=self._docker_host, timeout=self._timeout)
                    else:
                        self._client = docker.from_env(timeout=self._timeout).api
            return self._client

    def close(self) -> None:
        with self._lock:
            streams, self._attached = list(self._attached.values()), {}
            for stream in streams:
                stream.close()
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> None:
        with engine_call("answer a ping"):
            self.api.ping()

    def prioritise(self, container_id: str) -> None:
        with engine_call("update a container"):
            self.api.update_container(container_id, cpu_shares=DEFAULT_CPU_SHARES)

    def memory_total(self) -> int | None:
        with engine_call("describe itself"):
            return int(self.api.info().get("MemTotal") or 0) or None

    def image(self, tag: str) -> ImageInfo:
        try:
            with engine_call("look up the runner image"):
                found = self.api.inspect_image(tag)
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {tag} is missing: run `orchestrator image build`") from None
        return ImageInfo(tag=tag, id=found["Id"])

    def prepare(self, spec: ContainerSpec) -> str:
        container_id = self._create(spec)
        try:
            with engine_call("attach to a container"):
                stream = self.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True)
        except EngineUnavailable:
            with contextlib.suppress(EngineUnavailable, APIError):
                self.destroy(container_id)  # else recovery's sweep removes it when the engine is back
            raise
        with self._lock:
            self._attached[container_id] = _Stream(stream, "stream a container log")
        return container_id

    def _create(self, spec: ContainerSpec) -> str:
        api = self.api
        host_config = api.create_host_config(
            binds={str(spec.workspace): {"bind": WORKSPACE, "mode": "rw"},
                   str(spec.output_dir): {"bind": OUTPUT_DIR, "mode": "rw"}},
            network_mode=spec.network,
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            nano_cpus=int(spec.cpus * 1e9),
            cpu_shares=spec.cpu_shares,
            pids_limit=spec.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={spec.tmp_size}"},
            init=True,
            log_config=LogConfig(
                type="json-file",
                config={"max-size": str(max(spec.log_max_bytes, 1 << 20)), "max-file": "2"},
            ),
        )
        try:
            with engine_call("create a container"):
                created = api.create_container(
                    image=spec.image, name=spec.name, labels=spec.labels, user=spec.user,
                    working_dir=WORKSPACE, environment=spec.environment, host_config=host_config,
                    network_disabled=spec.network == "none", detach=True,
                )
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {spec.image} is missing: run `orchestrator image build`") from None
        return created["Id"]

    def start(self, container_id: str) -> ContainerState:
        with engine_call("start a container"):
            self.api.start(container_id)
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
            stream = self.api.logs(container_id, stdout=True, stderr=True, stream=True, follow=follow)
        yield from _Stream(stream, "stream a container log")

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        api = self.api
        try:
            with engine_call("wait for a container"):
                api.wait(container_id, timeout=max(seconds, 0.01))
        except NotFound:   # first: docker-py's NotFound is a requests exception too
            return None
        except requests.exceptions.RequestException as exc:
            if _is_read_timeout(exc):
                return None  # still running
            raise EngineUnavailable(f"Docker engine unreachable (wait for a container): {_short(exc)}") from None
        return self.inspect(container_id)

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            with engine_call("inspect a container"):
                data = self.api.inspect_container(container_id)
        except NotFound:
            return None
        return _state(data)

    def report(self, container_id: str, output_dir: Path) -> bytes | None:
        return read_regular_file(output_dir / "junit.xml", MAX_REPORT_BYTES)

    def stop(self, container_id: str) -> None:
        try:
            with engine_call("kill a container"):
                self.api.kill(container_id)
        except (NotFound, APIError):
            pass  # already gone or already stopped

    def destroy(self, container_id: str) -> None:
        with self._lock:
            attached = self._attached.pop(container_id, None)
        if attached is not None:
            attached.close()
        try:
            with engine_call("remove a container"):
                self.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with engine_call("list containers"):
            found = self.api.containers(all=True, filters=filters)
        states = []
        for summary in found:
            state = self.inspect(summary["Id"])
            if state is not None:
                states.append(state)
        return states


class _Stream:
    """An engine output stream whose errors are EngineUnavailable, and whose connection
    ``close`` ends even when it was never read (a warm container discarded, say)."""

    def __init__(self, stream, what: str):
        self._stream, self._what = stream, what

    def __iter__(self) -> Iterator[bytes]:
        try:
            with engine_call(self._what):
                yield from self._stream
        finally:
            self.close()

    def close(self) -> None:
        self._stream.close()


def _state(data: dict) -> ContainerState:
    st = data.get("State", {})
    phase = _PHASES.get(st.get("Status", ""), Phase.RUNNING)  # running, paused, restarting, removing
    return ContainerState(
        id=data["Id"],
        phase=phase,
        labels=data.get("Config", {}).get("Labels") or {},
        exit_code=st.get("ExitCode") if phase is Phase.EXITED else None,
        oom_killed=bool(st.get("OOMKilled")),
        started_at=parse_iso(st.get("StartedAt")),
        finished_at=parse_iso(st.get("FinishedAt")),
    )
