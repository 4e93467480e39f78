"""The dispatcher's scheduling on the fake backend, fast: never more containers than
slots, a split suite waiting at the head for its slots, warm jobs released in queue order,
an engine that is away backed off; and its safety net: an attempt whose future ends with
the job still `running` (an exception that escaped it) is logged and concluded by the
retry policy, so `run --once` never leaves a job it took unfinished."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.models import JobStatus
from orchestrator.run import attempt as attempt_module
from orchestrator.store import NewCommit, Store
from tests import fakes
from tests.fakes import FakeBackend
from tests.helpers import PASSING, GitRepo, write_config


def test_an_attempt_that_escapes_with_its_job_running_is_concluded(tmp_path: Path, monkeypatch, caplog) -> None:
    repo = GitRepo(tmp_path / "upstream")
    sha = repo.commit("root", PASSING)
    config = load_config(write_config(tmp_path, {"demo": repo.path}, runner={"warm": 0}, retries=1))
    store = Store(config.db_path)
    store.record_commits("demo", [NewCommit(sha, "root", ("main",))])

    def escapes(self):  # a bug past every handler: the job stays running in the store
        raise RuntimeError("escaped the attempt")

    monkeypatch.setattr(attempt_module.Attempt, "run", escapes)
    dispatcher = fakes.dispatcher(config, store, FakeBackend())
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)  # bounded, whatever happens
    timer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="orchestrator.dispatch.dispatcher"):
            dispatcher.run(stop, until_idle=True)
    finally:
        timer.cancel()
    job = store.get(1)
    store.close()
    assert not stop.is_set(), "the dispatcher never became idle"
    assert job.status is JobStatus.ERROR and job.attempts == 2
    assert job.message == "gave up after 2 attempts: internal error: the attempt ended without concluding the job"
    assert "its attempt raised RuntimeError: escaped the attempt" in caplog.text


# -- scheduling, on the fake backend ---------------------------------------------------------


def _world(
    tmp_path: Path,
    repositories: dict[str, int],
    runner: dict,
    shards: dict[str, int] | None = None,
    behaviour=None,
    faults=None,
):
    """Repositories (name -> commits, each queued in order, round-robin), a store and a
    dispatcher over a fake backend whose containers run until stopped."""
    from collections import Counter

    from tests.fakes import FAST, behaving

    repos = {name: GitRepo(tmp_path / name) for name in repositories}
    shas = {
        name: [repo.commit(f"{name} {i}", {**PASSING, "n.txt": f"{i}\n"}) for i in range(count)]
        for (name, count), repo in zip(repositories.items(), repos.values(), strict=True)
    }
    config = load_config(write_config(tmp_path, {n: r.path for n, r in repos.items()}, runner=runner, retries=0))
    if shards:
        config = config.model_copy(
            update={
                "repositories": [r.model_copy(update={"shards": shards.get(r.name, 1)}) for r in config.repositories]
            }
        )
    store = Store(config.db_path)
    order = [
        (name, sha)
        for i in range(max(repositories.values()))
        for name in repositories
        if i < len(shas[name])
        for sha in [shas[name][i]]
    ]
    for name, sha in order:
        store.record_commits(name, [NewCommit(sha, "s", ("main",))])
    backend = FakeBackend(behaviour or behaving(waits=-1), faults=faults or Counter())
    return config, store, backend, fakes.dispatcher(config, store, backend, patience=FAST)


def _until(condition, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def _statuses(store: Store) -> list[str]:
    return [store.get(i).status.value for i in range(1, len(store.list_jobs(limit=1000)) + 1)]


def test_never_more_jobs_than_slots(tmp_path: Path) -> None:
    config, store, backend, dispatcher = _world(tmp_path, {"demo": 3}, {"parallelism": 2, "warm": 0})
    try:
        dispatcher.step()
        _until(lambda: len(backend.specs) == 2)
        dispatcher.step()
        assert _statuses(store) == ["running", "running", "queued"] and len(backend.specs) == 2
    finally:
        dispatcher.shutdown()
        store.close()


def test_a_split_suite_waits_at_the_head_for_its_slots_and_nothing_overtakes_it(tmp_path: Path) -> None:
    config, store, backend, dispatcher = _world(
        tmp_path, {"plain": 2, "split": 1}, {"parallelism": 2, "warm": 0}, shards={"split": 2}
    )
    try:  # queued: plain 0, split 0, plain 1
        dispatcher.step()
        _until(lambda: len(backend.specs) == 1)
        dispatcher.step()
        assert _statuses(store) == ["running", "queued", "queued"]  # one slot free: the split one needs two
        assert dispatcher._free() == 1
    finally:
        dispatcher.shutdown()
        store.close()


def test_warm_jobs_are_released_in_queue_order_when_a_slot_frees(tmp_path: Path) -> None:
    from tests.fakes import behaving

    config, store, backend, dispatcher = _world(
        tmp_path, {"demo": 3}, {"parallelism": 1, "warm": 2}, behaviour=behaving(waits=-1)
    )
    try:
        dispatcher.step()  # job 1 runs; jobs 2 and 3 start warm (still queued in the store)
        _until(lambda: len(backend.specs) == 3)
        assert _statuses(store) == ["running", "queued", "queued"]
        first = next(cid for cid, box in backend.containers.items() if box.spec.labels["orchestrator.job"] == "1")
        backend.stop(first)  # job 1's container ends
        _until(lambda: store.get(1).status.value != "running")
        _until(lambda: (dispatcher.step(), store.get(2).status.value == "running")[1])
        assert _statuses(store)[1:] == ["running", "queued"]  # job 2 first, job 3 still waiting warm
        assert len(backend.specs) == 3  # job 2 runs in the container it was started warm in
    finally:
        dispatcher.shutdown()
        store.close()


def test_an_engine_away_is_backed_off_and_nothing_is_claimed_meanwhile(tmp_path: Path) -> None:
    from collections import Counter

    config, store, backend, dispatcher = _world(
        tmp_path, {"demo": 1}, {"parallelism": 1, "warm": 0}, faults=Counter(find=1)
    )
    try:
        dispatcher.step()  # recovery asks the engine first: it is away
        assert dispatcher.engine_error is not None and _statuses(store) == ["queued"] and backend.specs == []
        dispatcher.step()  # within the back-off: not even asked
        assert backend.calls.count("find") == 1
        dispatcher._engine_retry_at = 0  # the back-off has passed
        dispatcher.step()
        _until(lambda: len(backend.specs) == 1)
        assert dispatcher.engine_error is None and _statuses(store) == ["running"]
    finally:
        dispatcher.shutdown()
        store.close()
