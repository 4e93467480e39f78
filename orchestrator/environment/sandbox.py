"""The containers of an environment build: nothing of it runs on the host.

Each container is one-shot, from the runner image, with no network, the memory, CPU and pids
limits of a test container, the build's deadline, the instance's label, and is removed at
its end:

1. **unpack**: ``uv pip install --no-build --target`` of the declared requirements into a
   folder of the host, as the runner's unprivileged user, isolated from any configuration,
   on the image's own Python (so its wheels fit that interpreter and glibc exactly). uv is
   this host's binary, mounted read-only. Its only way out is the index proxy's unix socket
   (index.py), which reaches the configured indexes alone. The host then lays that folder
   over the image as a layer of its own (layer.py): no second container.
2. **system packages**, when the repository names some: the .deb files fetched on the host
   installed as root (dpkg, no index), committed as the image the layer goes on.
3. **copy**, only on an engine that cannot load a layer by itself: the layer's files put in
   place as root, and committed.

Whatever a root container leaves is given back the runner's user, entrypoint and working
folder, and loses every setuid, setgid and world-writable bit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from docker.errors import APIError, NotFound

from orchestrator.backends.base import ImageInfo
from orchestrator.backends.confinement import confined
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.backends.images import commit
from orchestrator.errors import EngineUnavailable, InfrastructureError, OrchestratorError

log = logging.getLogger("orchestrator.environment")

SANDBOX_UNPACK = Path(__file__).with_name("sandbox_unpack.py")
MAX_LOG = 4 * 1024 * 1024  # bytes of a container's output kept in environment.log
CONFINE = """find / -xdev -type f -perm /6000 -exec chmod a-s {} +
find / -xdev -type d -perm -0002 ! -path /tmp -exec chmod o-w {} +
"""
SYSTEM_PACKAGES = (
    """set -e
