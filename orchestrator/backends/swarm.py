"""The Docker Swarm backend: each job a one-shot service (``replicated-job``, one task,
restart condition ``none``) that the engine places on a node; the dispatcher still decides
how many run at once.

Nothing is shared between the dispatcher and a node but the registry and the engine's API:
- the checkout travels as an image: one thin layer with exactly the commit's files on top
  of the runner or environment image (a container of it, given the files and committed),
  pushed to ``runner.registry`` and run by digest, so every node runs the same bytes;
- the output comes back through the engine's log of the task, and the JUnit report at its
  end, framed (runner_image/entrypoint.py prints it when ORCHESTRATOR_REPORT_FRAME is set);
  the frame is kept out of the job's log.

A task whose node is lost, or that ends orphaned, rejected or shut down without an exit
code, is ``ContainerGone``: an infrastructure failure, re-queued as a new attempt.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from docker.errors import APIError, NotFound
from docker.types import ContainerSpec as TaskContainer
from docker.types import DriverConfig, Mount, Placement, Resources, RestartPolicy, ServiceMode, TaskTemplate

from orchestrator.backends.base import (
    OUTPUT_DIR, WORKSPACE, Backend, ContainerSpec, ContainerState, ImageInfo, Phase,
)
from orchestrator.backends.docker import DockerBackend, engine_call
from orchestrator.backends.report_frame import FRAME_ENV, Unframed, frame
from orchestrator.config import memory_bytes
from orchestrator.errors import ContainerGone, EngineUnavailable, ImageMissing
from orchestrator.models import parse_iso

log = logging.getLogger("orchestrator.swarm")

JOB_REPOSITORY = "orchestrator-job"     # the registry repository of the per-job images
_ENDED = {"complete", "failed", "rejected", "orphaned", "shutdown", "remove"}
_WAIT_POLL = 0.25
NODE_CHECK = 2.0   # seconds a node's state is taken as known (the engine takes ~15 s to call a lost node Down)


@dataclass
class _Prepared:
    spec: ContainerSpec
    image: str   # registry/repository@digest


class SwarmBackend(Backend):
    """Services on the Swarm whose manager is ``docker_host``; images through ``registry``."""

    warm_starts = False   # a warm container waits for a file in a shared folder: there is none

    def __init__(self, docker_host: str | None, registry: str, constraints: list[str], timeout: float = 30):
        self.manager = DockerBackend(docker_host, timeout)
        self.registry = registry
        self.constraints = list(constraints)
        self._lock = threading.Lock()
        self._prepared: dict[str, _Prepared] = {}
        self._reports: dict[str, bytes | None] = {}   # framed reports taken out of live output
        self._stopped: set[str] = set()
        self._digests: dict[str, str] = {}            # service -> its job image's digest, for clean-up
        self._networks: set[str] = set()              # job networks whose removal the engine refused so far
        self._nodes: dict[str, str] = {}              # node id -> hostname
        self._node_states: dict[str, tuple[float, bool]] = {}   # node id -> (when asked, down)

    @property
    def builder(self) -> DockerBackend:
        return self.manager

    @property
    def api(self):
        return self.manager.api

    def ping(self) -> None:
        self.manager.ping()

    def close(self) -> None:
        with contextlib.suppress(EngineUnavailable):
            self._drain_networks()
        self.manager.close()

    def image(self, tag: str) -> ImageInfo:
        return self.manager.image(tag)   # built on the manager; its layers reach the registry with each job's

    def publish(self, image: ImageInfo) -> str:
        """Push ``image`` (a runner image, by ``image build``) to the registry, so that the
        first job's push and the workers' first pull find its layers there already."""
        repository, _, tag = image.tag.rpartition("/")[2].partition(":")   # its own registry's name dropped
        target = f"{self.registry}/{repository}"
        with engine_call("tag an image"):
            self.api.tag(image.id, target, tag=tag or "latest")
        return f"{target}@{self._push(target, tag or 'latest')}"

    def _push(self, repository: str, tag: str) -> str:
        """Push ``repository:tag``; the digest the registry gave it, or _RegistryError."""
        digest = None
        with engine_call("push an image"):
            for chunk in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise _RegistryError(f"push to registry {self.registry} failed: {chunk['error'].strip()[:300]}")
                digest = chunk.get("aux", {}).get("Digest", digest)
        if digest is None:
            raise _RegistryError(f"push to registry {self.registry} gave no digest")
        return digest

    # -- the job's image --------------------------------------------------------------

    def prepare(self, spec: ContainerSpec) -> str:
        """Build the job's image (the checkout on top of ``spec.image``) and push it; the
        service is created by ``start``: a service has no created-but-not-started state."""
        image = self._push_job_image(spec)
        with self._lock:
            self._prepared[spec.name] = _Prepared(spec, image)
        return spec.name

    def _push_job_image(self, spec: ContainerSpec) -> str:
        """A container of ``spec.image`` (never started) gets the checkout put into it and is
        committed: one layer, the labels in its config, faster than a build step and blind
        to the commit's own .dockerignore. Pushed; the registry's digest is what runs."""
        tag = f"{self.registry}/{JOB_REPOSITORY}:{spec.name}"
        with tempfile.TemporaryFile() as archive:
            _checkout_archive(archive, spec)
            archive.seek(0)
            try:
                with engine_call("create a job image"):
                    created = self.api.create_container(spec.image, labels=dict(spec.labels), network_disabled=True)
            except NotFound:
                raise ImageMissing(f"image {spec.image} is missing: run `orchestrator image build`") from None
            try:
                with engine_call("create a job image"):
                    self.api.put_archive(created["Id"], "/", archive)
                    self.api.commit(created["Id"], repository=f"{self.registry}/{JOB_REPOSITORY}", tag=spec.name)
            finally:
                with contextlib.suppress(NotFound, APIError), engine_call("remove a container"):
                    self.api.remove_container(created["Id"], force=True)
        try:
            digest = self._push(f"{self.registry}/{JOB_REPOSITORY}", spec.name)
        except _RegistryError:
            self._untag(tag)
            raise
        return f"{self.registry}/{JOB_REPOSITORY}@{digest}"

    # -- the service ------------------------------------------------------------------

    def start(self, container_id: str) -> ContainerState:
        with self._lock:
            prepared = self._prepared.pop(container_id)
            self._digests[container_id] = prepared.image.rpartition("@")[2]
        spec = prepared.spec
        task = TaskTemplate(
            container_spec=TaskContainer(
                image=prepared.image, user=spec.user, workdir=WORKSPACE, labels=dict(spec.labels),
                env={**spec.environment, FRAME_ENV: frame(spec.name)},
                mounts=[Mount(OUTPUT_DIR, None, type="tmpfs", tmpfs_size=memory_bytes(spec.tmp_size)),
                        Mount("/tmp", None, type="tmpfs", tmpfs_size=memory_bytes(spec.tmp_size), tmpfs_mode=0o1777)],
                init=True, cap_drop=["ALL"], stop_grace_period=0,
            ),
            resources=_resources(spec),
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=self.constraints),
            log_driver=DriverConfig("json-file", {"max-size": str(max(spec.log_max_bytes, 1 << 20)), "max-file": "2"}),
            networks=[{"Target": self._network(spec)}],
        )
        with engine_call("create a service"):
            self.api.create_service(task, name=spec.name, labels=dict(spec.labels),
                                    mode=ServiceMode("replicated-job", concurrency=1))
        state = self.inspect(container_id)
        if state is None:
            raise ContainerGone(f"service {container_id} vanished right after it was created")
        return state

    def _network(self, spec: ContainerSpec) -> str:
        """``spec.network``; for "none", which a service cannot join, an internal overlay
        network of the job's own: no route out, and no other job on it."""
        if spec.network != "none":
            return spec.network
        with engine_call("create a network"):
            self.api.create_network(spec.name, driver="overlay", internal=True, labels=dict(spec.labels))
        return spec.name

    def output(self, container_id: str) -> Iterator[bytes]:
        return self._without_report(container_id, self._live_log(container_id))

    def _live_log(self, container_id: str) -> Iterator[bytes]:
        """Followed from when the task runs (a log followed before there is a task ends at
        once); a stream that ends while the task still runs is a cut, so the watcher reads
        the whole log again once the task has ended."""
        state = self.inspect(container_id)
        while state is not None and not state.exited and state.started_at is None:
            time.sleep(_WAIT_POLL)
            state = self.inspect(container_id)
        yield from self._engine_log(container_id, follow=True)
        state = self.inspect(container_id)
        if state is not None and not state.exited:
            raise EngineUnavailable(f"the log of service {container_id} ended before its task")

    def _without_report(self, service: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The output up to the report's frame; the report is kept for ``report``."""
        unframed = Unframed(chunks, service)
        yield from unframed
        if unframed.found:
            with self._lock:
                self._reports[service] = unframed.report

    def logs(self, container_id: str, follow: bool = False) -> Iterator[bytes]:
        """The task's output through the engine, without the report's frame."""
        return self._without_report(container_id, self._engine_log(container_id, follow))

    def _engine_log(self, container_id: str, follow: bool) -> Iterator[bytes]:
        try:
            with engine_call("stream a service log"):
                stream = self.api.service_logs(container_id, stdout=True, stderr=True, follow=follow)
            with engine_call("stream a service log"):
                yield from stream
        except NotFound:
            return

    def wait(self, container_id: str, seconds: float) -> ContainerState | None:
        deadline = time.monotonic() + seconds
        while True:
            state = self.inspect(container_id)
            if state is None or state.exited or time.monotonic() >= deadline:
                return state
            time.sleep(min(_WAIT_POLL, max(deadline - time.monotonic(), 0)))

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            with engine_call("inspect a service"):
                service = self.api.inspect_service(container_id)
                tasks = self.api.tasks(filters={"service": service["ID"]})
        except NotFound:
            if container_id in self._stopped:  # removed by stop: a killed container
                return ContainerState(container_id, Phase.EXITED, {}, exit_code=137)
            return None
        labels = service.get("Spec", {}).get("Labels") or {}
        if not tasks:
            return ContainerState(container_id, Phase.CREATED, labels)
        task = max(tasks, key=lambda t: t.get("CreatedAt", ""))
        return self._task_state(container_id, labels, task)

    def _task_state(self, service: str, labels: dict[str, str], task: dict) -> ContainerState:
        status = task.get("Status", {})
        state = status.get("State", "")
        node = self._node_name(task.get("NodeID"))
        started = parse_iso(status.get("Timestamp")) if state == "running" else None
        exit_code = status.get("ContainerStatus", {}).get("ExitCode")
        if state in _ENDED:
            if service in self._stopped:
                return ContainerState(service, Phase.EXITED, labels, exit_code=137, node=node)
            if state in ("complete", "failed") and exit_code is not None:
                return ContainerState(service, Phase.EXITED, labels, exit_code=exit_code,
                                      finished_at=parse_iso(status.get("Timestamp")), node=node)
            raise ContainerGone(f"task {state} on node {node or '?'} without an exit code: "
                                f"{status.get('Err') or status.get('Message') or state}")
        if state == "running" and task.get("NodeID") and self._node_down(task["NodeID"]):
            raise ContainerGone(f"node {node} lost")
        return ContainerState(service, Phase.RUNNING, labels, started_at=started, node=node)

    def _node_name(self, node_id: str | None) -> str | None:
        if not node_id:
            return None
        if node_id not in self._nodes:
            with contextlib.suppress(NotFound), engine_call("inspect a node"):
                node = self.api.inspect_node(node_id)
                self._nodes[node_id] = node.get("Description", {}).get("Hostname") or node_id[:12]
        return self._nodes.get(node_id, node_id[:12])

    def _node_down(self, node_id: str) -> bool:
        """Asked of the engine at most every NODE_CHECK seconds per node: every running
        job's watcher and log follower would otherwise ask four times a second."""
        checked, down = self._node_states.get(node_id, (float("-inf"), False))
        if time.monotonic() - checked < NODE_CHECK:
            return down
        try:
            with engine_call("inspect a node"):
                node = self.api.inspect_node(node_id)
            down = node.get("Status", {}).get("State") in ("down", "disconnected")
        except NotFound:
            down = True
        self._node_states[node_id] = (time.monotonic(), down)
        return down

    def report(self, container_id: str, output_dir: Path) -> bytes | None:
        with self._lock:
            if container_id in self._reports:
                return self._reports.pop(container_id)
        for _ in self.logs(container_id, follow=False):   # read to its frame again
            pass
        with self._lock:
            return self._reports.pop(container_id, None)

    def stop(self, container_id: str) -> None:
        self._stopped.add(container_id)
        with contextlib.suppress(NotFound), engine_call("remove a service"):
            self.api.remove_service(container_id)

    def destroy(self, container_id: str) -> None:
        with self._lock:
            prepared = self._prepared.pop(container_id, None)
            self._reports.pop(container_id, None)
            digest = prepared.image.rpartition("@")[2] if prepared else self._digests.pop(container_id, None)
        digest = digest or self._service_digest(container_id) or self._image_digest(container_id)
        with contextlib.suppress(NotFound), engine_call("remove a service"):
            self.api.remove_service(container_id)
        self._stopped.discard(container_id)
        self._remove_network(container_id)
        self._untag(f"{self.registry}/{JOB_REPOSITORY}:{container_id}")
        if digest:
            self._delete_from_registry(digest)

    def _remove_network(self, name: str) -> None:
        """The job's network, once its task's container is gone from its node: seconds
        after the service, until when the engine refuses. Not waited for here (the next
        job's slot would wait): tried again at each clean-up, and waited for at close."""
        with self._lock:
            self._networks.add(name)
            pending = sorted(self._networks)
        for network in pending:
            try:
                with engine_call("remove a network"):
                    self.api.remove_network(network)
            except NotFound:
                pass
            except APIError:
                continue   # its task's container is still being removed
            with self._lock:
                self._networks.discard(network)

    def _drain_networks(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while self._networks and time.monotonic() < deadline:
            time.sleep(0.25)
            self._remove_network(next(iter(self._networks)))
        if self._networks:
            log.warning("networks %s stay for the next sweep", ", ".join(sorted(self._networks)))

    def _service_digest(self, service: str) -> str | None:
        try:
            with engine_call("inspect a service"):
                image = self.api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        except (NotFound, KeyError):
            return None
        return image.rpartition("@")[2] or None

    def _image_digest(self, service: str) -> str | None:
        """The registry digest of a job image that never became a service (a crash between)."""
        try:
            with engine_call("inspect a job image"):
                digests = self.api.inspect_image(f"{self.registry}/{JOB_REPOSITORY}:{service}").get("RepoDigests") or []
        except NotFound:
            return None
        return next((d.rpartition("@")[2] for d in digests if d.startswith(f"{self.registry}/")), None)

    def _untag(self, tag: str) -> None:
        with contextlib.suppress(NotFound, APIError), engine_call("remove a job image"):
            self.api.remove_image(tag, force=True)

    def _delete_from_registry(self, digest: str) -> None:
        """The job's manifest out of the registry (its blobs go with the registry's own
        garbage collection); best effort: a registry that is away keeps one manifest."""
        ca = Path("/etc/docker/certs.d") / self.registry / "ca.crt"
        try:
            requests.delete(f"https://{self.registry}/v2/{JOB_REPOSITORY}/manifests/{digest}", timeout=10,
                            verify=str(ca) if ca.is_file() else True)
        except requests.RequestException as exc:
            log.warning("registry %s: the manifest %s stays (%s)", self.registry, digest[:19], exc)

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        """Services with these labels; and job images and networks without one (a crash
        between push and start, or before a network could go), as never-started
        containers, so that clean-up finds them too."""
        wanted = [f"{k}={v}" for k, v in labels.items()]   # a dict each: docker-py adds to what it is given
        with engine_call("list services"):
            services = self.api.services(filters={"label": list(wanted)})
        with engine_call("list job images"):
            images = self.api.images(name=f"{self.registry}/{JOB_REPOSITORY}", filters={"label": list(wanted)})
        with engine_call("list job networks"):
            networks = self.api.networks(filters={"label": list(wanted)})
        leftovers = {tag.rpartition(":")[2]: image.get("Labels") or {}
                     for image in images for tag in image.get("RepoTags") or []}
        leftovers.update({network["Name"]: network.get("Labels") or {} for network in networks})
        names = {service["Spec"]["Name"] for service in services} | set(self._prepared) | set(self._digests)
        states = [ContainerState(name, Phase.CREATED, labels) for name, labels in leftovers.items() if name not in names]
        for service in services:
            try:
                state = self.inspect(service["Spec"]["Name"])
            except ContainerGone as exc:   # a lost task: found, ended, no exit code
                log.warning("service %s: %s", service["Spec"]["Name"], exc)
                state = ContainerState(service["Spec"]["Name"], Phase.RUNNING, service["Spec"].get("Labels") or {})
            if state is not None:
                states.append(state)
        return states


class _RegistryError(ContainerGone):
    """The registry did not take the job's image: an infrastructure failure, retried."""


def _checkout_archive(out, spec: ContainerSpec) -> None:
    """The checkout as a tar of ``workspace/``, owned by the container's user."""
    uid, _, gid = spec.user.partition(":")

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = int(uid), int(gid or uid), "", ""
        return info

    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(str(spec.workspace), arcname=WORKSPACE.lstrip("/"), recursive=True, filter=owned)


def _resources(spec: ContainerSpec) -> Resources:
    resources = Resources(cpu_limit=int(spec.cpus * 1e9), mem_limit=memory_bytes(spec.memory))
    resources["Limits"]["Pids"] = spec.pids   # Engine API 1.41; docker-py has no argument for it
    return resources
