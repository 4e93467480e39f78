"""The dispatcher killed (SIGKILL) or stopped at each step of a job's life: on restart every
commit ends with exactly one final result, running containers are re-adopted, nothing is
half-written and nothing is left behind."""

import json
import signal
import time

import pytest

from orchestrator.faults import CRASH_AT
from tests.helpers import PASSING

pytestmark = pytest.mark.docker

SLOW = "import time\ndef test_slow():\n    time.sleep({seconds})\n"


def _three_commits(orch, seconds: float = 0.5, parallelism: int = 2) -> list[str]:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": parallelism}, retries=2)
    assert orch.cli("run", "--once").returncode == 0  # first sight: the root only
    return [orch.repo.commit(f"c{i}", {"tests/test_slow.py": SLOW.format(seconds=seconds + i / 10)}) for i in range(3)]


def _one_final_result_each(orch, shas: list[str]) -> list[dict]:
    results = [orch.result(sha) for sha in shas]
    assert [r["status"] for r in results] == ["passed"] * len(shas)
    for sha in shas:
        directory = orch.path(sha)
        assert not [p.name for p in directory.iterdir() if p.name.startswith(".")], "half-written file"
        json.loads((directory / "result.json").read_text())
    jobs = json.loads(orch.cli("status", "--json", "--limit", "100").stdout)
    assert sorted(j["commit"] for j in jobs if j["commit"] in shas) == sorted(shas)  # one job per commit
    return results


@pytest.mark.parametrize(
    "point, attempts",
    [
        ("job-claimed", 2),  # no container yet: re-queued as a new attempt
        ("container-created", 2),  # created, never started: removed and re-queued
        ("container-started", 1),  # running: re-adopted, not re-run
        ("result-written", 1),  # exited, files written: collected, not re-run
        ("job-finished", 1),  # final state committed: only the clean-up is left
    ],
)
def test_sigkill_at_each_step(orch, point: str, attempts: int) -> None:
    # one slot: the first commit's job is the one at ``point`` when the process dies (with two,
    # a loaded machine let the second reach it first, the first still before it)
    shas = _three_commits(orch, parallelism=1)
    crashed = orch.cli("run", "--once", env={CRASH_AT: point})
    assert crashed.returncode == -signal.SIGKILL
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    results = _one_final_result_each(orch, shas)
    assert results[0]["attempts"] == attempts
    if attempts == 2:  # the earlier attempt is kept, and says why it was repeated
        (earlier,) = results[0]["attempt_history"]
        assert earlier["attempt"] == 1 and earlier["outcome"] == "retried"
        assert "dispatcher stopped" in earlier["message"] or "is gone" in earlier["message"]
    else:
        assert results[0]["attempt_history"] == []
    assert orch.containers() == []


def test_sigkill_while_containers_run_readopts_them(orch) -> None:
    shas = _three_commits(orch, seconds=4)
    run = orch.start("run")

    def started() -> dict[str, str]:  # jobs whose tests run (a warm, prepared container is not one)
        jobs = json.loads(orch.cli("status", "--json").stdout or "[]")
        return {j["commit"]: j["container"] for j in jobs if j["status"] == "running" and j["container"]}

    seen = orch.wait_for(lambda: started() if len(started()) == 2 else None, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    assert {c.id for c in orch.containers()} >= set(seen.values())  # still running, unsupervised
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    assert "re-attached" in restarted.stderr
    results = _one_final_result_each(orch, shas)
    by_sha = dict(zip(shas, results, strict=True))
    for sha, container_id in seen.items():
        assert by_sha[sha]["container"] == container_id and by_sha[sha]["attempts"] == 1


def test_sigkill_with_a_full_warm_pool(orch) -> None:
    """Two running, two waiting warm: after kill -9, the running two are re-adopted and the
    warm two, whose tests never began, are removed and run anew as their first attempt."""
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 2}, retries=2)
    assert orch.cli("run", "--once").returncode == 0
    shas = [orch.repo.commit(f"c{i}", {"tests/test_slow.py": SLOW.format(seconds=4 + i / 10)}) for i in range(4)]
    run = orch.start("run")
    orch.wait_for(
        lambda: (
            len([c for c in orch.containers() if c.status == "running" and c.labels.get("orchestrator.warm") == "1"])
            == 2
        ),
        timeout=60,
    )
    running = {c.labels["orchestrator.job"] for c in orch.containers() if c.labels.get("orchestrator.warm") != "1"}
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    results = _one_final_result_each(orch, shas)
    assert [r["attempts"] for r in results] == [1, 1, 1, 1]
    assert {str(r["id"]) for r in results[:2]} == running and "re-attached" in restarted.stderr
    assert orch.containers() == []


def test_sigterm_leaves_containers_for_the_next_start(orch) -> None:
    shas = _three_commits(orch, seconds=3)
    run = orch.start("run")
    orch.wait_for(lambda: [c for c in orch.containers() if c.status == "running"], timeout=60)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 0
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    results = _one_final_result_each(orch, shas)
    assert all(r["attempts"] == 1 for r in results)


