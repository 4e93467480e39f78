"""A real Swarm for the session: this host's engine as manager, two workers (each a dockerd
in a network namespace of its own), a TLS registry; scripts/swarm-testbed.sh makes it and
ends it, leaving the swarm at the end so the rest of the suite sees the engine as it was."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "swarm-testbed.sh"


@dataclass
class Testbed:
    __test__ = False

    dir: Path
    registry: str
    workers: dict[str, str]  # hostname -> engine socket
    pids: dict[str, int]  # hostname -> dockerd pid

    def restart(self, name: str) -> None:
        number = name.rsplit("w", 1)[1]
        out = subprocess.run(
            ["bash", str(SCRIPT), "restart", str(self.dir), number],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        self.pids[name] = int(out.stdout.split()[-1])

    def ready(self, manager: docker.DockerClient, timeout: float = 60) -> None:
        """Every worker Ready again (after a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"] for n in manager.nodes.list()}
            if all(nodes.get(name) == "ready" for name in self.workers):
                return
            time.sleep(0.5)
        raise AssertionError(f"workers not ready: {nodes}")


@pytest.fixture(scope="session")
def testbed(tmp_path_factory, engine: docker.DockerClient, runner_image: str):
    directory = tmp_path_factory.mktemp("swarm")
    gwbridge_before = engine.networks.list(names=["docker_gwbridge"]) or None
    up = subprocess.run(["bash", str(SCRIPT), "up", str(directory), "2"], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        facts = dict(line.split("=", 1) for line in up.stdout.split())
        workers = {facts[f"WORKER{i}_NAME"]: facts[f"WORKER{i}_HOST"] for i in (1, 2)}
        pids = {facts[f"WORKER{i}_NAME"]: int(facts[f"WORKER{i}_PID"]) for i in (1, 2)}
        bed = Testbed(directory, facts["REGISTRY"], workers, pids)
        bed.ready(engine)
        yield bed
    finally:
        down = subprocess.run(
            ["bash", str(SCRIPT), "down", str(directory)], capture_output=True, text=True, timeout=300
        )
        assert down.returncode == 0, down.stderr[-3000:]
        assert engine.info()["Swarm"]["LocalNodeState"] == "inactive"
        assert not (gwbridge_before is None and engine.networks.list(names=["docker_gwbridge"]))


@pytest.fixture
def swarm_orch(orch, testbed: Testbed, engine: docker.DockerClient):
    """``orch`` configured for the Swarm; no service, job image or registry tag of its
    instance is left after the test."""

    def configure(**runner) -> Path:
        return orch.configure(
            runner={
                "backend": "swarm",
                "registry": testbed.registry,
                "constraints": ["node.role==worker"],
                "memory": "256m",
                **runner,
            }
        )

    orch.configure_swarm = configure
    yield orch
    if orch.config_path is None or (orch.config.store.url is None and not orch.config.db_path.exists()):
        return
    prefix = f"orchestrator-{orch.instance()}-"
    for proc in orch.processes:  # a dispatcher still running could start another service
        if proc.poll() is None:
            proc.kill()
    services = [s for s in engine.services.list() if s.name.startswith(prefix)]
    for service in services:
        service.remove()
    images = [t for i in engine.images.list() for t in i.tags if f"orchestrator-job:{prefix}" in t]
    networks = [n.name for n in engine.networks.list() if n.name.startswith(prefix)]
    tags = registry_tags(testbed)
    assert not services, f"services left behind: {[s.name for s in services]}"
    assert not images, f"job images left behind: {images}"
    assert not networks, f"job networks left behind: {networks}"
    assert not [t for t in tags if t.startswith(prefix)], f"registry tags left behind: {tags}"


def registry_tags(testbed: Testbed, repository: str = "orchestrator-job") -> list[str]:
    import requests

    ca = testbed.dir / "registry.crt"
    resp = requests.get(f"https://{testbed.registry}/v2/{repository}/tags/list", verify=str(ca), timeout=10)
    return (resp.json().get("tags") or []) if resp.ok else []
