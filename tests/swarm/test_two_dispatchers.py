"""Two dispatcher processes on one PostgreSQL store with the Swarm test bed (each with its own
name, state_dir and port): started at once, exactly one is active; the active kill -9ed while
four services run is replaced within the lease and a few seconds and its services re-adopted;
the active paused past its lease steps down when it wakes; PostgreSQL restarted while
services run loses nothing. And with the local Docker backend, each dispatcher with an engine
of its own (a worker's dockerd, used as a plain engine): the active and its engine gone
together, its running jobs run again as new attempts on the new active's engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

import docker
import pytest

from tests.helpers import (
    PASSING,
    SLOW,
    becomes_active,
    forget_state,
    health_while_the_store_restarts,
    never_two_active,
    pause_past_the_lease,
    running_jobs,
    start_two_dispatchers,
    stop_dispatchers,
    the_active,
)
from tests.swarm.conftest import Testbed
from tests.swarm.test_swarm import commits

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

LEASE = 3.0  # seconds: the tests' own, so that a take-over is quick (the default is 10)


def _swarm(testbed: Testbed, **runner: object) -> dict:
    return {
        "backend": "swarm",
        "registry": testbed.registry,
        "constraints": ["node.role==worker"],
        "memory": "256m",
        "timeout": 300,
        **runner,
    }


def _services_running(engine: docker.DockerClient, instance: str) -> set[str]:
    """The names of the instance's services with a running task (a job's ``container``)."""
    return {
        s.name
        for s in engine.services.list(filters={"label": f"orchestrator.instance={instance}"})
        if any(t["Status"]["State"] == "running" for t in s.tasks())
    }


def _passed_once(orch, shas: list[str], timeout: float) -> list[dict]:
    """Each commit's result once all have one: every one passed in its first attempt."""
    orch.wait_for(lambda: orch.has_result(*shas), timeout=timeout)
    results = [orch.result(sha) for sha in shas]
    for result in results:
        assert (result["status"], result["attempts"], result["tests"]["passed"]) == ("passed", 1, 2), result
    return results


def test_started_at_once_one_is_active_and_killed_while_four_services_run_the_standby_adopts_them(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient, postgres
) -> None:
    """Both started at once: exactly one active, and the same one throughout. It is kill
    -9ed while four jobs run as services; the standby takes the lease within the lease and
    a few seconds, re-adopts the services by their labels (their reports come back in their
    logs, framed), and every job passes once."""
    orch = swarm_orch
    commits(orch, 1, sleep=0)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner=_swarm(testbed, parallelism=4))
    seen = never_two_active(started, 2 * LEASE)
    active = orch.wait_for(lambda: the_active(started), timeout=60)
    assert [s for s in seen if s] and all(s == {active[0]} for s in seen if s)
    standby = next(d for d in started if d is not active)
    orch.wait_for(lambda: orch.has_result(orch.repo.head()), timeout=180)  # the root, seen and tested first
    shas = commits(orch, 4, sleep=15)
    orch.wait_for(lambda: len(_services_running(engine, orch.instance())) == 4, timeout=180)
    active[2].send_signal(signal.SIGKILL)
    active[2].wait(timeout=30)
    took = becomes_active(orch, standby, LEASE + 15)
    assert took <= LEASE + 5, took
    _passed_once(orch, shas, timeout=240)
    stop_dispatchers([standby])
    forget_state(orch, active[0])


def test_the_active_paused_steps_down_and_a_postgresql_restart_keeps_the_services(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient, postgres
) -> None:
    """The active SIGSTOPped past its lease while two services run: the standby takes over
    and re-adopts them; the paused one, woken, steps down and writes nothing. Then PostgreSQL
    restarted while the new active's services run: it keeps them (the same services, no
    second attempt), says so in /healthz meanwhile, the standby does not take over, and a
    commit pushed after it is tested. (The one-engine run of this was the same dispatcher and
    attempt code on another backend: this one covers both.)"""
    orch = swarm_orch
    commits(orch, 1, sleep=0)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner=_swarm(testbed, parallelism=2))
    first = orch.wait_for(lambda: the_active(started), timeout=60)
    second = next(d for d in started if d is not first)
    orch.wait_for(lambda: orch.has_result(orch.repo.head()), timeout=180)
    paused_through = commits(orch, 2, sleep=20)
    orch.wait_for(lambda: len(_services_running(engine, orch.instance())) == 2, timeout=180)
    pause_past_the_lease(orch, first, second, LEASE)
    _passed_once(orch, paused_through, timeout=240)

    # PostgreSQL restarted under the new active's load
    restarted_through = [
        orch.repo.commit(f"through a restart {n}", {"tests/test_a.py": PASS_SLOWLY.format(n=n)}) for n in range(2)
    ]
    services = orch.wait_for(
        lambda: s if len(s := _services_running(engine, orch.instance())) == 2 else None, timeout=180
    )
    away = health_while_the_store_restarts(postgres, second[1], LEASE)
    later = orch.repo.commit("after the restart", {"tests/test_a.py": PASS_SLOWLY.format(n="later")})
    results = _passed_once(orch, [*restarted_through, later], timeout=240)  # a push after it is tested too
    assert {r["container"] for r in results[:2]} == services  # the same services finished them: none started again
    assert away["status"] == "degraded" and away["store"].startswith("unreachable"), away
    assert the_active(started) == second  # the standby did not take over while the database was away
    stop_dispatchers(started)
    forget_state(orch, first[0])  # the paused one's, once its jobs ended: swept by it, or left here


