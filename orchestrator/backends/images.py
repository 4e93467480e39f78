"""Images on one engine: building them (the runner images, from ``Dockerfile.runner``),
committing a container as one (an environment image), finding them by label, removing
them, and reading what one has installed. Runner and environment images alike go
through here; a Swarm's registry publishes them (registry.py).

``orchestrator image build`` works where no registry is reachable: Python packages come
from a wheelhouse the host fills with ``pip download`` (pure-Python wheels, so one
wheelhouse serves every version), and when a base image is neither on the engine nor
pullable, ``runner_image/bootstrap-base.sh`` builds that Python's Debian release locally.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from orchestrator import pythons
from orchestrator.backends.base import ImageInfo
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.config import Config
from orchestrator.errors import EngineUnavailable, OrchestratorError
from orchestrator.pythons import Python

WHEEL_PYTHON = "3.9"  # oldest Python the wheelhouse serves; newer ones need a subset

Say = Callable[[str], None]


def build_context(config: Config) -> Path:
    """The folder holding Dockerfile.runner: beside config.yaml, else the source tree."""
    for candidate in (config.source.resolve().parent, Path(__file__).resolve().parents[2]):
        if (candidate / "Dockerfile.runner").is_file() and (candidate / "runner_image").is_dir():
            return candidate
    raise OrchestratorError("Dockerfile.runner and runner_image/ not found beside the config file or the package")


def fill_wheelhouse(context: Path, say: Say) -> None:
    """pip download the runner's requirements on the host, once per requirements file."""
    requirements = context / "runner_image" / "requirements.txt"
    wheelhouse = context / "runner_image" / "wheelhouse"
    digest = hashlib.sha256(requirements.read_bytes() + WHEEL_PYTHON.encode()).hexdigest()
    stamp = wheelhouse / ".filled"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    say(f"Downloading runner packages into {wheelhouse} (pip download)")
    wheelhouse.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version",
            WHEEL_PYTHON,
            "--dest",
            str(wheelhouse),
            "-r",
            str(requirements),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise OrchestratorError(f"pip download of the runner packages failed: {last}")
    stamp.write_text(digest + "\n")


def ensure_base(
    engine: Engine, base: str | None, python: Python, context: Path, say: Say, refresh: bool = False
) -> str:
    """The base image to build FROM: ``base`` if present or pullable, else the local Debian
    base of ``python``'s release (built once with bootstrap-base.sh; a moving release's
    newest, unless ``refresh`` asks for a new one)."""
    api = engine.api
    if base is not None:
        if _exists(api, base):
            return base
        repo, _, tag = base.partition(":")
        try:
            with engine_call("pull an image"):
                api.pull(repo, tag=tag or "latest")
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
            return pinned[0]
        fallback = f"{fallback}-{time.strftime('%Y%m%d', time.gmtime())}"
    elif _exists(api, fallback) and not refresh:
        say(f"Using the local Debian base {fallback} built earlier by runner_image/bootstrap-base.sh")
        return fallback
    say(
        f"Building a Debian {python.debian} base image {fallback} (Python {python.name}) with "
        "runner_image/bootstrap-base.sh (debootstrap, a minute or more)"
    )
    script = context / "runner_image" / "bootstrap-base.sh"
    proc = subprocess.run(
        ["bash", str(script), fallback, python.debian, *python.release.interpreters],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BASE_NAME": python.fallback_base},
    )
    if proc.returncode != 0 or not _exists(api, fallback):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OrchestratorError(f"building the Debian base image {fallback} failed: {last}")
    return fallback


def _exists(api: docker.APIClient, tag: str) -> bool:
    try:
        with engine_call("look up an image"):
            api.inspect_image(tag)
        return True
    except (NotFound, ImageNotFound):
        return False


def build(
    config: Config,
    engine: Engine,
    say: Say,
    versions: Iterable[str] = (pythons.DEFAULT,),
    refresh_base: bool = False,
) -> list[ImageInfo]:
    """Build the runner image of each Python on ``engine`` (``refresh_base``: the local
    Debian bases too, each release once)."""
    context = build_context(config)
    engine.ping()
    fill_wheelhouse(context, say)
    built = []
    refreshed: set[str] = set()
    for version in dict.fromkeys(versions):
        python = pythons.OFFERED[version]
        wanted = config.runner.base_image if version == pythons.DEFAULT else python.base
        refresh = refresh_base and python.debian not in refreshed
        base = ensure_base(engine, wanted, python, context, say, refresh=refresh)
        refreshed.add(python.debian)
        tag = config.runner.image_for(version)
        say(f"Building {tag} (Python {version}) from Dockerfile.runner on {base}")
        built.append(
            build_image(
                engine,
                context,
                "Dockerfile.runner",
                tag,
                {"orchestrator.runner": "1", "orchestrator.python": version},
                say,
                buildargs={"BASE_IMAGE": base, "PYTHON": python.command},
            )
        )
    return built


def build_image(
    engine: Engine,
    context: Path,
    dockerfile: str,
    tag: str,
    labels: dict[str, str],
    say: Say,
    buildargs: dict[str, str] | None = None,
    network: str | None = None,
) -> ImageInfo:
    """The legacy builder (docker-py's), which needs no BuildKit plug-in; with ``network``
    "none", a RUN step reaches nothing (what an environment build installs comes from its
    wheelhouse). OrchestratorError with the builder's reason if a step fails."""
    image_id = None
    try:
        with engine_call("build an image"):
            for chunk in engine.api.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=buildargs or {},
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
                network_mode=network,
            ):
                if "error" in chunk:
                    raise OrchestratorError(f"image build failed: {chunk['error'].strip()}")
                if text := chunk.get("stream", "").rstrip():
                    say(text)
                image_id = chunk.get("aux", {}).get("ID", image_id)
    except APIError as exc:
        raise OrchestratorError(f"image build failed: {exc.explanation or exc}") from None
    return ImageInfo(tag=tag, id=image_id or engine.image(tag).id)


