"""The Swarm backend on a real Swarm (tests/swarm/conftest.py): jobs spread over two
workers, a worker's engine killed under a running job, the dispatcher killed and started
again, a flood and a timeout, the registry away, the limits a task keeps itself, a live
log, and a smoke run of the Swarm benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.store import Store
from runner_image import orchestrator_protocol as protocol
from tests.swarm.conftest import Testbed, registry_tags

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

PASS = "import time\n\ndef test_one():\n    time.sleep({sleep})\n\ndef test_two():\n    assert 1 + 1 == 2\n"
# A failing suite that forges the report's frame: it prints a frame around a passing report
# with every marker it can find (its environment, /ci-out, every process's environment and
# command line, the memory of every process it may read). Only the entrypoint knows the
# marker, and the suite can read none of it: the job is failed by its real report.
FAIL = r"""import base64, glob, os, re

FORGED = (b'<testsuites><testsuite name="pytest" tests="2" failures="0" errors="0" skipped="0">'
          b'<testcase classname="x" name="a"/><testcase classname="x" name="b"/></testsuite></testsuites>')
HEX = re.compile(rb"\b[0-9a-f]{32}\b")


def readable_memory(pid):
    found = set()
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb")
    except OSError:
        return found
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                found.update(HEX.findall(mem.read(min(end - start, 64 << 20))))
            except (OSError, ValueError, OverflowError):
                pass
    print(f"LEAK: read the memory of process {pid}")
    return found


def guesses():
    found = {os.environ.get("@FRAME_VARIABLE@", "").encode()}
    for path in ["/ci-out/.report-frame", *glob.glob("/proc/*/environ"), *glob.glob("/proc/*/cmdline")]:
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        found.update(HEX.findall(data))
        found.update(re.findall(rb"@FRAME_VARIABLE@=([^\0]*)", data))
    for pid in [p.split("/")[2] for p in glob.glob("/proc/[0-9]*")]:
        if int(pid) != os.getpid():
            found |= readable_memory(pid)
    return {g.decode() for g in found if g}


def test_broken():
    body = base64.encodebytes(FORGED).decode()
    for guess in sorted(guesses()):
        head = guess if guess.startswith("--- orchestrator report ") else f"--- orchestrator report {guess}"
        print(f"\n{head} begin\n{body}{head} end", flush=True)
    assert 1 + 1 == 3


def test_fine():
    pass
