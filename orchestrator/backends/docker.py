"""The local Docker Engine backend (docker-py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig

from orchestrator.backends.base import (
    OUTPUT_DIR, WORKSPACE, Backend, ContainerSpec, ContainerState, ImageInfo,
)
from orchestrator.errors import EngineUnavailable, ImageMissing

_ENGINE_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, DockerException)


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
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

    @property
    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                with _engine("connect"):
                    if self._docker_host:
                        self._client = docker.APIClient(base_url=self._docker_host, timeout=self._timeout)
                    else:
                        self._client = docker.from_env(timeout=self._timeout).api
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> None:
        with _engine("answer a ping"):
            self._api.ping()

    def image(self, tag: str) -> ImageInfo:
        try:
            with _engine("look up the runner image"):
                found = self._api.inspect_image(tag)
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {tag} is missing: run `orchestrator image build`") from None
        return ImageInfo(tag=tag, id=found["Id"])

    def create(self, spec: ContainerSpec) -> str:
        api = self._api
        host_config = api.create_host_config(
            binds={str(spec.workspace): {"bind": WORKSPACE, "mode": "rw"},
                   str(spec.output_dir): {"bind": OUTPUT_DIR, "mode": "rw"}},
            network_mode=spec.network,
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            nano_cpus=int(spec.cpus * 1e9),
            pids_limit=spec.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},
            init=True,
            log_config=LogConfig(
                type="json-file",
                config={"max-size": str(max(spec.log_max_bytes, 1 << 20)), "max-file": "2"},
            ),
        )
        try:
            with _engine("create a container"):
                created = api.create_container(
                    image=spec.image, name=spec.name, labels=spec.labels, user=spec.user,
                    working_dir=WORKSPACE, environment=spec.environment, host_config=host_config,
                    network_disabled=spec.network == "none", detach=True,
                )
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {spec.image} is missing: run `orchestrator image build`") from None
        return created["Id"]

    def start(self, container_id: str) -> ContainerState:
        with _engine("start a container"):
            self._api.start(container_id)
        state = self.inspect(container_id)
        if state is None:
            raise EngineUnavailable(f"container {container_id[:12]} vanished right after it started")
        return state

    def attach(self, container_id: str) -> Iterator[bytes]:
        # The engine's json-file log loses lines when it rotates under a follower (a
        # flooding test suite makes it rotate); an attach stream reads the output itself.
        with _engine("attach to a container"):
            stream = self._api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True)
        return _guarded(stream, "stream a container log")

    def logs(self, container_id: str, follow: bool = True) -> Iterator[bytes]:
        with _engine("stream a container log"):
            stream = self._api.logs(container_id, stdout=True, stderr=True, stream=True, follow=follow)
        try:
            with _engine("stream a container log"):
                yield from stream
        finally:
            stream.close()

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        api = self._api
        try:
            with _engine("wait for a container"):
                api.wait(container_id, timeout=max(seconds, 0.01))
        except requests.exceptions.RequestException as exc:
            if _is_read_timeout(exc):
                return None  # still running
            raise EngineUnavailable(f"Docker engine unreachable (wait for a container): {_short(exc)}") from None
        except NotFound:
            return None
        return self.inspect(container_id)

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            with _engine("inspect a container"):
                data = self._api.inspect_container(container_id)
        except NotFound:
            return None
        return _state(data)

    def kill(self, container_id: str) -> None:
        try:
            with _engine("kill a container"):
                self._api.kill(container_id)
        except (NotFound, APIError):
            pass  # already gone or already stopped

    def remove(self, container_id: str) -> None:
        try:
            with _engine("remove a container"):
                self._api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _engine("list containers"):
            found = self._api.containers(all=True, filters=filters)
        states = []
        for summary in found:
            state = self.inspect(summary["Id"])
            if state is not None:
                states.append(state)
        return states


def _guarded(stream, what: str) -> Iterator[bytes]:
    try:
        with _engine(what):
            yield from stream
    finally:
        stream.close()


def _state(data: dict) -> ContainerState:
    st = data.get("State", {})
    return ContainerState(
        id=data["Id"],
        status=st.get("Status", "unknown"),
        labels=data.get("Config", {}).get("Labels") or {},
        exit_code=st.get("ExitCode") if st.get("Status") in ("exited", "dead") else None,
        oom_killed=bool(st.get("OOMKilled")),
        started_at=_time(st.get("StartedAt")),
        finished_at=_time(st.get("FinishedAt")),
    )


def _time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times have nanoseconds; zero time means never."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    micro = (frac[:6]).ljust(6, "0") if frac else "000000"
    tz = "+00:00"
    if "+" in frac or "-" in frac:
        return datetime.fromisoformat(value)  # unusual offset form; let Python cope
    return datetime.fromisoformat(f"{head}.{micro}{tz}")
