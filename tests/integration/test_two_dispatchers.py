"""Two dispatcher processes on one PostgreSQL store (leadership.py), on the real engine with
real commits: exactly one is active; a standby refuses a change with 503 and the active's
address; the active killed (kill -9) or paused past its lease (SIGSTOP) is replaced within
the lease and a few seconds, the new active re-adopts its containers, and no job runs twice;
the paused one, woken, steps down and writes nothing.

Each has its own state_dir, name and port; they share the store, the results_dir (one
machine here, where a deployment shares it over NFS) and one engine: the new active finds
the containers the old one started and adopts them by their labels (their reports read
where the engine says their output folder is).
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
import requests

from tests.helpers import (
    NO_ANSWER,
    PASSING,
    SLOW,
    dispatcher_role,
    http_get,
    never_two_active,
    start_two_dispatchers,
    the_active,
)

pytestmark = pytest.mark.docker

LEASE = 3.0  # seconds: the tests' own, so that a take-over is quick (the default is 10)


def test_exactly_one_is_active_and_a_standby_refuses_changes_naming_it(orch, postgres) -> None:
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(orch, postgres.database(), LEASE)  # both at once
    seen = never_two_active(started, 2 * LEASE)
    active = orch.wait_for(lambda: the_active(started), timeout=30)
    assert [s for s in seen if s] and all(s == {active[0]} for s in seen if s)  # one, the same one throughout
    standby = next(d for d in started if d is not active)
    role = dispatcher_role(standby[1])
    assert role["role"] == "standby" and role["active"] == active[0] and role["lease_age_s"] < LEASE
    refused = requests.post(f"http://127.0.0.1:{standby[1]}/api/poll", headers={"X-Orchestrator": "1"}, timeout=10)
    assert refused.status_code == 503 and refused.headers["Location"] == f"http://127.0.0.1:{active[1]}"
    assert f"the active one is {active[0]}" in refused.json()["detail"]
    # the command line, given the standby, sends the change where the 503 says: the active takes it
    paused = orch.cli("pause", "demo", "--reason", "sent to a standby", "--server", f"http://127.0.0.1:{standby[1]}")
    assert paused.returncode == 0, paused.stderr
    pauses = http_get(f"http://127.0.0.1:{active[1]}/healthz").json()["paused"]
    assert pauses["demo"]["reason"] == "sent to a standby", pauses
    resumed = orch.cli("resume", "demo", "--server", f"http://127.0.0.1:{standby[1]}")
    assert resumed.returncode == 0, resumed.stderr
    jobs = orch.wait_for(
        lambda: [j for j in http_get(f"http://127.0.0.1:{standby[1]}/api/jobs").json() if j["status"] == "passed"]
    )
    assert jobs[0]["dispatcher"] == active[0]  # read from the standby: the same store
    metrics = http_get(f"http://127.0.0.1:{standby[1]}/metrics").text
    for _, _, proc in started:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert 'orchestrator_dispatcher_active{dispatcher="beta"}' in metrics or 'dispatcher="alpha"' in metrics


def _slow_commits(orch, port: int, count: int, seconds: float) -> list[str]:
    """``count`` commits whose test sleeps ``seconds``, once the repository's root was tested
    (seen first, only a branch's head would be: these are each new)."""
    orch.wait_for(
        lambda: [
            j for j in (http_get(f"http://127.0.0.1:{port}/api/jobs") or NO_ANSWER).json() if j["status"] == "passed"
        ]
    )
    return [
        orch.repo.commit(f"slow {n}", {f"tests/test_slow_{n}.py": SLOW.format(seconds=seconds, n=n)})
        for n in range(count)
    ]


def _running(port: int) -> list[dict]:
    answer = http_get(f"http://127.0.0.1:{port}/api/jobs")
    return [j for j in answer.json() if j["status"] == "running" and j["container"]] if answer else []


def test_the_active_killed_is_replaced_within_the_lease_and_its_jobs_pass_once(orch, postgres) -> None:
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner={"parallelism": 2})
    active = orch.wait_for(lambda: the_active(started), timeout=30)
    standby = next(d for d in started if d is not active)
    shas = _slow_commits(orch, standby[1], 4, 6)
    orch.wait_for(lambda: len(_running(standby[1])) == 2, timeout=60)
    active[2].send_signal(signal.SIGKILL)
    active[2].wait(timeout=10)
    killed = time.monotonic()
    orch.wait_for(lambda: (dispatcher_role(standby[1]) or {}).get("role") == "active", timeout=LEASE + 10)
    took = time.monotonic() - killed
    assert took <= LEASE + 5, took
    results = _all_passed(orch, shas, timeout=90)
    assert all(r["attempts"] == 1 for r in results)  # adopted, not run again
    assert {r["dispatcher"] for r in results} <= {active[0], standby[0]}
    # the killed one's machine is gone with its disk: what it left in its state_dir is no one's
    shutil.rmtree(orch.dir / ("state" if active[0] == "alpha" else "beta-state") / "work", ignore_errors=True)
    standby[2].send_signal(signal.SIGTERM)
    assert standby[2].wait(timeout=30) == 0


