"""How many jobs wait warm: ``runner.warm`` (default: the slots), bounded by the engine's
memory; and the store's next queued job after those already warm. The pool on the real
engine is in tests/integration/test_commands.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.store import NewCommit, Store
from tests import fakes
from tests.fakes import FakeBackend
from tests.helpers import GitRepo, write_config

GIB = 1024**3


@dataclass
class MemoryBackend(FakeBackend):
    total: int | None = None

    def memory_total(self) -> int | None:
        return self.total


@pytest.mark.parametrize(
    ("runner", "total", "depth"),
    [
        ({}, None, 2),  # as many as the slots
        ({}, 16 * GIB, 2),
        ({"warm": 5}, 16 * GIB, 5),
        ({"warm": 5}, 4 * GIB, 2),  # 4 containers of 1g: 2 run, 2 wait
        ({"warm": 5, "memory": "2g"}, 5 * GIB, 0),  # no room beyond the running ones
        ({"warm": 0}, 16 * GIB, 0),  # warm starts off
    ],
)
def test_the_warm_depth(tmp_path: Path, runner: dict, total: int | None, depth: int) -> None:
    config = load_config(
        write_config(tmp_path, {"demo": tmp_path}, runner={"parallelism": 2, "memory": "1g", **runner})
    )
    store = Store(config.db_path)
    dispatcher = fakes.dispatcher(config, store, MemoryBackend(total=total))
    try:
        assert dispatcher._depth() == depth
    finally:
        dispatcher.shutdown()
        store.close()


def test_a_backend_that_prepares_nothing_ahead_has_no_warm_jobs(tmp_path: Path) -> None:
    """A backend that cannot start warm but can prepare ahead (a Swarm: the job image is
    pushed, the service made on release) keeps the depth; one that can do neither has none."""
    config = load_config(write_config(tmp_path, {"demo": tmp_path}, runner={"warm": 4}))
    store = Store(config.db_path)
    backend = MemoryBackend(total=64 * GIB)
    backend.warm_starts = False
    dispatcher = fakes.dispatcher(config, store, backend)
    try:
        assert dispatcher._depth() == 4
        backend.prepares_ahead = False
        dispatcher._warm_depth = None
        assert dispatcher._depth() == 0
    finally:
        dispatcher.shutdown()
        store.close()


def test_next_queued_skips_the_jobs_already_warm(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "upstream")
    shas = [repo.commit(f"c{i}", {"f.txt": str(i)}) for i in range(3)]
    store = Store(tmp_path / "state.db")
    try:
        store.record_commits("demo", [NewCommit(sha, f"c{i}", ("main",)) for i, sha in enumerate(shas)])
        first = store.next_queued()
        second = store.next_queued(besides=frozenset({first.id}))
        third = store.next_queued(besides=frozenset({first.id, second.id}))
        assert [first.commit, second.commit, third.commit] == shas
        assert store.next_queued(besides=frozenset({first.id, second.id, third.id})) is None
    finally:
        store.close()


def test_a_warm_attempt_that_ended_before_its_release_is_never_claimed(tmp_path: Path) -> None:
    """The attempt failed while warm and left its job queued: the dispatcher, releasing it
    a moment later, must not claim it (it did, and the job stayed `running` with nothing
    running it). Whichever of the two comes first decides."""
    from concurrent.futures import Future

    from orchestrator.models import JobStatus
    from orchestrator.run.warm import Release, WarmPool

    config = load_config(write_config(tmp_path, {"demo": tmp_path}))
    store = Store(config.db_path)
    store.record_commits("demo", [NewCommit("a" * 40, "one", ("main",)), NewCommit("b" * 40, "two", ("main",))])
    first = store.next_queued()
    pool, early, late = WarmPool(), Release(), Release()
    pool.add(first, early, Future())
    assert early.withdraw() is None  # the attempt ended first
    assert pool.release_first(store.claim) is None and store.get(first.id).status is JobStatus.QUEUED
    second = store.get(2)
    pool.add(second, late, Future())
    released = pool.release_first(store.claim)  # the dispatcher came first
    assert released is not None and late.withdraw() == released[0] and released[0].status is JobStatus.RUNNING
    store.close()
