"""The runner images, one per Python: built from ``Dockerfile.runner`` and the files of the
``runner_image`` package, which ship inside the installed orchestrator, so that a wheel
installed anywhere builds them as a source checkout does.

It works where no registry is reachable: the image's Python packages come from a wheelhouse
the host fills with ``pip download`` (pure-Python wheels, so one wheelhouse serves every
version) in the user's cache, and when a base image is neither on the engine nor pullable,
``bootstrap-base.sh`` builds that Python's Debian release locally.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from docker.errors import APIError

from orchestrator import pythons
from orchestrator.backends.base import ImageInfo
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.backends.images import exists, find_images
from orchestrator.config import Config
from orchestrator.errors import EngineUnavailable, OrchestratorError
from orchestrator.pythons import Python

WHEEL_PYTHON = "3.9"  # oldest Python the wheelhouse serves; newer ones need a subset
DOCKERFILE = "Dockerfile.runner"
# what the image copies from the runner_image package (Dockerfile.runner's COPY lines)
IMAGE_FILES = ("entrypoint.py", "orchestrator_shard.py", "orchestrator_protocol.py", "requirements.txt")

Say = Callable[[str], None]


def resource(name: str) -> bytes:
    """A file of the installed ``runner_image`` package; OrchestratorError naming it when the
    installation lacks it (a wheel built without its package data)."""
    try:
        return importlib.resources.files("runner_image").joinpath(name).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        raise OrchestratorError(f"runner_image/{name} is missing from this installation of the orchestrator") from None


def wheelhouse() -> Path:
    """The user's cache, not a state_dir: the image is built by whoever may build a Debian base (root,
    where no registry answers), and one wheelhouse serves every config of that user."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orchestrator" / "runner-wheelhouse"


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One process at a time fills or reads the wheelhouse."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fill_wheelhouse(folder: Path, say: Say) -> None:
    """pip download the runner's requirements on the host, once per requirements file."""
    requirements = resource("requirements.txt")
    digest = hashlib.sha256(requirements + WHEEL_PYTHON.encode()).hexdigest()
    stamp = folder / ".filled"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    say(f"Downloading the runner's packages into {folder} (pip download)")
    for old in folder.glob("*.whl"):
        old.unlink()  # a wheelhouse of other requirements: each build copies the whole folder
    (folder / "requirements.txt").write_bytes(requirements)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += ["--only-binary=:all:", "--python-version", WHEEL_PYTHON, "--dest", str(folder)]
    proc = subprocess.run([*command, "-r", str(folder / "requirements.txt")], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise OrchestratorError(f"pip download of the runner's packages failed: {last}")
    stamp.write_text(digest + "\n")


def context(folder: Path, into: IO[bytes], interpreter: str = "python3") -> None:
    """The build context as a tar: the Dockerfile, the package's files at the paths it
    copies them from, the wheelhouse, and the ``interpreter`` the image runs (a file, not a
    build argument, which would cost the build a step). Every member's time and owner are
    fixed, so that an unchanged context is the builder's cache hit wherever the package is
    installed."""

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
        return info

    with tarfile.open(fileobj=into, mode="w") as tar:
        files = [(DOCKERFILE, resource(DOCKERFILE)), *((f"runner_image/{n}", resource(n)) for n in IMAGE_FILES)]
        for name, data in [*files, ("runner_image/interpreter", interpreter.encode())]:
            info = fixed(tarfile.TarInfo(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for wheel in sorted(folder.glob("*.whl")):
            tar.add(wheel, f"runner_image/wheelhouse/{wheel.name}", filter=fixed)
    into.seek(0)


def ensure_base(engine: Engine, base: str | None, python: Python, say: Say, refresh: bool = False) -> str:
    """The base image to build FROM: ``base`` if present or pullable, else the local Debian
    base of ``python``'s release (built once with bootstrap-base.sh; a moving release's
    newest, unless ``refresh`` asks for a new one)."""
    if base is not None:
        if exists(engine, base):
            return base
        repo, _, tag = base.partition(":")
        try:
            with engine_call("pull an image"):
                engine.api.pull(repo, tag=tag or "latest")
            say(f"Pulled base image {base}")
            return base
        except (APIError, EngineUnavailable) as exc:
            reason = getattr(exc, "explanation", None) or str(exc)
            say(f"Base image {base} is not on this engine and cannot be pulled ({reason.splitlines()[0][:120]})")
    fallback = python.fallback_base
    if python.release.moving:
        # by its tag too: every image built FROM it inherits its labels
        pinned = [
            tag
            for image in find_images(engine, {"orchestrator.base": fallback})
            for tag in image["tags"]
            if tag.startswith(f"{fallback}-")
        ]
        if pinned and not refresh:
            say(f"Using the local Debian {python.debian} base {pinned[0]}")
            return str(pinned[0])
        fallback = f"{fallback}-{time.strftime('%Y%m%d', time.gmtime())}"
    elif exists(engine, fallback) and not refresh:
        say(f"Using the local Debian base {fallback} built earlier by bootstrap-base.sh")
        return fallback
    say(
        f"Building a Debian {python.debian} base image {fallback} (Python {python.name}) with "
        "bootstrap-base.sh (mmdebstrap, about a minute)"
    )
    bootstrap(engine, fallback, python)
    return fallback


def bootstrap(engine: Engine, tag: str, python: Python) -> None:
    """Run the package's bootstrap-base.sh, which makes ``tag`` with mmdebstrap."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-bootstrap-") as scratch:
        script = Path(scratch) / "bootstrap-base.sh"
        script.write_bytes(resource("bootstrap-base.sh"))
        proc = subprocess.run(
            ["bash", str(script), tag, python.debian, *python.release.interpreters],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BASE_NAME": python.fallback_base},
        )
    if proc.returncode != 0 or not exists(engine, tag):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OrchestratorError(f"building the Debian base image {tag} failed: {last}")


def build(
    config: Config,
    engine: Engine,
    say: Say,
    versions: Iterable[str] = (pythons.DEFAULT,),
    refresh_base: bool = False,
) -> list[ImageInfo]:
    """Build the runner image of each Python on ``engine`` (``refresh_base``: the local
    Debian bases too, each release once)."""
    engine.ping()
    with locked(folder := wheelhouse()):
        fill_wheelhouse(folder, say)
    built = []
    refreshed: set[str] = set()
    for version in dict.fromkeys(versions):
        python = pythons.OFFERED[version]
        wanted = config.runner.base_image if version == pythons.DEFAULT else python.base
        refresh = refresh_base and python.debian not in refreshed
        base = ensure_base(engine, wanted, python, say, refresh=refresh)
        refreshed.add(python.debian)
        tag = config.runner.image_for(version)
        say(f"Building {tag} (Python {version}) from {DOCKERFILE} on {base}")
        with tempfile.TemporaryFile() as tar:
            with locked(folder):
                context(folder, tar, python.command)
            built.append(build_image(engine, tar, tag, say, {"BASE_IMAGE": base}))
    return built


def build_image(engine: Engine, tar: IO[bytes], tag: str, say: Say, buildargs: dict[str, str]) -> ImageInfo:
    """The legacy builder (docker-py's), which needs no BuildKit plug-in. OrchestratorError
    with the builder's reason if a step fails."""
    image_id = None
    try:
        with engine_call("build an image"):
            for chunk in engine.api.build(
                fileobj=tar,
                custom_context=True,
                dockerfile=DOCKERFILE,
                tag=tag,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                decode=True,
            ):
                if "error" in chunk:
                    raise OrchestratorError(f"image build failed: {chunk['error'].strip()}")
                if text := chunk.get("stream", "").rstrip():
                    say(text)
                image_id = chunk.get("aux", {}).get("ID", image_id)
    except APIError as exc:
        raise OrchestratorError(f"image build failed: {exc.explanation or exc}") from None
    return ImageInfo(tag=tag, id=image_id or engine.image(tag).id)