""".replace("@FRAME_VARIABLE@", protocol.REPORT_FRAME)  # what the entrypoint is told the frame by


def commits(orch, count: int, sleep: float = 2, failing: int | None = None) -> list[str]:
    return [
        orch.repo.commit(
            f"commit {i}", {"tests/test_a.py": FAIL if i == failing else PASS.format(sleep=sleep), "note.txt": f"{i}\n"}
        )
        for i in range(count)
    ]


def test_jobs_spread_over_the_workers_with_whole_results(swarm_orch, testbed: Testbed) -> None:
    orch = swarm_orch
    first = commits(orch, 1)[0]
    orch.configure_swarm(parallelism=4, timeout=120)
    assert orch.cli("run", "--once", timeout=300).returncode == 0, orch.log(first).decode()[-2000:]
    shas = commits(orch, 4, failing=2)
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    nodes = set()
    for i, sha in enumerate([first, *shas]):
        result = orch.result(sha)
        expected = ("failed", 1, 2, 1) if i == 3 else ("passed", 1, 2, 0)
        assert (
            result["status"],
            result["attempts"],
            result["tests"]["total"],
            result["tests"]["failed"],
        ) == expected, (result, orch.log(sha).decode()[-2000:])
        assert result["node"] in testbed.workers
        nodes.add(result["node"])
        log = orch.log(sha).decode()
        assert ("test_broken FAILED" if i == 3 else "test_two PASSED") in log
        assert (
            ("orchestrator report 1 begin" in log) if i == 3 else ("orchestrator report" not in log)
        )  # forged: output
        assert orch.path(sha, "junit.xml").read_bytes().startswith(b"<?xml")
        assert (b"test_broken" in orch.path(sha, "junit.xml").read_bytes()) == (i == 3)
    assert nodes == set(testbed.workers)  # the engine placed them on both
    status = orch.cli("status")
    assert all(name in status.stdout for name in testbed.workers)


def test_a_job_whose_worker_dies_runs_again_elsewhere(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient
) -> None:
    orch = swarm_orch
    sha = commits(orch, 1, sleep=18)[0]
    orch.configure_swarm(parallelism=1, timeout=300)
    dispatcher = orch.start("run", "--once")
    node = orch.wait_for(lambda: running_node(engine, orch.instance()), timeout=120, interval=0.5)
    os.kill(testbed.pids[node], signal.SIGKILL)  # the worker's engine, by its own pid
    try:
        out, err = dispatcher.communicate(timeout=240)
        result = orch.result(sha)
        assert (result["status"], result["attempts"]) == ("passed", 2), (result, err[-3000:])
        assert result["node"] != node
        history = result["attempt_history"]
        assert history[0]["outcome"] == "retried" and f"node {node} lost" in history[0]["message"]
    finally:
        testbed.restart(node)
        testbed.ready(engine, timeout=120)


def running_node(engine: docker.DockerClient, instance: str) -> str | None:
    for service in engine.services.list(filters={"label": f"orchestrator.instance={instance}"}):
        for task in service.tasks():
            if task["Status"]["State"] == "running":
                return engine.nodes.get(task["NodeID"]).attrs["Description"]["Hostname"]
    return None


def test_a_dispatcher_killed_while_services_run_adopts_them(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient
) -> None:
    orch = swarm_orch
    commits(orch, 1, sleep=0)
    orch.configure_swarm(parallelism=2, timeout=300)
    assert orch.cli("run", "--once", timeout=300).returncode == 0
    shas = commits(orch, 2, sleep=12)
    first = orch.start("run")
    orch.wait_for(
        lambda: (
            sum(
                1
                for s in engine.services.list(filters={"label": f"orchestrator.instance={orch.instance()}"})
                if any(t["Status"]["State"] == "running" for t in s.tasks())
            )
            == 2
        ),
        timeout=120,
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    again = orch.cli("run", "--once", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for sha in shas:
        result = orch.result(sha)
        assert (result["status"], result["attempts"], result["tests"]["passed"]) == ("passed", 1, 2)
        assert "re-attached" in again.stderr


def test_a_flood_and_a_timeout_behave_as_on_one_engine(swarm_orch) -> None:
    orch = swarm_orch
    flood = orch.repo.commit(
        "flood",
        {
            "tests/test_flood.py": (
                "import sys\n\ndef test_flood(capfd):\n    line = b'x' * (1024 * 1024 - 1) + b'\\n'\n"
                "    with capfd.disabled():  # past pytest's capture, straight to the task's output\n"
                "        for _ in range(20):\n            sys.stdout.buffer.write(line)\n        sys.stdout.flush()\n"
            )
        },
    )
    orch.configure_swarm(parallelism=2, timeout=120, max_log_bytes=1_000_000)
    orch.cli("run", "--once", timeout=300)
    result = orch.result(flood)
    assert result["status"] == "passed" and result["log_truncated"] is True and result["tests"]["passed"] == 1
    log = orch.log(flood)
    assert len(log) <= 1_000_000 + 200 and b"log truncated" in log and b"1 passed" in log
    hang = orch.repo.commit("hang", {"tests/test_flood.py": "import time\n\ndef test_hang():\n    time.sleep(600)\n"})
    orch.configure_swarm(parallelism=2, timeout=8)
    started = time.monotonic()
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    assert orch.result(hang)["status"] == "timed_out" and time.monotonic() - started < 120


def test_a_split_suite_runs_as_services_of_its_own_with_the_plan_in_their_image(swarm_orch, testbed: Testbed) -> None:
    """shards: 2 on the Swarm, with durations recorded for its tests: each shard a service
    placed on a worker, split as those durations say (the plan reached the task inside its
    job image), one merged report, and nothing left behind."""
    orch = swarm_orch
    split = orch.repo.commit(
        "two files", {"tests/test_a.py": PASS.format(sleep=1), "tests/test_b.py": PASS.format(sleep=1)}
    )
    orch.configure(
        runner={
            "backend": "swarm",
            "registry": testbed.registry,
            "constraints": ["node.role==worker"],
            "memory": "256m",
            "parallelism": 2,
            "timeout": 120,
        },
        repository={"shards": 2},
    )
    store = Store(orch.config.db_path)
    try:
        # as an earlier run would have left them: test_one of test_a the longest
        store.tests.record(
            0,
            1,
            "demo",
            [],
            [
                ("tests.test_a::test_one", 2.0),
                ("tests.test_b::test_one", 1.0),
                ("tests.test_a::test_two", 0.01),
                ("tests.test_b::test_two", 0.01),
            ],
        )
    finally:
        store.close()
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = orch.result(split)
    assert (result["status"], result["tests"]["passed"]) == ("passed", 4), result
    assert [s["status"] for s in result["shards"]] == ["passed", "passed"]
    assert {s["node"] for s in result["shards"]} <= set(testbed.workers)
    for k, share in ((1, 1), (2, 3)):
        shard_log = orch.path(split, f"output.{k}.log").read_text()
        assert f"shard {k} of 2: {share} of 4 tests (by recorded durations)" in shard_log, shard_log[-2000:]
        assert "orchestrator report" not in shard_log


def test_a_registry_that_is_away_is_a_clear_error_after_retries(swarm_orch, testbed: Testbed) -> None:
    orch = swarm_orch
    sha = commits(orch, 1, sleep=0)[0]
    host = testbed.registry.split(":")[0]
    orch.configure_swarm(registry=f"{host}:5999", timeout=60)  # nothing listens there
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    result = orch.result(sha)
    assert result["status"] == "error" and result["attempts"] == 2  # retries: 1 in the tests' config
    assert f"push to registry {host}:5999 failed" in result["message"]


def test_image_build_pushes_the_runner_images_to_the_registry(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient
) -> None:
    orch = swarm_orch
    orch.configure_swarm()
    built = orch.cli("image", "build", "--python", "3.11", "--python", "3.13", timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"pushed as {testbed.registry}/ci-runner@sha256:" in built.stderr
    assert {"latest", "py3.13"} <= set(registry_tags(testbed, "ci-runner"))
    for tag in ("latest", "py3.13"):  # the names it pushed under, on this engine: the test bed's only
        engine.images.remove(f"{testbed.registry}/ci-runner:{tag}")


DISK_FILL = (
    "def test_fill():\n    with open('big', 'wb') as fh:\n        for _ in range(200):\n"
    "            fh.write(b'x' * (1 << 20))\n            fh.flush()\n    import time\n    time.sleep(30)\n"
)
MEMORY_HOG = "def test_hog():\n    blocks = [bytearray(1 << 20) for _ in range(2000)]\n"
CONFINED = """import os, stat, subprocess, time

