"""Splitting one commit's suite across containers (``repositories[].shards``): how many,
what each container is told, and how their reports become one.

The split is made in the containers, at collection time, by the runner image's plugin
(runner_image/orchestrator_shard.py): the host never collects the suite. It gives every
container the same plan, the recorded duration of each test, and its index; each
computes the same longest-first split and keeps its share.

Durations are kept per test in ``test_durations``: a moving average over the test's
passing runs (history.record updates it), so one slow run on a busy machine moves the
split a little, not all the way.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import RepositoryConfig
from orchestrator.models import JobStatus
from orchestrator.results.report import Report
from orchestrator.store import Store
from runner_image import orchestrator_protocol as protocol

log = logging.getLogger("orchestrator.run.sharding")

PLAN_FILE = protocol.SHARD_PLAN  # in the container's /ci-out, where the plugin reads it
TARGET_SECONDS = 60.0  # what ``auto`` aims one shard's tests at
DEFAULT_OVERHEAD = 5.0  # seconds a container costs beyond its tests, until jobs have told
MAX_DURATIONS = 200_000  # test durations put in one plan
RECORDED_FOR = 5.0  # seconds a repository's recorded suite time is used before it is read again
COLLECTED = protocol.COLLECTED_PROPERTY  # the property each shard's report carries (the plugin sets it)

# The worst of the shards is the commit's status.
_SEVERITY = [JobStatus.PASSED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.ERROR, JobStatus.CANCELLED]


@dataclass(frozen=True)
class Plan:
    count: int
    unit: str = "test"
    durations: dict[str, float] = field(default_factory=dict)
    queue: bool = False  # the shards take units from a shared queue, where the engine can share a folder

    def document(self) -> bytes:
        """The plan file's bytes: what every shard of the commit reads."""
        return json.dumps({"count": self.count, "unit": self.unit, "durations": self.durations}).encode()


class Planner:
    """How many containers a commit's suite is split across, from the config, what the
    store recorded of the repository's earlier runs, and the free slots."""

    def __init__(self, repositories: Sequence[RepositoryConfig], parallelism: int, store: Store):
        self.repositories = {r.name: r for r in repositories}
        self.parallelism = parallelism
        self.store = store
        # what the store said of a repository's runs, and when: a split commit waiting for
        # its slots is asked about at every scheduling step, the store not that often
        self._recorded: dict[tuple[str, str], tuple[float, float | None, float]] = {}
        for repo in repositories:
            if repo.shards != "auto" and repo.shards > parallelism:
                log.warning(
                    "%s: shards %d is more than runner.parallelism %d: its suite is split %d ways "
                    "(raise runner.parallelism for more)",
                    repo.name,
                    repo.shards,
                    parallelism,
                    parallelism,
                )

    def wanted(self, repository: str) -> int | str:
        repo = self.repositories.get(repository)
        return repo.shards if repo else 1

    def count(self, repository: str, free: int, python: str = "") -> int:
        """The containers for the next commit of ``repository``: ``shards`` (at most
        ``parallelism``; the job then waits for that many free slots), or for ``auto`` one
        per TARGET_SECONDS of the recorded suite, at most the free slots and no more than
        the suite pays for (each container brings more test time than the overhead of one
        container). A recorded suite shorter than that overhead is never split."""
        wanted = self.wanted(repository)
        if wanted == 1:
            return 1
        suite, overhead = self._recorded_runs(repository, python)
        if suite is None:
            return 1 if wanted == "auto" else min(int(wanted), self.parallelism)
        if suite < overhead:
            return 1
        if wanted == "auto":
            return max(1, min(math.ceil(suite / TARGET_SECONDS), int(suite // overhead), free, self.parallelism))
        return min(int(wanted), self.parallelism)

    def _recorded_runs(self, repository: str, python: str = "") -> tuple[float | None, float]:
        known = self._recorded.get((repository, python))
        if known is None or time.monotonic() - known[0] >= RECORDED_FOR:
            suite = self.suite_seconds(repository, python)
            known = (
                time.monotonic(),
                suite,
                self.overhead(repository, python) if suite is not None else DEFAULT_OVERHEAD,
            )
            self._recorded[(repository, python)] = known
        return known[1], known[2]

    def plan(self, repository: str, count: int, python: str = "") -> Plan:
        """The split of a commit's suite (its variant on ``python``'s: each Python's own durations)."""
        repo = self.repositories.get(repository)
        durations = self.store.tests.durations(repository, MAX_DURATIONS, python)
        return Plan(
            count,
            repo.shard_unit if repo else "test",
            {test: round(seconds, 4) for test, seconds in durations.items()},
            queue=repo is not None and repo.shard_split == "queue",
        )

    def suite_seconds(self, repository: str, python: str = "") -> float | None:
        """The test time of the newest passing run of ``repository`` on ``python`` (None: none yet)."""
        return self.store.tests.suite_seconds(repository, python)

    def overhead(self, repository: str, python: str = "") -> float:
        """What one container costs beyond its tests: the median, over the newest unsplit
        passing runs, of the job's duration less its test time."""
        costs = [max(cost, 0.1) for cost in self.store.tests.overheads(repository, python=python)]
        return statistics.median(costs) if costs else DEFAULT_OVERHEAD


def worst(statuses: list[JobStatus]) -> JobStatus:
    return max(statuses, key=_SEVERITY.index)


def mismatch(reports: list[Report]) -> str | None:
    """Why the shards' split cannot be trusted, if it cannot: they did not all collect the
    same tests (a parametrisation whose ids change from one run to the next), so some may
    have run twice and some not at all."""
    seen = {value for value in (r.property(COLLECTED) for r in reports) if value is not None}
    if len(seen) <= 1:
        return None
    counts = sorted({value.partition(":")[0] for value in seen})
    return (
        f"the shards collected different tests ({' vs '.join(counts)} tests, or the same number with other ids): "
        "some test ids change from one run to the next; give them stable ids, or set shards: 1"
    )


def unrun(reports: list[Report]) -> str | None:
    """Why the shards did not run each collected test exactly once, if they did not: the
    tests each says it ran do not add up to what they collected. Asked only of reports that
    all say both (a shard stopped early by an error says neither)."""
    collected = {r.property(COLLECTED) for r in reports}
    ran = [r.property(protocol.RAN_PROPERTY) for r in reports]
    if len(collected) != 1 or None in collected or not all(n and n.isdigit() for n in ran):
        return None
    total, expected = sum(int(n) for n in ran if n), (collected.pop() or "").partition(":")[0]
    if not expected.isdigit() or total == int(expected):
        return None
    return f"the shards ran {total} tests in all, not once each of the {expected} they collected"


def summary(index: int, status: JobStatus, **facts: Any) -> dict[str, Any]:
    return {"index": index, "status": status.value, **facts}
