"""The Docker Swarm backend: each job a one-shot service (``replicated-job``, one task,
restart condition ``none``) that the engine places on a node; the dispatcher still decides
how many run at once.

Nothing is shared between the dispatcher and a node but the registry and the engine's API:
- the checkout travels as an image (backends/registry.py), run by digest, so every node
  runs the same bytes;
- the output comes back through the engine's log of the task, and the JUnit report at its
  end, framed (runner_image/entrypoint.py prints it when protocol.REPORT_FRAME is set);
  the frame is kept out of the job's log;
- what the dispatcher watches from the host on one engine, the task watches itself: the
  entrypoint supervises the suite and exits EXIT_DISK_LIMIT when the workspace (or /tmp)
  holds more than ``runner.disk`` (``runner.tmp_size``), EXIT_OUT_OF_MEMORY when the
  kernel's OOM killer ended it (the engine reports no OOM flag for a task). Both live in
  the task's own layer, not in a tmpfs: a Swarm tmpfs is noexec under API 1.41, and suites
  run what they write there. The runner image leaves the runner user no other place to
  write (Dockerfile.runner).

A task whose node is lost, or that ends orphaned, rejected or shut down without an exit
code, is ``ContainerGone``: an infrastructure failure, re-queued as a new attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import NotFound
from docker.types import ContainerSpec as TaskContainer
from docker.types import DriverConfig, Placement, Resources, RestartPolicy, ServiceMode, TaskTemplate

from orchestrator.backends.base import (
    OUTPUT_DIR,
    WORKSPACE,
    Backend,
    ContainerSpec,
    ContainerState,
    ImageInfo,
    Phase,
)
from orchestrator.backends.engine import Engine, engine_call
from orchestrator.backends.networks import JobNetworks
from orchestrator.backends.registry import JobImages
from orchestrator.backends.report_frame import FRAME_ENV, FRAME_FILE, Unframed, new_marker
from orchestrator.backoff import Backoff
from orchestrator.config import memory_bytes
from orchestrator.errors import ContainerGone, EngineUnavailable
from orchestrator.models import parse_iso
from runner_image import orchestrator_protocol as protocol

log = logging.getLogger("orchestrator.swarm")

_ENDED = {"complete", "failed", "rejected", "orphaned", "shutdown", "remove"}
_WAIT_POLL = 0.25  # the longest pause between two looks at a task
_FIRST_POLL = 0.03  # the first: a task starts ~0.4 s after its service and ends just after its log
LIMITS_ENV = protocol.DISK_LIMITS  # runner_image/entrypoint.py reads it
LABEL_MARKER = "orchestrator.results.report-marker"  # on the service only, never on its container
NODE_CHECK = 2.0  # seconds a node's state is taken as known (the engine takes ~15 s to call a lost node Down)


@dataclass
class _Prepared:
    spec: ContainerSpec
    image: str  # registry/repository@digest


class SwarmBackend(Backend):
    """Services on the Swarm whose manager is ``manager``; images through ``registry``."""

    warm_starts = False  # a warm container waits for a file in a shared folder: there is none
    prepares_ahead = True  # but its image may be pushed while the job before runs: the service is made on release
    shares_workspace = False  # the task writes on its node: no artifacts are collected

    def __init__(self, manager: Engine, registry: str, constraints: list[str], job_networks: bool = True):
        self.manager = manager
        self.job_networks = job_networks  # False: a task with no network has none (its node's engine says so)
        self.images = JobImages(self.manager, registry)
        self.networks = JobNetworks(self.manager)
        self.constraints = list(constraints)
        self._lock = threading.Lock()
        self._prepared: dict[str, _Prepared] = {}
        self._reports: dict[str, bytes | None] = {}  # framed reports taken out of live output
        self._markers: dict[str, str] = {}  # service -> its report's marker
        self._stopped: set[str] = set()
        self._log_ended: set[str] = set()  # services whose live log reached its end
        self._digests: dict[str, str] = {}  # service -> its job image's digest, for clean-up
        self._nodes: dict[str, str] = {}  # node id -> hostname
        self._node_states: dict[str, tuple[float, bool]] = {}  # node id -> (when asked, down)

    @property
    def api(self) -> docker.APIClient:
        return self.manager.api

    def ping(self) -> None:
        self.manager.ping()

    def close(self) -> None:
        with contextlib.suppress(EngineUnavailable):
            self.networks.drain()
        self.manager.close()

    def image(self, tag: str) -> ImageInfo:
        return self.manager.image(tag)  # built on the manager; its layers reach the registry with each job's

    def publish(self, image: ImageInfo) -> str:
        return self.images.publish(image)

    # -- the job's image --------------------------------------------------------------

    def prepare(self, spec: ContainerSpec) -> str:
        """Build the job's image (the checkout on top of ``spec.image``) and push it; the
        service is created by ``start``: a service has no created-but-not-started state."""
        marker = new_marker()  # the report's frame: a secret the job's image carries to the entrypoint alone
        secret = spec.output_dir / FRAME_FILE
        secret.write_text(marker)
        secret.chmod(0o600)
        try:
            image = self.images.push_job(spec)
        finally:
            secret.unlink(missing_ok=True)
        with self._lock:
            self._prepared[spec.name] = _Prepared(spec, image)
            self._markers[spec.name] = marker
        return spec.name

    # -- the service ------------------------------------------------------------------

    def start(self, container_id: str) -> ContainerState:
        with self._lock:
            prepared = self._prepared.pop(container_id)
            self._digests[container_id] = prepared.image.rpartition("@")[2]
        spec = prepared.spec
        # with network none, either an internal network of its own (a service cannot join
        # none), or none at all where the workers' engines give none: the task checks that
        no_network = spec.network == "none" and not self.job_networks
        checks = {protocol.NO_NETWORK: "1"} if no_network else {}
        task = TaskTemplate(
            container_spec=TaskContainer(
                image=prepared.image,
                user=spec.user,
                workdir=WORKSPACE,
                labels=dict(spec.labels),
                env={**spec.variables, FRAME_ENV: "1", LIMITS_ENV: _limits(spec), **checks},
                init=True,
                cap_drop=["ALL"],
                stop_grace_period=0,
            ),
            resources=_resources(spec),
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=self.constraints),
            log_driver=DriverConfig("json-file", {"max-size": str(max(spec.log_max_bytes, 1 << 20)), "max-file": "2"}),
            networks=[] if no_network else [{"Target": self.networks.for_job(spec)}],
        )
        with engine_call("create a service"):
            self.api.create_service(
                task,
                name=spec.name,
                labels={**spec.labels, LABEL_MARKER: self._marker(spec.name)},
                mode=ServiceMode("replicated-job", concurrency=1),
            )
        state = self.inspect(container_id)
        if state is None:
            raise ContainerGone(f"service {container_id} vanished right after it was created")
        return state

    def output(self, container_id: str) -> Iterator[bytes]:
        return self._without_report(container_id, self._live_log(container_id))

    def _live_log(self, container_id: str) -> Iterator[bytes]:
        """Followed from when the task runs (a log followed before there is a task ends at
        once); a stream that ends while the task still runs is a cut, so the watcher reads
        the whole log again once the task has ended."""
        state = self.inspect(container_id)
        pause = Backoff(_FIRST_POLL, _WAIT_POLL, 1.5)
        while state is not None and not state.exited and state.started_at is None:
            time.sleep(pause.next())
            state = self.inspect(container_id)
        yield from self._engine_log(container_id, follow=True)
        state = self.inspect(container_id)
        if state is not None and not state.exited:
            raise EngineUnavailable(f"the log of service {container_id} ended before its task")

    def _marker(self, service: str) -> str:
        """The report's marker of ``service``: kept since ``prepare``, or, after a restart, in
        the service's own labels (which the engine shows to no container)."""
        with self._lock:
            if service in self._markers:
                return self._markers[service]
        try:
            with engine_call("inspect a service"):
                labels = self.api.inspect_service(service).get("Spec", {}).get("Labels") or {}
        except NotFound:
            labels = {}
        if LABEL_MARKER not in labels:
            return new_marker()  # no service, or none of ours: no frame can be read
        with self._lock:
            self._markers[service] = marker = str(labels[LABEL_MARKER])
        return marker

    def _without_report(self, service: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The output up to the report's frame; the report is kept for ``report``."""
        unframed = Unframed(chunks, self._marker(service))
        yield from unframed
        with self._lock:
            self._log_ended.add(service)  # the task exits right after its report's frame
            if unframed.found:
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
        # fast once its log has ended (the task exits right after), else at the longest pause
        pause = Backoff(_FIRST_POLL if container_id in self._log_ended else _WAIT_POLL, _WAIT_POLL, 1.5)
        while True:
            state = self.inspect(container_id)
            if state is None or state.exited or time.monotonic() >= deadline:
                return state
            time.sleep(min(pause.next(), max(deadline - time.monotonic(), 0)))

    def inspect(self, container_id: str) -> ContainerState | None:
        try:
            with engine_call("inspect a service"):
                service = self.api.inspect_service(container_id)
                tasks = self.api.tasks(filters={"service": service["ID"]})
        except NotFound:
            if container_id in self._stopped:  # removed by stop: a killed container
                return ContainerState(container_id, Phase.EXITED, {}, exit_code=137)
            return None
        labels = _labels(service)
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
                return ContainerState(
                    service,
                    Phase.EXITED,
                    labels,
                    exit_code=exit_code,
                    oom_killed=exit_code == protocol.EXIT_OUT_OF_MEMORY,
                    over_disk=exit_code == protocol.EXIT_DISK_LIMIT,
                    finished_at=parse_iso(status.get("Timestamp")),
                    node=node,
                )
            raise ContainerGone(
                f"task {state} on node {node or '?'} without an exit code: "
                f"{status.get('Err') or status.get('Message') or state}"
            )
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

    def report(self, container_id: str, output_dir: Path) -> bytes | None:  # noqa: ARG002 (framed in the log, not a file)
        with self._lock:
            if container_id in self._reports:
                return self._reports.pop(container_id)
        for _ in self.logs(container_id, follow=False):  # read to its frame again
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
            self._markers.pop(container_id, None)
            self._log_ended.discard(container_id)
            digest = prepared.image.rpartition("@")[2] if prepared else self._digests.pop(container_id, None)
        digest = digest or self._service_digest(container_id) or self.images.local_digest(container_id)
        with contextlib.suppress(NotFound), engine_call("remove a service"):
            self.api.remove_service(container_id)
        self._stopped.discard(container_id)
        self.networks.remove(container_id)
        self.images.forget(container_id, digest)

    def _service_digest(self, service: str) -> str | None:
        try:
            with engine_call("inspect a service"):
                image = self.api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        except (NotFound, KeyError):
            return None
        return image.rpartition("@")[2] or None

    def find(self, labels: dict[str, str]) -> list[ContainerState]:
        """Services with these labels; and job images and networks without one (a crash
        between push and start, or before a network could go), as never-started
        containers, so that clean-up finds them too."""
        wanted = [f"{k}={v}" for k, v in labels.items()]  # a dict each: docker-py adds to what it is given
        with engine_call("list services"):
            services = self.api.services(filters={"label": list(wanted)})
        with engine_call("list job networks"):
            networks = self.api.networks(filters={"label": list(wanted)})
        leftovers = self.images.leftovers(wanted)
        leftovers.update({network["Name"]: network.get("Labels") or {} for network in networks})
        names = {service["Spec"]["Name"] for service in services} | set(self._prepared) | set(self._digests)
        states = [
            ContainerState(name, Phase.CREATED, labels) for name, labels in leftovers.items() if name not in names
        ]
        for service in services:
            try:
                state = self.inspect(service["Spec"]["Name"])
            except ContainerGone as exc:  # a lost task: found, ended, no exit code
                log.warning("service %s: %s", service["Spec"]["Name"], exc)
                state = ContainerState(service["Spec"]["Name"], Phase.RUNNING, _labels(service))
            if state is not None:
                states.append(state)
        return states


def _limits(spec: ContainerSpec) -> str:
    """The entrypoint's bounds: the workspace and the report's folder share ``disk`` (as
    on one engine, where both are host folders watched together), /tmp has ``tmp_size``."""
    return json.dumps([[[WORKSPACE, OUTPUT_DIR], memory_bytes(spec.disk)], [["/tmp"], memory_bytes(spec.tmp_size)]])


def _resources(spec: ContainerSpec) -> Resources:
    resources = Resources(cpu_limit=int(spec.cpus * 1e9), mem_limit=memory_bytes(spec.memory))
    resources["Limits"]["Pids"] = spec.pids  # Engine API 1.41; docker-py has no argument for it
    return resources


def _labels(service: dict) -> dict[str, str]:
    """A service's labels, as its job's container state carries them: without the marker."""
    return {k: v for k, v in (service.get("Spec", {}).get("Labels") or {}).items() if k != LABEL_MARKER}