def find_images(engine: Engine, labels: dict[str, str | None]) -> list[dict]:
    """Images carrying all these labels (None: with any value), newest first:
    ``{"id", "tags", "created", "labels"}``."""
    with engine_call("list images"):
        found = engine.api.images(filters={"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]})
    return sorted(
        (
            {
                "id": i["Id"],
                "tags": i.get("RepoTags") or [],
                "created": i.get("Created", 0),
                "labels": i.get("Labels") or {},
            }
            for i in found
        ),
        key=lambda i: i["created"],
        reverse=True,
    )


def remove_image(engine: Engine, image_id: str, tags: Sequence[str] = ()) -> bool:
    """Remove an image by each of its ``tags`` (one published to a Swarm's registry has
    two), else by id; False if a container still uses it (it stays, and is tried again
    later). Never forced: untagging the last name removes it only when nothing uses it."""
    try:
        for name in tags or [image_id]:
            with engine_call("remove an image"):
                engine.api.remove_image(name, force=False, noprune=False)
        return True
    except (NotFound, ImageNotFound):
        return True
    except APIError as exc:
        if exc.status_code == 409:
            return False
        raise


def commit(engine: Engine, container: str, runner: ImageInfo, tag: str, labels: dict[str, str]) -> str:
    """The container as an image ``tag`` that runs like the runner image: its user,
    entrypoint, command and working folder, and ``labels``; its id."""
    with engine_call("inspect the runner image"):
        config = engine.api.inspect_image(runner.id).get("Config") or {}
    changes = [
        f"USER {config.get('User') or '1000:1000'}",
        f"WORKDIR {config.get('WorkingDir') or '/'}",
        f"ENTRYPOINT {json.dumps(config.get('Entrypoint') or [])}",
        *([f"CMD {json.dumps(config['Cmd'])}"] if config.get("Cmd") else []),
        *(f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()),
    ]
    repository, _, version = tag.rpartition(":")
    with engine_call("commit an image"):
        committed = engine.api.commit(container, repository=repository, tag=version, changes=changes, pause=False)
    return committed["Id"]


class LoadRefused(OrchestratorError):
    """The engine would not take an image whose lower layers it holds already (an engine
    whose image store needs every layer in the archive): the caller builds it otherwise."""


def load_layer(engine: Engine, base: ImageInfo, layer: Path, diff_id: str, tag: str, labels: dict[str, str]) -> str:
    """A new image ``tag``: ``base`` with one more layer (the tar at ``layer``, whose
    uncompressed digest is ``diff_id``) and ``labels``; it runs as ``base`` does. Loaded as
    an archive that carries the new layer alone (the engine has the others): no container
    and no commit, so it costs what the new layer weighs. Its id."""
    with engine_call("inspect an image"):
        found = engine.api.inspect_image(base.id)
    config = dict(found.get("Config") or {})
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    document = {
        "architecture": found.get("Architecture") or "amd64",
        "os": found.get("Os") or "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [*found["RootFS"]["Layers"], diff_id]},
    }
    blob = json.dumps(document).encode()
    name = hashlib.sha256(blob).hexdigest()
    lower = [f"{i}/layer.tar" for i in range(len(found["RootFS"]["Layers"]))]  # not in the archive: held already
    manifest = json.dumps([{"Config": f"{name}.json", "RepoTags": [tag], "Layers": [*lower, "new/layer.tar"]}]).encode()
    archive = layer.with_name(layer.name + ".image")
    try:
        with tarfile.open(archive, "w") as tar:
            for member, data in ((f"{name}.json", blob), ("manifest.json", manifest)):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            tar.add(layer, "new/layer.tar")
        with open(archive, "rb") as stream, engine_call("load an image"):
            try:
                said = list(engine.api.load_image(stream))
            except APIError as exc:
                raise LoadRefused(f"the engine did not load the layer: {exc.explanation or exc}"[:300]) from None
    finally:
        archive.unlink(missing_ok=True)
    errors = [str(line.get("error")) for line in said if isinstance(line, dict) and line.get("error")]
    if errors:
        raise LoadRefused(f"the engine did not load the layer: {errors[0]}"[:300])
    with engine_call("inspect an image"):
        return engine.api.inspect_image(tag)["Id"]


def dpkg_status(engine: Engine, image: str, cache: Path) -> Path:
    """The dpkg status file of ``image`` (what it has installed), copied out of a container
    that is created, never started, and removed; kept in ``cache`` by image id."""
    target = cache / f"status-{image.removeprefix('sha256:')[:24]}"
    if target.is_file():
        return target
    api = engine.api
    with engine_call("read an image's packages"):
        created = api.create_container(
            image,
            entrypoint=["true"],
            labels={"orchestrator.probe": "1"},
            network_disabled=True,
            host_config=api.create_host_config(network_mode="none"),
        )
    try:
        with engine_call("read an image's packages"):
            stream, _ = api.get_archive(created["Id"], "/var/lib/dpkg/status")
            data = b"".join(stream)
    finally:
        with engine_call("remove a container"):
            api.remove_container(created["Id"], force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        content = member.read() if member else b""
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(target)
    return target
