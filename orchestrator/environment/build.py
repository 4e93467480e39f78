"""Environment images: the runner image plus what a commit declares it needs, built once
per repository and *fingerprint* (a hash of the declarations, the Python version and the
runner image) and shared by every commit that has the same.

Nothing a commit declares runs on this host, nor chooses what it fetches: its requirements
(name-based only: needs.py) are resolved and unpacked by uv, wheels only, in a container with
no network whose one way out is a proxy to the indexes of config.yaml (index.py); the host
lays what it unpacked over the runner image as one more layer (layer.py), read as data;
system packages are installed by dpkg in a second container with no network. Each container
has a test container's limits, and the whole build has a deadline (sandbox.py).
A build that fails the same way every time (no such distribution,
no resolution, an install that fails) is recorded with its log and reason and not tried
again for the same fingerprint; an index that could not be reached is an infrastructure
failure, tried again by the retry policy; a build past its deadline ends the job
``error`` and is tried again by the next commit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from orchestrator import pythons
from orchestrator.backends.base import LABEL_INSTANCE, ImageInfo
from orchestrator.backends.engine import Engine
from orchestrator.backends.images import LoadRefused, dpkg_status, find_images, load_layer, remove_image
from orchestrator.environment.debs import Apt, AptTimedOut
from orchestrator.environment.index import IndexProxy, host_index_url
from orchestrator.environment.layer import BadSite, Layer, Site
from orchestrator.environment.needs import Needs
from orchestrator.environment.sandbox import Ended, Sandbox, TimedOut, socket_folder
from orchestrator.environment.settings import (
    KEEP,
    LABEL_ENVIRONMENT,
    LABEL_REPOSITORY,
    Environment,
    EnvironmentBroken,
    IndexUnreachable,
    Settings,
)
from orchestrator.environment.wheels import WheelCache
from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator.environment")

# the resolver's words for a failure that the same declarations meet again whatever the
# network does (uv's, and dpkg's)
_REPEATS = re.compile(
    r"No solution found when resolving|not found in the package registry|no usable wheels|"
    r"unsatisfiable|requires a different Python|Invalid requirement|Failed to parse|"
    r"has no installation candidate|Unable to locate package"
)


class Environments:
    def __init__(
        self,
        state_dir: Path,
        engine: Engine,
        settings: Settings,
        publish: Callable[[ImageInfo], str | None] = lambda _image: None,
    ):
        """``publish`` makes a new environment image reachable by every machine that runs
        jobs (Backend.publish: a Swarm's registry)."""
        self.state_dir = state_dir
        self.root = state_dir / "environments"
        self.engine = engine
        self.settings = settings
        self.publish = publish
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._apt = threading.Lock()
        self._index_url = settings.index_url
        self.wheels = WheelCache(state_dir / "cache" / "wheels", settings.cache_size)
        self._loads = True  # the engine takes a lone layer (else: a container and a commit)

    def ensure(
        self,
        repository: str,
        needs: Needs,
        runner: ImageInfo,
        python: str,
        on_build: Callable[[str], None] = lambda _stage: None,
    ) -> Environment:
        """The environment image for ``needs``: found, or built now (once, however many
        jobs ask for it at the same time; ``on_build`` is told each stage of the build, in
        words: what a person watching the job sees it doing). EnvironmentBroken if it
        cannot be; IndexUnreachable if it could not be tried."""
        fingerprint = needs.fingerprint(python, runner.id)
        with self._lock(fingerprint):
            folder = self.root / repository / fingerprint[:16]
            failed = folder / "failed.json"
            if failed.is_file():
                raise EnvironmentBroken(json.loads(failed.read_text())["reason"], folder / "environment.log")
            for found in find_images(self.engine, {LABEL_ENVIRONMENT: fingerprint, LABEL_REPOSITORY: repository}):
                tag = found["tags"][0] if found["tags"] else found["id"]
                return Environment(fingerprint, ImageInfo(tag, found["id"]), needs, python, built=False)
            on_build("building environment")
            image = self._build(repository, needs, runner, python, fingerprint, folder, on_build)
            self._publish(repository, image)
            try:  # best effort: the environment is built; what is not pruned now is pruned later
                self.prune(repository, keep=KEEP)
            except OrchestratorError as exc:
                log.warning("%s: older environments not pruned (%s)", repository, exc)
            return Environment(fingerprint, image, needs, python, built=True)

    def _publish(self, repository: str, image: ImageInfo) -> None:
        """Best effort: a registry that is away now gets the layers with the first job's push."""
        try:
            where = self.publish(image)
        except OrchestratorError as exc:
            log.warning("%s: environment %s not published (%s)", repository, image.tag, exc)
            return
        if where:
            log.info("%s: environment %s published as %s", repository, image.tag, where)

    def log_of(self, repository: str, document: dict[str, Any] | None) -> Path | None:
        """The build log of the environment a job's ``document`` names, if built for that job
        (a reused environment's log belongs to the job that built it)."""
        if not document or not document.get("built"):
            return None
        return self.root / repository / str(document["fingerprint"])[:16] / "environment.log"

    def indexes(self) -> tuple[str, ...]:
        """The configured indexes; without ``environments.index_url``, the one pip on this
        host is configured with (asked once), then the extra ones."""
        if self._index_url is None:
            try:
                listed = subprocess.run(
                    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                listed = ""
            self._index_url = host_index_url(listed)
            log.info("environments resolve from %s (the index of pip on this host)", self._index_url)
        return (self._index_url, *self.settings.extra_index_urls)

    def _lock(self, fingerprint: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(fingerprint, threading.Lock())

    def _build(
        self,
        repository: str,
        needs: Needs,
        runner: ImageInfo,
        python: str,
        fingerprint: str,
        folder: Path,
        stage: Callable[[str], None],
    ) -> ImageInfo:
        deadline = time.monotonic() + self.settings.timeout
        self._lay_out(folder, needs)
        log.info("%s: building environment %s (%d requirements)", repository, fingerprint[:12], len(needs.requirements))
        labels = {LABEL_ENVIRONMENT: fingerprint, LABEL_REPOSITORY: repository}
        sandbox = Sandbox(
            self.engine,
            {LABEL_INSTANCE: self.settings.instance, **labels},
            self.settings.limits,
            deadline,
            self.settings.user,
        )
        tag = f"orchestrator-env/{repository}:{fingerprint[:16]}"
        below = None  # the image with the system packages, when there are some
        with open(folder / "environment.log", "w") as out:
            out.write(
                f"environment {fingerprint} for {repository}, Python {python}\n"
                f"detected: {', '.join(needs.sources) or 'nothing'}\n\n"
            )
            out.flush()
            try:
                layer = Layer((), (), ())
                if needs.requirements:  # first: declarations that cannot be met fail before any apt work
                    stage(f"building environment: resolving {_count(len(needs.requirements), 'requirement')}")
                    layer = self._unpack(sandbox, runner, folder, out)
                base = runner
                if needs.system_packages:
                    stage(f"building environment: fetching {_count(len(needs.system_packages), 'system package')}")
                    self._system_packages(folder, needs.system_packages, runner, python, out, deadline)
                    stage("building environment: installing system packages")
                    below = self._dpkg(sandbox, runner, folder, f"{tag}-system", out)
                    base = below
                stage("building environment: installing")
                return self._lay(sandbox, base, layer, folder, tag, labels, out)
            except (TimedOut, AptTimedOut):
                reason = f"environment build timed out after {self.settings.timeout:g} s"
                out.write(f"\n{reason}\n")
                raise EnvironmentBroken(reason, folder / "environment.log") from None
            except _Failed as exc:
                reason = f"{exc.reason} (Python {python})"  # a variant's failure names its Python
                out.write(f"\n{reason}\n")
                if exc.repeats:
                    _write_json(folder / "failed.json", {"reason": reason})
                raise EnvironmentBroken(reason, folder / "environment.log") from None
            finally:
                self._tidy(repository, folder, tag, below)

    def _lay_out(self, folder: Path, needs: Needs) -> None:
        """The build's folder: its scratch folders fresh, the declarations written."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("out", "debs"):
            _fresh_folder(folder / name, self.settings.user)
        (folder / "requirements.txt").write_text("".join(f"{line}\n" for line in needs.requirements))
        (folder / "constraints.txt").write_text("".join(f"{line}\n" for line in needs.constraints))

    def _tidy(self, repository: str, folder: Path, tag: str, below: ImageInfo | None) -> None:
        """After a build, whatever its outcome: the image has the scratch files, or nothing
        needs them (the log and the declarations stay); the system packages' image, whose
        layers are the environment's now, loses only its name."""
        for name in ("out", "debs"):
            shutil.rmtree(folder / name, ignore_errors=True)
        for name in ("layer.tar", "removed"):
            (folder / name).unlink(missing_ok=True)
        if below is not None:
            try:
                remove_image(self.engine, below.id, [f"{tag}-system"])
            except OrchestratorError as exc:  # never in place of the build's own outcome
                log.warning("%s: %s-system not removed (%s)", repository, tag, exc)

    def _system_packages(
        self, folder: Path, packages: tuple[str, ...], runner: ImageInfo, python: str, out: IO[str], deadline: float
    ) -> None:
        """The .deb files that ``packages`` need in the runner image, from ``python``'s
        Debian release, fetched on this host into ``folder/debs`` (debs.py)."""
        apt = Apt(pythons.OFFERED[python].debian, self.state_dir)
        with self._apt:  # one apt at a time on a package tree
            failed = apt.refresh(out, deadline)
            if failed:
                raise IndexUnreachable(f"Debian's package lists could not be read: {failed}")
            status = dpkg_status(self.engine, runner.id, self.state_dir / "apt" / "status")
            out.write(f"system packages: {', '.join(packages)}\n")
            failed = apt.fetch(packages, status, folder / "debs", out, deadline)
        if failed:
            raise _Failed(
                f"system packages: {failed}",
                repeats="Unable to locate package" in failed
                or "unmet dependencies" in failed
                or "has no installation candidate" in failed,
            )

    def _unpack(self, sandbox: Sandbox, runner: ImageInfo, folder: Path, out: IO[str]) -> Layer:
        """The requirements resolved and unpacked for the runner image's Python, into
        ``folder/out/site``; the layer they make over the runner image."""
        indexes = self.indexes()
        proxy = IndexProxy(list(indexes), cache=self.wheels)
        with socket_folder() as sockets, proxy.serving(sockets / "index.sock"):
            ended = sandbox.unpack(runner.id, folder, len(indexes), sockets, uv_binary(), out)
        out.write("".join(f"index proxy: {url}\n" for url in proxy.fetched[:2000]))
        if ended.status != 0:
            if proxy.trouble:  # the index, not the declarations: not a verdict on the commit
                out.write("".join(f"index proxy: trouble: {what}\n" for what in proxy.trouble))
                raise IndexUnreachable(f"package index unreachable: {proxy.trouble[0]}"[:300])
            reason = _reason(ended)
            raise _Failed(reason, repeats=bool(_REPEATS.search(ended.output)) and not ended.oom_killed)
        try:
            layer = Layer.plan(folder / "out" / "site", Site.read(folder / "out" / "site.json"))
        except (BadSite, OSError) as exc:
            raise _Failed(f"the unpacked packages could not be read: {exc}", repeats=False) from None
        if layer.left_out:
            out.write("left out (not a file or folder an install makes): " + ", ".join(layer.left_out[:50]) + "\n")
        return layer

    def _dpkg(self, sandbox: Sandbox, runner: ImageInfo, folder: Path, tag: str, out: IO[str]) -> ImageInfo:
        ended, image_id = sandbox.system_packages(runner, folder, tag, {}, out)
        if image_id is None:
            raise _Failed(f"installing system packages failed: {_reason(ended)}", repeats=True)
        return ImageInfo(tag, image_id)

    def _lay(
        self,
        sandbox: Sandbox,
        base: ImageInfo,
        layer: Layer,
        folder: Path,
        tag: str,
        labels: dict[str, str],
        out: IO[str],
    ) -> ImageInfo:
        """``layer`` over ``base`` as the image ``tag``: loaded as it is where the engine
        takes a lone layer, else put in place by a root container and committed."""
        if self._loads:
            with open(folder / "layer.tar", "wb") as tar:
                diff_id = layer.write(tar)
            try:
                image_id = load_layer(  # labelled as a committed build container's image would be
                    self.engine, base, folder / "layer.tar", diff_id, tag, {**sandbox.labels, **labels}
                )
                out.write(
                    f"laid over the image: {len(layer.entries)} files and folders ({len(layer.removed)} replaced)\n"
                )
                return ImageInfo(tag, image_id)
            except LoadRefused as exc:
                log.warning("%s; environments are committed from a container instead", exc)
                self._loads = False
        with open(folder / "layer.tar", "wb") as tar:
            layer.write(tar, whiteouts=False)
        (folder / "removed").write_text("".join(f"{path}\n" for path in layer.removed))
        ended, copied = sandbox.copy(base, folder / "layer.tar", folder / "removed", tag, labels, out)
        if copied is None:
            raise _Failed(f"installing failed: {_reason(ended)}", repeats=True)
        return ImageInfo(tag, copied)

    def prune(self, repository: str | None = None, keep: int = 0) -> list[str]:
        return prune(self.engine, repository, keep)


def prune(engine: Engine, repository: str | None = None, keep: int = 0) -> list[str]:
    """Remove environment images beyond the ``keep`` newest of each repository (one a
    container still uses stays, and is tried again next time); what was removed."""
    labels: dict[str, str | None] = {LABEL_ENVIRONMENT: None, **({LABEL_REPOSITORY: repository} if repository else {})}
    by_repository: dict[str, list[dict]] = {}
    for image in find_images(engine, labels):
        by_repository.setdefault(image["labels"].get(LABEL_REPOSITORY, ""), []).append(image)
    removed = []
    for images in by_repository.values():
        for image in images[keep:]:
            if remove_image(engine, image["id"], image["tags"]):
                removed.append((image["tags"] or [image["id"]])[0])
    return removed


class _Failed(Exception):
    """A build step failed; ``repeats``: it would fail the same way again (recorded)."""

    def __init__(self, reason: str, repeats: bool):
        super().__init__(reason)
        self.reason = reason[:500]
        self.repeats = repeats


def _reason(ended: Ended) -> str:
    """The reason in one line: the resolver's (or dpkg's) first error, with its cause when
    it gives one, else how the container ended."""
    if ended.oom_killed:
        return "out of memory at the build's memory limit"
    lines = ended.output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("error: ", "ERROR: ", "dpkg: error")):
            cause = lines[i + 1].strip() if i + 1 < len(lines) else ""
            said = cause.removeprefix("cause: ") if cause.startswith("cause: ") else line.split(" ", 1)[1].strip()
            return " ".join(said.split())
    return f"exited {ended.status}"


def uv_binary() -> Path:
    """uv, from this host's install of the orchestrator (a dependency): run in the unpack
    container, mounted read-only."""
    try:
        from uv import find_uv_bin
    except ImportError:
        raise OrchestratorError("uv is not installed on this host (pip install uv)") from None
    return Path(find_uv_bin())


def _fresh_folder(path: Path, user: str) -> None:
    """An empty folder the build containers' user may write."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    if os.getuid() == 0:
        uid, _, gid = user.partition(":")
        os.chown(path, int(uid), int(gid or uid))


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
