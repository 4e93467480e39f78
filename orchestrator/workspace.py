"""The folders the orchestrator writes: ``state_dir`` and ``results_dir``, checked at start
(``prepare_directories``), and the per-job folders under ``<state_dir>/work/<job>/``: the
checkout (``src``) mounted at /workspace, the output folder (``out``) mounted at /ci-out,
and the log spool.

The container runs as a non-root user. When the orchestrator is root, the folders are
handed to the image's ``runner`` user (uid 1000); otherwise the container runs as the
orchestrator's own uid. Either way the orchestrator can delete everything afterwards.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import Config

RUNNER_UID = 1000
TRASH_PREFIX = ".discarded-"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def spool(self) -> Path:
        return self.root / "output.log.part"


def container_user() -> str:
    """The user containers run as: the runner image's unprivileged one when this process
    is root, else this process's own (so that it can read and remove what they write)."""
    uid = os.getuid()
    return f"{RUNNER_UID}:{RUNNER_UID}" if uid == 0 else f"{uid}:{os.getgid()}"


class Workspaces:
    def __init__(self, work_dir: Path):
        self.work_dir = work_dir

    def container_user(self) -> str:
        return container_user()

    def get(self, job_id: int) -> Workspace:
        return Workspace(self.work_dir / str(job_id))

    def prepare(self, job_id: int) -> Workspace:
        """An empty workspace (whatever an earlier attempt left is removed first)."""
        ws = self.get(job_id)
        remove_tree(ws.root)
        ws.src.mkdir(parents=True)
        make_output(ws.out)
        return ws

    def hand_over(self, ws: Workspace) -> None:
        """Give the checkout and output folder to the container's user."""
        for top in (ws.src, ws.out):
            self.hand_over_folder(top)

    def hand_over_folder(self, top: Path) -> None:
        """Give ``top`` and what it holds to the container's user."""
        if os.getuid() == 0:
            for dirpath, dirnames, filenames in os.walk(top):
                os.lchown(dirpath, RUNNER_UID, RUNNER_UID)
                for name in filenames + dirnames:
                    os.lchown(os.path.join(dirpath, name), RUNNER_UID, RUNNER_UID)

    def remove(self, job_id: int) -> None:
        remove_tree(self.get(job_id).root)

    def discard(self, job_id: int) -> Path | None:
        """Move a workspace out of the way (cheap, atomic) and return where it went, for
        removal later; None if there was none."""
        root = self.get(job_id).root
        trash = self.work_dir / f"{TRASH_PREFIX}{job_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(root, trash)
        except FileNotFoundError:
            return None
        return trash

    def job_ids(self) -> list[int]:
        if not self.work_dir.is_dir():
            return []
        return [int(p.name) for p in self.work_dir.iterdir() if p.name.isdigit()]

    def remove_discarded(self) -> None:
        """What a crash left set aside but not yet removed."""
        if self.work_dir.is_dir():
            for path in self.work_dir.iterdir():
                if path.name.startswith(TRASH_PREFIX):
                    remove_tree(path)


def remove_tree(path: Path) -> None:
    """Remove a folder whatever the container left in it (read-only folders included),
    never following links out of it. What vanishes meanwhile is gone as wanted: recovery's
    sweep of set-aside workspaces and the cleaner of an adopted job may remove one at once."""

    def _make_writable(func: Callable[..., Any], p: str, exc: Any) -> None:
        if isinstance(exc[1], FileNotFoundError):
            return
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except FileNotFoundError:
            pass

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_make_writable)


def read_regular_file(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is a regular file (not a link, FIFO or device) no larger
    than ``limit``, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None


def prepare_directories(config: Config) -> None:
    """Make ``state_dir`` and ``results_dir`` if missing, and refuse, with one line, what
    is not a directory this process can write into (a file, a dangling link, a link loop,
    a read-only place): found at start, not when the first result cannot be written."""
    for key in ("state_dir", "results_dir"):
        path: Path = getattr(config, key)
        try:
            if path.is_symlink() and not path.exists():
                raise ConfigError(f"{config.source}: {key}: {path} is a link that leads nowhere (or in a loop)")
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{config.source}: {key}: {path} is not a directory")
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except ConfigError:
            raise
        except OSError as exc:
            raise ConfigError(
                f"{config.source}: {key}: {path} is not a writable directory: {exc.strerror or exc}"
            ) from None


def make_output(out: Path) -> None:
    """A container's output folder, with the folder the commit is installed into (the
    runner image's ci-out.pth names it; Python 3.15 says so in every log when it is missing)."""
    out.mkdir()
    (out / "site").mkdir()
