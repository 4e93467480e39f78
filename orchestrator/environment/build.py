"""Environment images: the runner image plus what a commit declares it needs, built once
per repository and *fingerprint* (a hash of the declarations, the Python version and the
runner image) and shared by every commit that has the same.

Nothing a commit declares runs on this host: its requirements are downloaded here as
wheels only (``pip download --only-binary :all:``, which runs no package code), then
installed inside an image build that reaches no network. A requirement that exists only
as source is an environment error naming it. A failed build is recorded with its log and
its reason, and is not tried again for the same fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import pythons
from orchestrator.backends.base import ImageInfo
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.image import build_image, find_images, installed_packages, remove_image
from orchestrator.environment.debs import Apt
from orchestrator.environment.needs import Needs
from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator.environment")

LABEL_ENVIRONMENT = "orchestrator.environment"
LABEL_REPOSITORY = "orchestrator.repository"
KEEP = 3   # environment images kept per repository, newest first

DOCKERFILE = """FROM {base}
USER 0
COPY debs /opt/environment/debs
RUN if ls /opt/environment/debs/*.deb >/dev/null 2>&1; then dpkg -i /opt/environment/debs/*.deb; fi \\
 && rm -rf /opt/environment/debs \\
 && find / -xdev -type f -perm /6000 -exec chmod a-s {{}} + \\
 && find / -xdev -type d -perm -0002 ! -path /tmp -exec chmod o-w {{}} +
COPY wheels /opt/environment/wheels
COPY requirements.txt /opt/environment/requirements.txt
RUN python3 -m pip install --no-index --find-links /opt/environment/wheels --no-cache-dir \\
        -r /opt/environment/requirements.txt \\
 && rm -rf /opt/environment/wheels
USER 1000:1000
"""


class EnvironmentBroken(OrchestratorError):
    """The environment could not be built: the job's result, not an infrastructure retry."""

    def __init__(self, reason: str, log_path: Path | None):
        super().__init__(f"environment build failed: {reason}")
        self.log_path = log_path


@dataclass(frozen=True)
class Environment:
    fingerprint: str
    image: ImageInfo
    needs: Needs
    python: str
    built: bool   # built for this job (else reused)

    def document(self) -> dict[str, Any]:
        """What result.json says of it."""
        return {"fingerprint": self.fingerprint, "image": self.image.tag, "python": self.python,
                "detected": list(self.needs.sources), "requirements": list(self.needs.requirements),
                "system_packages": list(self.needs.system_packages),
                "built": self.built}


class Environments:
    def __init__(self, state_dir: Path, backend: DockerBackend,
                 publish: Callable[[ImageInfo], str | None] = lambda image: None):
        """``publish`` makes a new environment image reachable by every machine that runs
        jobs (Backend.publish: a Swarm's registry)."""
        self.state_dir = state_dir
        self.root = state_dir / "environments"
        self.backend = backend
        self.publish = publish
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._apt = threading.Lock()

    def ensure(self, repository: str, needs: Needs, runner: ImageInfo, python: str,
               on_build: Callable[[str], None] = lambda stage: None) -> Environment:
        """The environment image for ``needs``: found, or built now (once, however many
        jobs ask for it at the same time; ``on_build`` is told each stage of the build, in
        words: what a person watching the job sees it doing); EnvironmentBroken if it
        cannot be."""
        fingerprint = needs.fingerprint(python, runner.id)
        with self._lock(fingerprint):
            folder = self.root / repository / fingerprint[:16]
            failed = folder / "failed.json"
            if failed.is_file():
                raise EnvironmentBroken(json.loads(failed.read_text())["reason"], folder / "environment.log")
            for image in find_images(self.backend, {LABEL_ENVIRONMENT: fingerprint}):
                tag = image["tags"][0] if image["tags"] else image["id"]
                return Environment(fingerprint, ImageInfo(tag, image["id"]), needs, python, built=False)
            on_build("building environment")
            image = self._build(repository, needs, runner, python, fingerprint, folder, on_build)
            self._publish(repository, image)
            self.prune(repository, keep=KEEP)
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

    def _lock(self, fingerprint: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(fingerprint, threading.Lock())

    def _build(self, repository: str, needs: Needs, runner: ImageInfo, python: str, fingerprint: str,
               folder: Path, stage: Callable[[str], None]) -> ImageInfo:
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "environment.log"
        (folder / "requirements.txt").write_text("".join(f"{line}\n" for line in needs.requirements))
        (folder / "Dockerfile").write_text(DOCKERFILE.format(base=runner.id))
        log.info("%s: building environment %s (%d requirements)", repository, fingerprint[:12], len(needs.requirements))
        with open(log_path, "w") as out:
            out.write(f"environment {fingerprint} for {repository}, Python {python}\n"
                      f"detected: {', '.join(needs.sources) or 'nothing'}\n\n")
            out.flush()
            if needs.system_packages:
                stage(f"building environment: fetching {_count(len(needs.system_packages), 'system package')}")
            reason = self._system_packages(folder, needs.system_packages, runner, python, out)
            if reason is None:
                stage(f"building environment: downloading wheels for {_count(len(needs.requirements), 'requirement')}")
                reason = self._download(folder, python, out)
            if reason is None:
                tag = f"orchestrator-env/{repository}:{fingerprint[:16]}"

                def said(line: str) -> None:
                    out.write(line + "\n")
                    if step := _STEP.match(line):
                        stage(f"building environment: image step {step.group(1)}/{step.group(2)}")
                try:
                    return build_image(self.backend, folder, "Dockerfile", tag,
                                       {LABEL_ENVIRONMENT: fingerprint, LABEL_REPOSITORY: repository},
                                       said, network="none")
                except OrchestratorError as exc:
                    reason = str(exc).removeprefix("image build failed: ")
                    out.write(f"\n{reason}\n")
        _write_json(folder / "failed.json", {"reason": reason})
        raise EnvironmentBroken(reason, log_path)

    def _system_packages(self, folder: Path, packages: tuple[str, ...], runner: ImageInfo, python: str,
                         out) -> str | None:
        """The .deb files of ``packages`` and of what they depend on that the runner image
        lacks, from ``python``'s Debian release, fetched on this host into ``folder/debs``
        (installed by dpkg in the image build). None, or apt's reason."""
        (folder / "debs").mkdir(exist_ok=True)
        if not packages:
            return None
        apt = Apt(pythons.OFFERED[python].debian, self.state_dir)
        with self._apt:   # one apt at a time on a package tree
            if failed := apt.refresh(out):
                return failed
            closure, failed = apt.closure(packages)
            if failed:
                return failed
            missing = sorted(closure - installed_packages(self.backend, runner.id))
            out.write(f"system packages: {', '.join(packages)}; fetching {', '.join(missing) or 'nothing'}\n")
            return apt.download(missing, folder / "debs", out) if missing else None

    def _download(self, folder: Path, python: str, out) -> str | None:
        """Wheels for the requirements, for the container's Python and platform, into
        ``folder/wheels``; None, or the resolver's reason in one line."""
        (folder / "wheels").mkdir(exist_ok=True)
        platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(pythons.OFFERED[python].glibc, 16, -1)]
        args = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary", ":all:",
                "--python-version", python, "--implementation", "cp", "--dest", str(folder / "wheels"),
                *(a for p in [*platforms, "manylinux2014_x86_64", "linux_x86_64", "any"] for a in ("--platform", p)),
                "-r", str(folder / "requirements.txt")]
        proc = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        out.write(proc.stderr)
        if proc.returncode == 0:
            return None
        errors = [line.removeprefix("ERROR: ").strip() for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        return (errors[0] if errors else f"pip download exited {proc.returncode}")[:500]

    def prune(self, repository: str | None = None, keep: int = 0) -> list[str]:
        """Remove environment images beyond the ``keep`` newest of each repository (one a
        container still uses stays, and is tried again next time); what was removed."""
        labels: dict[str, str | None] = {LABEL_ENVIRONMENT: None, **({LABEL_REPOSITORY: repository} if repository else {})}
        by_repository: dict[str, list[dict]] = {}
        for image in find_images(self.backend, labels):
            by_repository.setdefault(image["labels"].get(LABEL_REPOSITORY, ""), []).append(image)
        removed = []
        for images in by_repository.values():
            for image in images[keep:]:
                if remove_image(self.backend, image["id"], image["tags"]):
                    removed.append((image["tags"] or [image["id"]])[0])
        return removed


_STEP = re.compile(r"^Step (\d+)/(\d+) :")   # the legacy builder's line for each step


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