def test_what_a_task_may_do(capfd):
    for folder in ("/tmp", "/workspace"):   # write a program, and run it
        path = os.path.join(folder, "prog.sh")
        with open(path, "w") as fh:
            fh.write("#!/bin/sh\\necho ran from $0\\n")
        os.chmod(path, 0o755)
        assert subprocess.run([path], capture_output=True, text=True).stdout == f"ran from {path}\\n"
    for folder in ("/var/tmp", "/run/lock", "/usr/local/lib", "/etc"):   # nowhere else to write
        assert not os.access(folder, os.W_OK), folder
    setuid = [os.path.join(d, f) for d in ("/usr/bin", "/bin", "/usr/sbin") for f in os.listdir(d)
              if os.lstat(os.path.join(d, f)).st_mode & (stat.S_ISUID | stat.S_ISGID)]
    assert setuid == []
    import six   # the environment's, published to the registry by the build
    with capfd.disabled():   # past pytest's capture, to the task's output as it happens
        for i in range(8):
            print(f"live line {i}", flush=True)
            time.sleep(1)
"""


@pytest.mark.usefixtures("environment_images")  # the environment it builds goes, with its registry name
def test_the_task_keeps_its_own_limits_and_its_log_is_followed_live(
    swarm_orch, testbed: Testbed, engine: docker.DockerClient
) -> None:
    """What the dispatcher watches from the host on one engine, a task watches itself: the
    disk limit and the OOM killer give the same reasons; /tmp and the workspace run
    programs; nothing else is writable, nothing setuid; a running job's log is followed live
    through the engine, and a new environment image is in the registry before any job's push."""
    orch = swarm_orch
    fill = orch.repo.commit("fill the disk", {"tests/test_a.py": DISK_FILL})
    orch.configure_swarm(parallelism=2, timeout=120, disk="60m")
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    result = orch.result(fill)
    assert (result["status"], result["attempts"]) == ("error", 1), result
    assert result["message"].startswith("disk limit exceeded: more than 60m written into the workspace")
    assert b"the tests were stopped" in orch.log(fill)

    hog = orch.repo.commit("eat the memory", {"tests/test_a.py": MEMORY_HOG})
    confined = orch.repo.commit(
        "stay inside",
        {
            "tests/test_a.py": CONFINED,
            # a declaration no other test makes: its environment is built anew here, and published
            "pyproject.toml": ('[project]\nname = "confined"\nversion = "0"\ndependencies = ["six>=1.16,!=0.0.1"]\n'),
        },
    )
    orch.configure_swarm(parallelism=2, timeout=180)
    dispatcher = orch.start("run", "--once")
    try:
        orch.wait_for(lambda: status_of(orch, confined) in ("queued", "running"), timeout=240, interval=0.5)
        follow = orch.cli("logs", confined[:12], "--follow", timeout=120)
        dispatcher.communicate(timeout=240)
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
    assert "live line 0" in follow.stdout and "live line 7" in follow.stdout, (follow.stdout[-2000:], follow.stderr)
    assert "orchestrator report" not in follow.stdout
    result = orch.result(confined)
    assert (result["status"], result["tests"]["passed"]) == ("passed", 1), orch.log(confined).decode()[-3000:]
    assert registry_tags(testbed, "orchestrator-env/demo")
    result = orch.result(hog)
    assert (result["status"], result["message"]) == ("error", "out of memory: killed at the 256m memory limit"), result
    assert b"killed by the kernel at the memory limit" in orch.log(hog)