def _running_with_grace(orch, grace: float):
    """`orchestrator run` with ``stop_grace``, once a container runs."""
    path = orch.config_path
    path.write_text(path.read_text() + f"stop_grace: {grace}\n")
    run = orch.start("run")
    orch.wait_for(lambda: [c for c in orch.containers() if c.status == "running"], timeout=60)
    return run


def test_second_interrupt_exits_at_once_without_damage(orch) -> None:
    shas = _three_commits(orch, seconds=3)
    run = _running_with_grace(orch, 120)
    run.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals sent at once would merge into one
    assert run.poll() is None  # waiting for the running jobs (stop_grace)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=10) == 130
    assert orch.cli("run", "--once").returncode == 0
    _one_final_result_each(orch, shas)


def test_stop_grace_waits_for_running_jobs(orch) -> None:
    shas = _three_commits(orch, seconds=1)
    run = _running_with_grace(orch, 60)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 0
    assert any(orch.has_result(sha) for sha in shas)  # the running ones were waited for
    assert orch.containers() == []


def test_sigkill_during_a_flood_keeps_the_head_and_an_honest_count(orch) -> None:
    """The engine's copy of a flooding log is bounded by rotation: after a kill -9 and a
    re-attach, the saved log still begins where the output began, and says how much is
    missing as a lower bound, never more than really is."""
    flood = (
        "import sys, time\n"
        "def test_flood(capfd):\n"
        "    line = b'y' * (1024 * 1024 - 1) + b'\\n'\n"
        "    with capfd.disabled():\n"
        "        for _ in range(24):\n"
        "            sys.stdout.buffer.write(line)\n"
        "            sys.stdout.flush()\n"
        "            time.sleep(0.25)\n"
    )
    sha = orch.repo.commit("flood", {"tests/test_flood.py": flood, "tests/conftest.py": ""})
    orch.configure(runner={"max_log_bytes": 2_000_000, "timeout": 120})
    run = orch.start("run")
    spool = orch.config.state_dir / "work" / "1" / "output.log.part"
    orch.wait_for(lambda: spool.exists() and spool.stat().st_size >= 1_000_000, timeout=60)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0 and "re-attached" in restarted.stderr, restarted.stderr
    log = orch.log(sha)
    assert log.startswith(b"=") and b"test session starts" in log[:200]  # the head is the output's head
    assert log.rstrip().endswith(b"=") and b"1 passed" in log[-300:]  # and the tail its end
    marker = next(line for line in log.split(b"\n") if line.startswith(b"[orchestrator: log truncated"))
    assert b"at least" in marker, marker
    at_least = int(marker.split(b"at least ")[1].split(b" ")[0])
    really = 24 * 1024 * 1024 - (len(log) - len(marker))
    assert 0 < at_least <= really, (at_least, really)
    assert orch.result(sha)["log_truncated"] is True and orch.result(sha)["attempts"] == 1


def test_a_webhook_is_sent_after_a_kill_between_the_final_status_and_its_delivery(orch, webhooks) -> None:
    """The delivery is written with the final status: kill -9 right after that commit, and
    the next start sends it, once, with the job's idempotency key."""
    sha = orch.repo.commit("root", PASSING)
    orch.configure(notify={"webhooks": [webhooks.url], "on": "all"})
    crashed = orch.cli("run", "--once", env={CRASH_AT: "job-finished"})
    assert crashed.returncode == -signal.SIGKILL
    assert webhooks.received == []  # killed before anything was sent
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    job_id = orch.result(sha)["id"]
    assert webhooks.keys == [f"job-{job_id}-attempt-1-job.finished"]
    assert webhooks.received[0]["job"]["status"] == "passed"
    again = orch.cli("run", "--once")  # a third start sends nothing more
    assert again.returncode == 0 and len(webhooks.received) == 1
    assert orch.containers() == []


def test_sigkill_while_a_split_suite_runs_runs_it_again_whole(orch) -> None:
    """A split attempt is not re-attached: after kill -9 its shard containers are removed and
    the commit runs again, split, as attempt 2, with every test once."""
    sha = orch.repo.commit(
        "two files", {"tests/test_one.py": SLOW.format(seconds=4), "tests/test_two.py": SLOW.format(seconds=4)}
    )
    orch.configure(runner={"parallelism": 2}, repository={"shards": 2}, retries=2)
    run = orch.start("run")
    first = orch.wait_for(
        lambda: (
            {c.id for c in orch.containers() if c.status == "running" and c.labels.get("orchestrator.shard")} or None
        ),
        timeout=60,
    )
    orch.wait_for(lambda: len([c for c in orch.containers() if c.status == "running"]) == 2, timeout=30)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    restarted = orch.cli("run", "--once")
    assert restarted.returncode == 0, restarted.stderr
    result = orch.result(sha)
    assert result["status"] == "passed" and result["attempts"] == 2 and result["tests"]["passed"] == 2, result
    assert "shards ran: a split suite runs again whole" in result["attempt_history"][0]["message"]
    assert len(result["shards"]) == 2 and not {s["container"] for s in result["shards"]} & first
    assert orch.containers() == []