echo "installing $(ls /tmp/environment/debs/*.deb | wc -l) Debian packages (dpkg)"
dpkg -i /tmp/environment/debs/*.deb
"""
    + CONFINE
)
COPY = (
    """set -e
tr '\\n' '\\0' < /tmp/environment/removed | xargs -0 -r rm -rf --
tar -xf /tmp/environment/layer.tar -C / --no-same-owner
"""
    + CONFINE
)


class TimedOut(OrchestratorError):
    """The build's deadline passed."""


class SandboxGone(InfrastructureError):
    """A build container was removed, or the engine lost it, before it ended."""


@dataclass(frozen=True)
class Limits:
    memory: str
    cpus: float
    pids: int
    tmp_size: str = "1g"


@dataclass(frozen=True)
class Ended:
    status: int
    oom_killed: bool
    output: str


class Sandbox:
    """One-shot containers on ``engine`` for one build, all ending by ``deadline``
    (``time.monotonic()``)."""

    def __init__(self, engine: Engine, labels: dict[str, str], limits: Limits, deadline: float, user: str):
        self.engine = engine
        self.labels = labels
        self.limits = limits
        self.deadline = deadline
        self.user = user  # the runner's unprivileged user, as test containers run

    def unpack(self, image: str, folder: Path, indexes: int, socket_dir: Path, uv: Path, out: IO[str]) -> Ended:
        """uv installs the requirements into ``folder/site`` (site.json beside it says where
        the image keeps its packages), through the proxy listening in ``socket_dir``."""
        command = [
            "/tmp/uv",
            "pip",
            "install",
            "--no-config",
            "--no-python-downloads",
            "--python",
            "python3",
            "--color",
            "never",
            "--no-progress",
            "--no-build",
            "--link-mode",
            "copy",
            "--cache-dir",
            "/tmp/uv-cache",
            "--target",
            "/tmp/environment/out/site",
            "--index-url",
            "http://127.0.0.1:{port}/simple/0/",
            *(a for n in range(1, indexes) for a in ("--extra-index-url", f"http://127.0.0.1:{{port}}/simple/{n}/")),
            "-r",
            "/tmp/environment/requirements.txt",
            *(["-c", "/tmp/environment/constraints.txt"] if (folder / "constraints.txt").stat().st_size else []),
        ]
        binds = {
            str(SANDBOX_UNPACK): ("/tmp/sandbox_unpack.py", "ro"),
            str(uv): ("/tmp/uv", "ro"),
            str(socket_dir): ("/tmp/index", "ro"),
            str(folder / "requirements.txt"): ("/tmp/environment/requirements.txt", "ro"),
            str(folder / "constraints.txt"): ("/tmp/environment/constraints.txt", "ro"),
            str(folder / "out"): ("/tmp/environment/out", "rw"),
        }
        entry = ["python3", "/tmp/sandbox_unpack.py", "/tmp/index/index.sock", "/tmp/environment/out", *command]
        with self._container(image, entry, binds, root=False) as container:
            return self._run(container, out)

    def system_packages(
        self, image: ImageInfo, folder: Path, tag: str, labels: dict[str, str], out: IO[str]
    ) -> tuple[Ended, str | None]:
        """dpkg installs the .deb files of ``folder/debs`` into a container of ``image``,
        committed as ``tag`` if that went well: (how it ended, the new image's id or None)."""
        binds = {str(folder / "debs"): ("/tmp/environment/debs", "ro")}
        return self._root(image, SYSTEM_PACKAGES, binds, tag, labels, out)

    def copy(
        self, image: ImageInfo, layer: Path, removed: Path, tag: str, labels: dict[str, str], out: IO[str]
    ) -> tuple[Ended, str | None]:
        """The files of ``layer`` (a tar with no whiteouts) put into a container of
        ``image`` after the paths listed in ``removed`` are taken away, committed as ``tag``."""
        binds = {str(layer): ("/tmp/environment/layer.tar", "ro"), str(removed): ("/tmp/environment/removed", "ro")}
        return self._root(image, COPY, binds, tag, labels, out)

    def _root(
        self,
        image: ImageInfo,
        script: str,
        binds: dict[str, tuple[str, str]],
        tag: str,
        labels: dict[str, str],
        out: IO[str],
    ) -> tuple[Ended, str | None]:
        with self._container(image.id, ["/bin/sh", "-c", script], binds, root=True) as container:
            ended = self._run(container, out)
            if ended.status != 0 or ended.oom_killed:
                return ended, None
            return ended, commit(self.engine, container, image, tag, labels)

    # -- one container ------------------------------------------------------------------

    @contextmanager
    def _container(
        self, image: str, command: list[str], binds: dict[str, tuple[str, str]], root: bool
    ) -> Iterator[str]:
        api = self.engine.api
        host_config = api.create_host_config(
            binds={host: {"bind": inside, "mode": mode} for host, (inside, mode) in binds.items()},
            **confined(
                network="none",
                memory=self.limits.memory,
                cpus=self.limits.cpus,
                pids=self.limits.pids,
                tmp_size=self.limits.tmp_size,
                log_bytes=MAX_LOG,
                log_files=1,
                installs_packages=root,
            ),
        )
        with engine_call("create an environment build's container"):
            created = api.create_container(
                image,
                entrypoint=command,
                user="0" if root else self.user,
                labels=self.labels,
                host_config=host_config,
                network_disabled=True,
                environment=None if root else {"HOME": "/tmp"},
            )
        try:
            yield created["Id"]
        finally:
            try:
                self.engine.remove(created["Id"])
            except (APIError, EngineUnavailable) as exc:  # recovery's sweep removes it (it has the instance's label)
                log.warning("environment build container %s not removed yet: %s", created["Id"][:12], exc)

    def _run(self, container: str, out: IO[str]) -> Ended:
        """Start ``container`` and wait for its end, killing it at the deadline (TimedOut)."""
        with engine_call("start an environment build's container"):
            self.engine.api.start(container)
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.engine.kill(container)
                self._copy_output(container, out)
                raise TimedOut("environment build timed out")
            state = self.engine.wait(container, min(left, 5.0))
            if state is not None and state.exited:
                output = self._copy_output(container, out)
                return Ended(state.exit_code if state.exit_code is not None else -1, state.oom_killed, output)
            if state is None and self.engine.inspect(container) is None:
                raise SandboxGone("an environment build's container disappeared while it ran")

    def _copy_output(self, container: str, out: IO[str]) -> str:
        try:
            with engine_call("read an environment build's output"):
                data = self.engine.api.logs(container, stdout=True, stderr=True, stream=False)
        except NotFound:
            data = b""
        text: str = data[-MAX_LOG:].decode("utf-8", "replace")
        out.write(text)
        out.flush()
        return text


@contextmanager
def socket_folder() -> Iterator[Path]:
    """A short folder for the proxy's socket (a unix socket's path has at most 107 bytes,
    and state folders can be deep), that the container's user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="orchestrator-index-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