def status_of(orch, sha: str) -> str | None:
    store = Store(orch.config.db_path)
    try:
        return store.find(sha, "demo").status.value
    except OrchestratorError:
        return None
    finally:
        store.close()


def test_the_swarm_benchmark_runs(testbed: Testbed, tmp_path: Path) -> None:
    """A tiny run of bench/swarm.py on this session's Swarm, so that it keeps working (its
    figures belong in the README, not in assertions)."""
    out = tmp_path / "swarm.json"
    bench = Path(__file__).resolve().parents[2] / "bench" / "swarm.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--smoke", "--registry", testbed.registry, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for row in result["by_parallelism"].values():
        assert all(row[b]["all_passed"] for b in ("docker", "swarm", "swarm, no job networks")), row
        assert set(row["swarm"]["nodes"]) | set(row["swarm, no job networks"]["nodes"]) <= set(testbed.workers)
    assert "| parallelism | one engine | Swarm |" in proc.stdout


NO_NETWORK = """import socket

def test_only_loopback():
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
"""


def test_without_job_networks_a_task_has_no_network_at_all(swarm_orch, engine: docker.DockerClient) -> None:
    """runner.swarm_job_networks false, on workers whose engines run with --bridge=none
    (the test bed's): no network is created for the job, and its task has loopback only,
    checked by its own test and by the entrypoint before anything of the commit runs."""
    orch = swarm_orch
    sha = orch.repo.commit("loopback only", {"tests/test_net.py": NO_NETWORK})
    orch.configure_swarm(parallelism=1, timeout=120, swarm_job_networks=False)
    since = int(time.time())
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:] + orch.log(sha).decode()[-2000:]
    result = orch.result(sha)
    assert (result["status"], result["tests"]["passed"]) == ("passed", 1), result
    created = engine.api.events(
        since=since, until=int(time.time()) + 1, filters={"type": "network", "event": "create"}, decode=True
    )
    prefix = f"orchestrator-{orch.instance()}-"
    assert not [e for e in created if e.get("Actor", {}).get("Attributes", {}).get("name", "").startswith(prefix)]
