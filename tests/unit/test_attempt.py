"""Each path of one attempt, on the in-memory backend: what ends in which state, with
which files, and what is left behind (nothing). Real containers: tests/integration."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.backends.base import LABEL_WARM
from orchestrator.config import load_config
from orchestrator.models import JobStatus
from orchestrator.run import warm
from orchestrator.run.attempt import Attempt
from orchestrator.run.context import Context
from orchestrator.run.spec import WARM_CPU_SHARES
from runner_image import orchestrator_protocol as protocol
from tests.fakes import FAST, JUNIT_FAILED, Bed, FakeBackend, behaving, spec_of
from tests.helpers import write_config


@pytest.fixture
def bed(tmp_path: Path, request):
    backend = FakeBackend(**getattr(request, "param", {}))
    b = Bed(tmp_path, backend)
    yield b
    b.close()
    assert b.left_behind() == ([], []), "containers or workspaces left behind"


def test_passed(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.PASSED and done.attempts == 1 and done.tests.passed == 1
    assert bed.result()["status"] == "passed" and bed.log() == b"collected 1 item\n1 passed\n"
    assert bed.finished == [done] and bed.store.get(1).container_id == done.container_id


@pytest.mark.parametrize("bed", [{"behaviour": behaving(exit_code=1, report=JUNIT_FAILED)}], indirect=True)
def test_failed_is_not_retried(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.FAILED and done.attempts == 1 and done.tests.failed == 1


@pytest.mark.parametrize("bed", [{"behaviour": behaving(waits=-1)}], indirect=True)
def test_timeout_kills_and_says_so(bed: Bed, tmp_path: Path) -> None:
    bed.ctx = Context.create(
        load_config(write_config(tmp_path, {"demo": bed.repo.path}, runner={"timeout": 0.2})),
        bed.store,
        bed.backend,
        patience=FAST,
    )
    done = bed.attempt()
    assert done.status is JobStatus.TIMED_OUT and "0.2 s timeout" in done.message and "stop" in bed.backend.calls


@pytest.mark.parametrize("bed", [{"behaviour": behaving(waits=-1)}], indirect=True)
def test_cancel_while_running(bed: Bed) -> None:
    job = bed.store.claim_next()
    bed.store.request_cancel(job)
    done = Attempt(bed.ctx, job).run()
    assert done.status is JobStatus.CANCELLED and done.message == "cancelled while running"


@pytest.mark.parametrize("bed", [{"behaviour": behaving(waits=3), "faults": Counter(wait=2, inspect=1)}], indirect=True)
def test_engine_lost_mid_wait_is_waited_for(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.PASSED and done.attempts == 1  # waited, not re-queued
    assert bed.backend.calls.count("logs") == 2  # read again after the cut
    assert b"1 passed" in bed.log()


@pytest.mark.parametrize("bed", [{"faults": Counter(prepare=1)}], indirect=True)
def test_engine_lost_at_start_requeues_a_new_attempt(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.QUEUED and done.attempts == 1 and "unreachable" in done.message
    again = bed.attempt()
    assert again.status is JobStatus.PASSED and again.attempts == 2
    assert bed.result()["attempt_history"][0]["outcome"] == "retried"


@pytest.mark.parametrize(
    "bed", [{"behaviour": behaving(starts_despite_fault=True), "faults": Counter(start=1)}], indirect=True
)
def test_engine_cut_while_starting_does_not_start_twice(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.PASSED and done.attempts == 1
    assert bed.backend.calls.count("start") == 1  # it ran: waited for, not started again


@pytest.mark.parametrize("bed", [{"behaviour": behaving(exit_code=137, oom=True, report=None)}], indirect=True)
def test_out_of_memory_is_an_error_in_words(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.ERROR and "out of memory" in done.message and done.attempts == 1


@pytest.mark.parametrize(
    "bed", [{"behaviour": behaving(output=tuple(f"line {i:04d}\n".encode() for i in range(500)))}], indirect=True
)
def test_truncated_log_keeps_head_and_tail(bed: Bed, tmp_path: Path) -> None:
    bed.ctx = Context.create(
        load_config(write_config(tmp_path, {"demo": bed.repo.path}, runner={"max_log_bytes": 1024})),
        bed.store,
        bed.backend,
        patience=FAST,
    )
    done = bed.attempt()
    log = bed.log()
    assert done.log_truncated and bed.result()["log_truncated"] is True
    assert log.startswith(b"line 0000\n") and log.endswith(b"line 0499\n") and b"log truncated" in log


@pytest.mark.parametrize(
    "bed", [{"behaviour": behaving(exit_code=1, waits=1), "faults": Counter(wait=1, logs=9)}], indirect=True
)
def test_log_unreadable_after_an_outage_keeps_the_verdict(bed: Bed) -> None:
    done = bed.attempt()
    assert done.status is JobStatus.FAILED and done.attempts == 1
    assert b"may be incomplete" in bed.log()


@pytest.mark.parametrize("bed", [{"behaviour": behaving(waits=-1, writes=8 * 1024 * 1024)}], indirect=True)
def test_a_workspace_past_the_disk_limit_is_killed(bed: Bed, tmp_path: Path) -> None:
    bed.ctx = Context.create(
        load_config(write_config(tmp_path, {"demo": bed.repo.path}, runner={"disk": "6m"})),
        bed.store,
        bed.backend,
        patience=FAST,
    )
    done = bed.attempt()
    assert (
        done.status is JobStatus.ERROR
        and done.message == "disk limit exceeded: more than 6m written into the workspace"
    )


def test_warm_then_discarded_stays_queued(bed: Bed) -> None:
    job = bed.store.next_queued()
    release = warm.Release()
    release.give(None)  # cancelled before a slot freed
    after = Attempt(bed.ctx, job, warm_start=warm.WarmStart(release)).run()
    assert after.status is JobStatus.QUEUED and bed.store.get(job.id).attempts == 0
    assert bed.backend.destroyed and bed.finished == []


def test_warm_released_runs_with_its_clock_from_the_release(bed: Bed) -> None:
    job = bed.store.next_queued()
    release = warm.Release()
    release.give(bed.store.claim(job))
    done = Attempt(bed.ctx, job, warm_start=warm.WarmStart(release)).run()
    assert done.status is JobStatus.PASSED and done.attempts == 1
    (spec,) = bed.backend.specs
    assert spec.labels[LABEL_WARM] == "1" and spec.labels["orchestrator.attempt"] == "1"
    assert protocol.RELEASE in spec.variables
    # prepared at the lowest CPU weight, given the usual one when released
    assert spec.cpu_shares == WARM_CPU_SHARES and "prioritise" in bed.backend.calls


def test_where_nothing_starts_warm_a_job_is_prepared_ahead_and_started_once_released(bed: Bed) -> None:
    """A Swarm's way: the job image is made while the slot is busy, the service only once
    the job is claimed; its container is recorded then, and nothing waits for a file."""
    bed.backend.warm_starts = False
    job = bed.store.next_queued()
    release = warm.Release()
    attempt = Attempt(bed.ctx, job, warm_start=warm.WarmStart(release))
    seen_at_release: list[list[str]] = []
    claimed = bed.store.claim(job)

    def give() -> None:  # once the job is prepared (bounded), and a moment more: nothing may start before it
        deadline = time.monotonic() + 10
        while "prepare" not in bed.backend.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        seen_at_release.append(list(bed.backend.calls))
        release.give(claimed)

    timer = threading.Thread(target=give)
    timer.start()
    done = attempt.run()
    timer.join()
    assert done.status is JobStatus.PASSED and done.attempts == 1 and done.container_id is not None
    assert "prepare" in seen_at_release[0] and "start" not in seen_at_release[0]  # made ahead, started on release
    assert bed.backend.calls.index("prepare") < bed.backend.calls.index("start")
    (spec,) = bed.backend.specs
    assert LABEL_WARM not in spec.labels and protocol.RELEASE not in spec.variables and spec.cpu_shares is None
    assert "prioritise" not in bed.backend.calls


def test_a_warm_job_whose_weight_cannot_be_raised_still_runs(bed: Bed) -> None:
    bed.backend.faults["prioritise"] = 1
    job = bed.store.next_queued()
    release = warm.Release()
    release.give(bed.store.claim(job))
    assert Attempt(bed.ctx, job, warm_start=warm.WarmStart(release)).run().status is JobStatus.PASSED


def test_adopted_after_a_restart(bed: Bed) -> None:
    job = bed.store.claim_next()
    spec = _spec_of(bed, job)
    state = bed.backend.adopt(spec)
    job = bed.store.apply(job, dataclasses.replace(job, container_id=state.id))
    bed.backend.calls.clear()  # what the earlier process did
    done = Attempt(bed.ctx, job, adopt=state).run()
    assert done.status is JobStatus.PASSED and done.container_id == state.id and done.attempts == 1
    assert bed.backend.calls == ["wait", "logs", "destroy"]  # its log is the engine's copy, read at its end
    assert bed.backend.destroyed == [state.id]


def test_image_missing_is_final_not_retried(tmp_path: Path) -> None:
    b = Bed(tmp_path, FakeBackend(images=()))
    done = b.attempt()
    assert done.status is JobStatus.ERROR and "image build" in done.message and done.attempts == 1
    assert b.result()["status"] == "error"
    b.close()
    assert b.left_behind() == ([], [])


def test_an_environment_image_pruned_before_its_container_is_made_is_retried(bed: Bed, monkeypatch) -> None:
    """Another repository's build (or an operator) pruned the environment image between its
    lookup and the container's creation: not a configuration error the user must fix, but
    an attempt tried again, which finds (or builds) the environment anew."""
    from orchestrator.backends.base import ImageInfo
    from orchestrator.environment.setup import Setup
    from orchestrator.errors import ImageMissing
    from orchestrator.run import steps as steps_module

    env = ImageInfo("orchestrator-env/demo:0123456789abcdef", "sha256:" + "e" * 64)
    monkeypatch.setattr(
        steps_module, "setup", lambda *_a, **_k: Setup(env, {}, {"fingerprint": "0123456789abcdef", "built": False})
    )
    prepare, gone = bed.backend.prepare, [True]

    def pruned_once(spec):
        if gone and gone.pop():
            raise ImageMissing(f"runner image {spec.image} is missing: run `orchestrator image build`")
        return prepare(spec)

    monkeypatch.setattr(bed.backend, "prepare", pruned_once)
    done = bed.attempt()
    assert done.status is JobStatus.QUEUED and done.attempts == 1
    assert "environment image orchestrator-env/demo:0123456789abcdef was removed" in done.message
    assert bed.attempt().status is JobStatus.PASSED


def _spec_of(bed: Bed, job):
    return spec_of(bed, job)


@pytest.mark.parametrize("failure", ["environment", "engine", "bug"])
def test_a_warm_job_released_while_its_environment_builds_still_ends(bed: Bed, monkeypatch, failure: str) -> None:
    """Started warm; a slot frees and the dispatcher claims it while its environment is
    still being built; then the build fails. The claimed job ends (or is re-queued): it
    never stays `running` with a stale copy's compare-and-swap lost in its future."""
    from orchestrator.environment.settings import EnvironmentBroken
    from orchestrator.errors import EngineUnavailable
    from orchestrator.run import steps as steps_module

    job = bed.store.next_queued()
    release = warm.Release()

    def building(*_args, **_kwargs):
        release.give(bed.store.claim(job))  # the dispatcher released it meanwhile
        raise {
            "environment": EnvironmentBroken("no matching distribution", None),
            "engine": EngineUnavailable("Docker engine unreachable (build): gone"),
            "bug": RuntimeError("a bug"),
        }[failure]

    monkeypatch.setattr(steps_module, "setup", building)
    after = Attempt(bed.ctx, job, warm_start=warm.WarmStart(release)).run()
    stored = bed.store.get(job.id)
    assert stored == after and stored.attempts == 1
    if failure == "environment":
        assert stored.status is JobStatus.ERROR and stored.message.startswith("environment build failed")
        assert bed.result()["status"] == "error"
    else:
        assert stored.status is JobStatus.QUEUED and stored.message.startswith("attempt 1: ")


def test_a_warm_attempt_that_fails_leaves_nothing_once_it_withdraws(bed: Bed, monkeypatch) -> None:
    """Once a warm start is withdrawn the job may start again at once, in the same
    workspace: by then this attempt has set its workspace aside (it moved the new one away)."""
    from orchestrator.errors import EngineUnavailable
    from orchestrator.run import steps as steps_module

    job = bed.store.next_queued()
    seen: list[bool] = []

    class Watching(warm.WarmStart):
        def ended_early(self):
            seen.append(bed.ctx.workspaces.get(job.id).root.exists())
            return super().ended_early()

    def building(*_args, **_kwargs):
        raise EngineUnavailable("Docker engine unreachable (build): gone")

    monkeypatch.setattr(steps_module, "setup", building)
    after = Attempt(bed.ctx, job, warm_start=Watching()).run()
    assert after.status is JobStatus.QUEUED and seen == [False]