PASS_SLOWLY = "import time\n\ndef test_one():\n    time.sleep(20)  # {n}\n\ndef test_two():\n    assert 1 + 1 == 2\n"


@dataclass
class OwnEngines:
    """Each dispatcher's engine: a worker's dockerd, used as a plain engine."""

    hosts: dict[str, str]  # dispatcher name -> docker_host
    workers: dict[str, str]  # dispatcher name -> the worker whose engine it is
    killed: list[str]  # workers whose engine a test killed

    def kill(self, testbed: Testbed, dispatcher: str) -> None:
        worker = self.workers[dispatcher]
        os.kill(testbed.pids[worker], signal.SIGKILL)  # by its own pid
        self.killed.append(worker)


@pytest.fixture
def own_engines(testbed: Testbed, engine: docker.DockerClient, runner_image: str):
    """alpha's and beta's engines, each holding the runner image under its usual name
    (pushed to the test bed's registry, pulled there). Afterwards a killed one is started
    again, and what is left on each (a dead engine's containers, stopped as it came back)
    removed."""
    pushed = f"{testbed.registry}/ci-runner"
    engine.images.get(runner_image).tag(pushed, "latest")
    for line in engine.images.push(pushed, "latest", stream=True, decode=True):
        assert "error" not in line, line
    workers = dict(zip(("alpha", "beta"), sorted(testbed.workers), strict=True))
    engines = OwnEngines({name: testbed.workers[w] for name, w in workers.items()}, workers, [])
    for host in engines.hosts.values():
        with contextlib.closing(docker.DockerClient(base_url=host, timeout=120)) as client:
            client.images.pull(pushed, "latest").tag(runner_image)
    try:
        yield engines
    finally:
        engine.images.remove(f"{pushed}:latest")
        for worker in engines.killed:
            testbed.restart(worker)
        testbed.ready(engine, timeout=120)
        for host in engines.hosts.values():
            with contextlib.closing(docker.DockerClient(base_url=host, timeout=60)) as client:
                for container in client.containers.list(all=True, filters={"label": "orchestrator.instance"}):
                    container.remove(force=True)


def test_each_with_its_own_engine_the_lost_actives_running_jobs_run_again_as_new_attempts(
    orch, own_engines: OwnEngines, testbed: Testbed, postgres
) -> None:
    """The local Docker backend, each dispatcher on an engine of its own: the active and its
    engine killed while two jobs run. The new active finds nothing of them on its engine: it
    re-queues each as a new attempt, whose history says the dispatcher was lost, and runs it."""
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(
        orch,
        postgres.database(),
        LEASE,
        runner={"parallelism": 2, "timeout": 120, "docker_host": own_engines.hosts["alpha"]},
        beta_runner={"docker_host": own_engines.hosts["beta"]},
    )
    active = orch.wait_for(lambda: the_active(started), timeout=60)
    standby = next(d for d in started if d is not active)
    orch.wait_for(lambda: orch.has_result(orch.repo.head()), timeout=120)
    shas = [orch.repo.commit(f"slow {n}", {f"tests/test_slow_{n}.py": SLOW.format(seconds=20, n=n)}) for n in range(2)]
    orch.wait_for(lambda: len(running_jobs(standby[1])) == 2, timeout=120)
    active[2].send_signal(signal.SIGKILL)
    own_engines.kill(testbed, active[0])  # its machine is gone: its engine with it
    active[2].wait(timeout=30)
    becomes_active(orch, standby, LEASE + 15)
    orch.wait_for(lambda: orch.has_result(*shas), timeout=180)
    for sha in shas:
        result = orch.result(sha)
        assert (result["status"], result["attempts"], result["dispatcher"]) == ("passed", 2, standby[0]), result
        first = result["attempt_history"][0]
        assert first["outcome"] == "retried" and f"dispatcher {active[0]} lost" in first["message"], first
    stop_dispatchers([standby])
    forget_state(orch, active[0])