def test_the_active_paused_past_its_lease_steps_down_when_it_wakes_and_writes_nothing(orch, postgres) -> None:
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner={"parallelism": 2})
    active = orch.wait_for(lambda: the_active(started), timeout=30)
    standby = next(d for d in started if d is not active)
    shas = _slow_commits(orch, standby[1], 2, 5)
    orch.wait_for(lambda: len(_running(standby[1])) == 2, timeout=60)
    active[2].send_signal(signal.SIGSTOP)
    try:
        orch.wait_for(lambda: (dispatcher_role(standby[1]) or {}).get("role") == "active", timeout=LEASE + 10)
    finally:
        active[2].send_signal(signal.SIGCONT)
    orch.wait_for(lambda: (dispatcher_role(active[1]) or {}).get("role") == "standby", timeout=LEASE + 10)
    done = _all_passed(orch, shas, timeout=90)
    assert all(r["attempts"] == 1 for r in done)  # no job ran twice
    assert the_active(started) == standby
    paused_state = orch.dir / ("state" if active[0] == "alpha" else "beta-state") / "work"
    orch.wait_for(lambda: not any(paused_state.iterdir()), timeout=LEASE + 10)  # its leftovers, once their jobs ended
    for _, _, proc in started:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    jobs = json.loads(orch.cli("status", "--json").stdout)
    assert all(j["status"] == "passed" and j["attempts"] == 1 for j in jobs)


def test_postgresql_restarted_under_load_loses_nothing_and_the_active_keeps_its_place(orch, postgres) -> None:
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner={"parallelism": 2})
    active = orch.wait_for(lambda: the_active(started), timeout=30)
    shas = _slow_commits(orch, active[1], 2, 10)
    containers = orch.wait_for(
        lambda: {j["container"] for j in _running(active[1])} if len(_running(active[1])) == 2 else None, timeout=60
    )
    seen_away = []

    def watch() -> None:  # what the active's /healthz says while the database is away
        answer = http_get(f"http://127.0.0.1:{active[1]}/healthz")
        if answer is None:  # 2xx only: a degraded health is still an answer
            answer = requests.get(f"http://127.0.0.1:{active[1]}/healthz", timeout=30)
        seen_away.append(answer.json())

    import threading

    restart = threading.Thread(target=postgres.restart, args=(2 * LEASE,))
    restart.start()
    time.sleep(LEASE)
    watch()
    restart.join(60)
    later = orch.repo.commit("after the restart", PASSING)
    results = _all_passed(orch, [*shas, later], timeout=120)
    assert {r["container"] for r in results[:2]} == containers  # the same containers, kept through it
    assert all(r["attempts"] == 1 for r in results)  # nothing lost, nothing run twice
    assert seen_away[0]["status"] == "degraded" and seen_away[0]["store"].startswith("unreachable")
    assert the_active(started) == active  # the standby did not take over while the database was away
    for _, _, proc in started:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _all_passed(orch, shas: list[str], timeout: float) -> list[dict]:
    """The result of each commit, once every one has passed."""
    return orch.wait_for(
        lambda: (
            [orch.result(s) for s in shas]
            if orch.has_result(*shas) and all(orch.result(s)["status"] == "passed" for s in shas)
            else None
        ),
        timeout=timeout,
    )
