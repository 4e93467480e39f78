"""Images in a Swarm's registry: the runner and environment images ``image build``
publishes, and each job's own image (the checkout as one layer on top of the image it
runs), which is pushed, run by digest on whatever node the engine picks, and deleted.

Nothing is shared between the dispatcher and a node but this registry and the engine's
API, so this is how both the image and the commit's files reach a node.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

import docker
import requests
from docker.errors import APIError, NotFound

from orchestrator.backends.base import OUTPUT_DIR, WORKSPACE, ContainerSpec, ImageInfo
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.backends.images import LoadRefused, load_layer
from orchestrator.errors import ContainerGone, ImageMissing

log = logging.getLogger("orchestrator.swarm")

JOB_REPOSITORY = "orchestrator-job"  # the registry repository of the per-job images


class RegistryError(ContainerGone):
    """The registry did not take an image: an infrastructure failure, retried."""


class JobImages:
    """Pushes to and deletes from ``registry`` through the engine ``engine``."""

    def __init__(self, engine: Engine, registry: str):
        self.engine = engine
        self.registry = registry

    @property
    def api(self) -> docker.APIClient:
        return self.engine.api

    def tag_of(self, job: str) -> str:
        return f"{self.registry}/{JOB_REPOSITORY}:{job}"

    def publish(self, image: ImageInfo) -> str:
        """Push a runner or environment image, so that the first job's push and the
        workers' first pull find its layers there already; where it now is, by digest."""
        repository, _, tag = _without_registry(image.tag).partition(":")
        target = f"{self.registry}/{repository}"
        with engine_call("tag an image"):
            self.api.tag(image.id, target, tag=tag or "latest")
        return f"{target}@{self._push(target, tag or 'latest')}"

    def push_job(self, spec: ContainerSpec) -> str:
        """The checkout on top of ``spec.image``, as one layer loaded into the manager's
        engine (no container, no commit: a commit costs ~1.9 s on fuse-overlayfs, a load
        ~0.06 s), with the labels in its config and blind to the commit's own .dockerignore.
        Pushed; what runs is ``registry/repository@digest``."""
        tag = self.tag_of(spec.name)
        with tempfile.TemporaryDirectory(prefix="orchestrator-job-") as folder:
            layer = Path(folder) / "layer.tar"
            with open(layer, "wb") as out:
                checkout_archive(out, spec)
            try:
                load_layer(self.engine, ImageInfo(spec.image, spec.image), layer, _diff_id(layer), tag, spec.labels)
            except NotFound:
                raise ImageMissing(f"image {spec.image} is missing: run `orchestrator image build`") from None
            except LoadRefused as exc:  # an engine that wants every layer in the archive
                log.info("job image %s: %s; committing it from a container instead", spec.name, exc)
                self._commit(spec, layer)
        try:
            digest = self._push(f"{self.registry}/{JOB_REPOSITORY}", spec.name)
        except RegistryError:
            self._untag(tag)
            raise
        return f"{self.registry}/{JOB_REPOSITORY}@{digest}"

    def _commit(self, spec: ContainerSpec, layer: Path) -> None:
        """The job image the slow way: a container of ``spec.image`` (never started) gets
        the files and is committed."""
        try:
            with engine_call("create a job image"):
                created = self.api.create_container(spec.image, labels=dict(spec.labels), network_disabled=True)
        except NotFound:
            raise ImageMissing(f"image {spec.image} is missing: run `orchestrator image build`") from None
        try:
            with engine_call("create a job image"), open(layer, "rb") as archive:
                self.api.put_archive(created["Id"], "/", archive)
                self.api.commit(created["Id"], repository=f"{self.registry}/{JOB_REPOSITORY}", tag=spec.name)
        finally:
            with contextlib.suppress(NotFound, APIError), engine_call("remove a container"):
                self.api.remove_container(created["Id"], force=True)

    def _push(self, repository: str, tag: str) -> str:
        digest = None
        with engine_call("push an image"):
            for chunk in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise RegistryError(f"push to registry {self.registry} failed: {chunk['error'].strip()[:300]}")
                digest = chunk.get("aux", {}).get("Digest", digest)
        if digest is None:
            raise RegistryError(f"push to registry {self.registry} gave no digest")
        return str(digest)

    def local_digest(self, job: str) -> str | None:
        """The registry digest of a job image still tagged here (a crash before its service)."""
        try:
            with engine_call("inspect a job image"):
                digests = self.api.inspect_image(self.tag_of(job)).get("RepoDigests") or []
        except NotFound:
            return None
        return next((d.rpartition("@")[2] for d in digests if d.startswith(f"{self.registry}/")), None)

    def leftovers(self, wanted: list[str]) -> dict[str, dict[str, str]]:
        """Job images still tagged here whose labels match ``wanted`` ("key=value"): name -> labels."""
        with engine_call("list job images"):
            images = self.api.images(name=f"{self.registry}/{JOB_REPOSITORY}", filters={"label": list(wanted)})
        return {
            tag.rpartition(":")[2]: image.get("Labels") or {} for image in images for tag in image.get("RepoTags") or []
        }

    def forget(self, job: str, digest: str | None) -> None:
        """The local tag, and the manifest in the registry (its blobs go with the
        registry's garbage collection); best effort: a registry that is away keeps one."""
        self._untag(self.tag_of(job))
        if not digest:
            return
        ca = Path("/etc/docker/certs.d") / self.registry / "ca.crt"
        try:
            requests.delete(
                f"https://{self.registry}/v2/{JOB_REPOSITORY}/manifests/{digest}",
                timeout=10,
                verify=str(ca) if ca.is_file() else True,
            )
        except requests.RequestException as exc:
            log.warning("registry %s: the manifest %s stays (%s)", self.registry, digest[:19], exc)

    def _untag(self, tag: str) -> None:
        with contextlib.suppress(NotFound, APIError), engine_call("remove a job image"):
            self.api.remove_image(tag, force=True)


def _diff_id(layer: Path) -> str:
    digest = hashlib.sha256()
    with open(layer, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _without_registry(name: str) -> str:
    """``name`` without the registry it names, if any: Docker's rule, a first component
    with a dot or a port, or ``localhost`` (``ci-runner:latest``, ``orchestrator-env/demo:x``
    stay; ``registry.example:5000/ci-runner:latest`` loses its host)."""
    first, _, rest = name.partition("/")
    return rest if rest and ("." in first or ":" in first or first == "localhost") else name


def checkout_archive(out: BinaryIO, spec: ContainerSpec) -> None:
    """The checkout as a tar of ``WORKSPACE``, and ``OUTPUT_DIR`` with what the host folder
    holds before the start (a split suite's plan), owned by the container's user."""
    uid, _, gid = spec.user.partition(":")

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = int(uid), int(gid or uid), "", ""
        return info

    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(str(spec.workspace), arcname=WORKSPACE.lstrip("/"), recursive=True, filter=owned)
        report_dir = tarfile.TarInfo(OUTPUT_DIR.lstrip("/"))  # where the report is written: no tmpfs (noexec)
        report_dir.type, report_dir.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(owned(report_dir))
        site = tarfile.TarInfo(f"{OUTPUT_DIR.lstrip('/')}/site")  # where ci-out.pth points (workspace.make_output)
        site.type, site.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(owned(site))
        for path in sorted(spec.output_dir.iterdir()) if spec.output_dir.is_dir() else ():
            if path.is_file() and not path.is_symlink():  # what the orchestrator put there: a shard's plan
                tar.add(str(path), arcname=f"{OUTPUT_DIR.lstrip('/')}/{path.name}", filter=owned)
