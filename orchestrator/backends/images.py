"""Images on one engine: committing a container as one or loading a layer over another
(an environment image), finding them by label, removing them, and reading what one has
installed. The runner images are built in runner_images.py; a Swarm's registry publishes
both kinds (registry.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from docker.errors import APIError, ImageNotFound, NotFound

from orchestrator.backends.base import ImageInfo
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.errors import OrchestratorError


def exists(engine: Engine, tag: str) -> bool:
    try:
        with engine_call("look up an image"):
            engine.api.inspect_image(tag)
        return True
    except (NotFound, ImageNotFound):
        return False


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
    return str(committed["Id"])


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
        return str(engine.api.inspect_image(tag)["Id"])


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
