"""A Swarm job's network: a service cannot join "none", so a job with no network gets an
internal overlay network of its own (no route out, no other job on it), removed with the
job. The engine refuses the removal for some seconds after the service is gone (its task's
container is still being removed on its node): it is tried again at each clean-up rather
than waited for, and waited for only when the backend closes."""

from __future__ import annotations

import logging
import threading
import time

from docker.errors import APIError, NotFound

from orchestrator.backends.base import ContainerSpec
from orchestrator.backends.engine import Engine, engine_call

log = logging.getLogger("orchestrator.swarm")


class JobNetworks:
    def __init__(self, manager: Engine):
        self.manager = manager
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # job networks whose removal the engine refused so far

    def for_job(self, spec: ContainerSpec) -> str:
        """The network the job's task joins: ``spec.network``, or for "none" one of its own."""
        if spec.network != "none":
            return spec.network
        with engine_call("create a network"):
            self.manager.api.create_network(spec.name, driver="overlay", internal=True, labels=dict(spec.labels))
        return spec.name

    def remove(self, name: str) -> None:
        """The job's network, and any whose removal was refused before (not waited for:
        the next job's slot would wait)."""
        with self._lock:
            self._pending.add(name)
            pending = sorted(self._pending)
        for network in pending:
            try:
                with engine_call("remove a network"):
                    self.manager.api.remove_network(network)
            except NotFound:
                pass
            except APIError:
                continue  # its task's container is still being removed
            with self._lock:
                self._pending.discard(network)

    def drain(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.25)
            self.remove(next(iter(self._pending)))
        if self._pending:
            log.warning("networks %s stay for the next sweep", ", ".join(sorted(self._pending)))
