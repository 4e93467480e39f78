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
import signal

import pytest
import requests

from tests.helpers import (
    NO_ANSWER,
    PASSING,
    SLOW,
    all_passed,
    becomes_active,
    dispatcher_role,
    forget_state,
    http_get,
    never_two_active,
    pause_past_the_lease,
    running_jobs,
    start_two_dispatchers,
    stop_dispatchers,
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
    stop_dispatchers(started)
    # the standby's /metrics speaks of itself, and says it is not the active one
    assert f'orchestrator_dispatcher_active{{dispatcher="{standby[0]}"}} 0.0' in metrics, metrics


def _two_with_jobs_running(orch, postgres, count: int, seconds: float):
    """Two dispatchers (parallelism 2 each), the repository's root tested, then ``count``
    commits whose test sleeps ``seconds``, two of them running: (started, active, standby,
    the commits)."""
    orch.repo.commit("root", PASSING)
    started = start_two_dispatchers(orch, postgres.database(), LEASE, runner={"parallelism": 2})
    active = orch.wait_for(lambda: the_active(started), timeout=30)
    standby = next(d for d in started if d is not active)
    orch.wait_for(  # seen first, only a branch's head would be tested: the slow commits are each new
        lambda: [
            j
            for j in (http_get(f"http://127.0.0.1:{standby[1]}/api/jobs") or NO_ANSWER).json()
            if j["status"] == "passed"
        ]
    )
    shas = [
        orch.repo.commit(f"slow {n}", {f"tests/test_slow_{n}.py": SLOW.format(seconds=seconds, n=n)})
        for n in range(count)
    ]
    orch.wait_for(lambda: len(running_jobs(standby[1])) == 2, timeout=60)
    return started, active, standby, shas


def test_the_active_killed_is_replaced_within_the_lease_and_its_jobs_pass_once(orch, postgres) -> None:
    started, active, standby, shas = _two_with_jobs_running(orch, postgres, 4, 6)
    active[2].send_signal(signal.SIGKILL)
    active[2].wait(timeout=10)
    took = becomes_active(orch, standby, LEASE + 10)
    assert took <= LEASE + 5, took
    results = all_passed(orch, shas, timeout=90)
    assert all(r["attempts"] == 1 for r in results)  # adopted, not run again
    assert {r["dispatcher"] for r in results} <= {active[0], standby[0]}
    forget_state(orch, active[0])
    stop_dispatchers([standby])


def test_the_active_paused_past_its_lease_steps_down_when_it_wakes_and_writes_nothing(orch, postgres) -> None:
    started, active, standby, shas = _two_with_jobs_running(orch, postgres, 2, 5)
    pause_past_the_lease(orch, active, standby, LEASE)
    done = all_passed(orch, shas, timeout=90)
    assert all(r["attempts"] == 1 for r in done)  # no job ran twice
    assert the_active(started) == standby
    paused_state = orch.dir / ("state" if active[0] == "alpha" else "beta-state") / "work"
    orch.wait_for(lambda: not any(paused_state.iterdir()), timeout=LEASE + 10)  # its leftovers, once their jobs ended
    stop_dispatchers(started)
    jobs = json.loads(orch.cli("status", "--json").stdout)
    assert all(j["status"] == "passed" and j["attempts"] == 1 for j in jobs)
