"""One Docker Engine, through docker-py: the client, connected lazily (a dispatcher can
start, and wait, while the engine is down); the translation of docker-py's and requests'
errors into ours (``engine_call``); the engine's output streams; and the few container
primitives every user of the engine shares (the local backend, the environment build's
containers): wait, inspect, kill, remove.

The engine's quirks stay in here and in the modules that use it: its status strings
become ``Phase``, a read timeout of its unix-socket adapter becomes "still running".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from orchestrator.backends.base import ContainerState, ImageInfo, Phase
from orchestrator.errors import EngineUnavailable, ImageMissing
from orchestrator.models import parse_iso

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
    except APIError as exc:  # before RequestException, of which it is one: a 409 is an answer, not an outage
        if exc.status_code is not None and exc.status_code < 500:
            raise
        raise EngineUnavailable(f"Docker engine failed to {what}: {exc.explanation or exc}") from None
    except requests.exceptions.RequestException as exc:
        if is_read_timeout(exc):
            raise
        raise EngineUnavailable(f"Docker engine unreachable ({what}): {short(exc)}") from None
    except _ENGINE_ERRORS as exc:
        raise EngineUnavailable(f"Docker engine unreachable ({what}): {short(exc)}") from None


def is_read_timeout(exc: BaseException) -> bool:
    """docker-py's unix-socket adapter reports a read timeout as a ConnectionError."""
    return isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args
    )


def short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


class Engine:
    def __init__(self, docker_host: str | None = None, timeout: float = 30):
        self._docker_host = docker_host
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: docker.APIClient | None = None

    @property
    def api(self) -> docker.APIClient:
        """The docker-py client, connected on first use."""
        with self._lock:
            if self._client is None:
                with engine_call("connect"):
                    if self._docker_host:
                        self._client = docker.APIClient(base_url=self._docker_host, timeout=self._timeout)
                    else:
                        self._client = docker.from_env(timeout=self._timeout).api
            return self._client

    def close(self) -> None:
        """Release the connection; the engine may be used again afterwards (it reconnects)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> None:
        with engine_call("answer a ping"):
            self.api.ping()

    def memory_total(self) -> int | None:
        with engine_call("describe itself"):
            return int(self.api.info().get("MemTotal") or 0) or None

    def image(self, tag: str) -> ImageInfo:
        """The image by that name, or ImageMissing."""
        try:
            with engine_call("look up an image"):
                found = self.api.inspect_image(tag)
        except (NotFound, ImageNotFound):
            raise ImageMissing(f"runner image {tag} is missing: run `orchestrator image build`") from None
        return ImageInfo(tag=tag, id=found["Id"])

    # -- containers -----------------------------------------------------------------------

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        """The container's state once it has exited, or None if it still runs after
        ``seconds`` or is gone."""
        try:
            with engine_call("wait for a container"):
                self.api.wait(container_id, timeout=max(seconds, 0.01))
        except NotFound:  # first: docker-py's NotFound is a requests exception too
            return None
        except requests.exceptions.RequestException as exc:
            if is_read_timeout(exc):
                return None  # still running
            raise EngineUnavailable(f"Docker engine unreachable (wait for a container): {short(exc)}") from None
        return self.inspect(container_id)

    def inspect(self, container_id: str) -> ContainerState | None:
        """None if the container does not exist."""
        try:
            with engine_call("inspect a container"):
                data = self.api.inspect_container(container_id)
        except NotFound:
            return None
        return state(data)

    def kill(self, container_id: str) -> None:
        """Best effort: a container already gone or stopped is fine."""
        try:
            with engine_call("kill a container"):
                self.api.kill(container_id)
        except (NotFound, APIError):
            pass

    def remove(self, container_id: str) -> None:
        """Idempotent: whatever state (or absence) the container is in."""
        try:
            with engine_call("remove a container"):
                self.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise


class ClosableStream(Protocol):
    """What docker-py streams a log as (its CancellableStream): chunks, and a close."""

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


class Stream:
    """An engine output stream whose errors are EngineUnavailable, and whose connection
    ``close`` ends even when it was never read (a warm container discarded, say)."""

    def __init__(self, stream: ClosableStream, what: str):
        self._stream, self._what = stream, what

    def __iter__(self) -> Iterator[bytes]:
        try:
            with engine_call(self._what):
                yield from self._stream
        finally:
            self.close()

    def close(self) -> None:
        self._stream.close()


def state(data: dict) -> ContainerState:
    """A container's state from the engine's inspection of it."""
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
