"""Each verdict from a real container, and what the container is allowed to do."""

import time

import docker
import pytest

from tests.helpers import FAILING, PASSING, http_get

pytestmark = pytest.mark.docker


def test_every_verdict_from_real_containers(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"timeout": 4})
    assert orch.cli("run", "--once").returncode == 0
    shas = {
        "fail": orch.repo.commit("fail", FAILING),
        "collect": orch.repo.commit("collect", {"tests/test_broken.py": "import no_such_module\n"}),
        "fixed": orch.repo.commit("fixed", {"tests/test_broken.py": None, **PASSING}),
        "none": orch.repo.commit("no tests", {"tests/test_ok.py": "def helper():\n    pass\n"}),
        "nodir": orch.repo.commit("no tests dir", {"tests": None}),
        "hang": orch.repo.commit(
            "hang", {"tests/test_hang.py": "import time\ndef test_hang():\n    time.sleep(600)\n"}
        ),
    }
    started = time.monotonic()
    proc = orch.cli("run", "--once")
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60
    results = {name: orch.result(sha) for name, sha in shas.items()}
    assert results["fail"]["status"] == "failed" and results["fail"]["exit_code"] == 1
    assert results["fail"]["tests"] == {
        "total": 2,
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "skipped": 0,
        "quarantined": 0,
    }
    assert b"arithmetic" in orch.log(shas["fail"])
    assert results["collect"]["status"] == "error" and "collection error" in results["collect"]["message"]
    assert results["fixed"]["status"] == "passed" and results["fixed"]["tests"]["passed"] == 1
    assert results["none"]["status"] == "error" and "no tests collected" in results["none"]["message"]
    assert results["nodir"]["status"] == "error" and "tests directory missing" in results["nodir"]["message"]
    hang = results["hang"]
    assert hang["status"] == "timed_out" and "timeout" in hang["message"]
    assert 4 <= hang["duration_s"] < 4 + 10
    for name, doc in results.items():
        assert doc["commit"] == shas[name] and doc["attempts"] == 1 and doc["subject"]
        assert doc["branches"] == ["main"] and len(doc["container"]) == 64
    # the summary table names every commit of this run
    for sha in shas.values():
        assert sha[:10] in proc.stdout


def test_parallelism_two_never_three(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 2})
    assert orch.cli("run", "--once").returncode == 0
    shas = [
        orch.repo.commit(
            f"slow {i}", {"tests/test_slow.py": f"import time\ndef test_slow():\n    time.sleep(1.5)  # {i}\n"}
        )
        for i in range(5)
    ]
    assert orch.cli("run", "--once").returncode == 0
    spans = [(orch.result(s)["started_at"], orch.result(s)["finished_at"]) for s in shas]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


ISOLATION = """
import os, pathlib, pytest

def test_not_root():
    assert os.getuid() != 0 and os.geteuid() != 0

def test_no_network_but_loopback():
    assert sorted(os.listdir("/sys/class/net")) == ["lo"]

def test_no_capabilities():
    status = pathlib.Path("/proc/self/status").read_text()
    assert "CapEff:\\t0000000000000000" in status
    assert "NoNewPrivs:\\t1" in status

def test_root_file_system_read_only_outside_workspace():
    for target in ("/etc/evil", "/usr/evil", "/opt/evil"):
        with pytest.raises(OSError):
            open(target, "w")
    pathlib.Path("/tmp/ok").write_text("tmp is writable")
    pathlib.Path("/workspace/ok").write_text("workspace is writable")

def test_scratch_space_runs_what_a_test_writes_there(tmp_path):
    import subprocess
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\\necho hello from tmp\\n")
    script.chmod(0o755)
    assert subprocess.run([str(script)], capture_output=True, text=True).stdout == "hello from tmp\\n"
    assert os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize == 64 * 1024 * 1024
"""


def test_container_is_confined(orch) -> None:
    sha = orch.repo.commit("isolation", {"tests/test_iso.py": ISOLATION})
    orch.configure(runner={"tmp_size": "64m"})
    proc = orch.cli("run", "--once")
    result = orch.result(sha)
    assert proc.returncode == 0, orch.log(sha).decode()
    assert result["status"] == "passed" and result["tests"]["passed"] == 5


def test_labels_limits_and_removal(orch) -> None:
    sha = orch.repo.commit("slow", {"tests/test_slow.py": "import time\ndef test_slow():\n    time.sleep(4)\n"})
    orch.configure(runner={"memory": "300m", "pids": 100, "cpus": 0.5})
    run = orch.start("run", "--once")

    def inspected():
        # a container can be listed a moment before the engine lets it be inspected
        for seen in orch.containers():
            try:
                return orch.engine.containers.get(seen.id)
            except docker.errors.NotFound:
                return None
        return None

    container = orch.wait_for(inspected, timeout=60)
    labels = container.labels
    assert labels["orchestrator.instance"] == orch.instance()
    assert labels["orchestrator.repository"] == "demo" and labels["orchestrator.commit"] == sha
    assert labels["orchestrator.job"] == "1"
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"][0]
    assert host["Memory"] == 300 * 1024 * 1024 and host["PidsLimit"] == 100 and host["NanoCpus"] == 5 * 10**8
    assert host["LogConfig"]["Config"]["max-size"]
    assert container.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
    assert run.wait(timeout=60) == 0
    assert orch.containers() == []
    assert orch.result(sha)["container"] == container.id


def test_log_is_capped_and_says_so(orch) -> None:
    flood = (
        "import sys\ndef test_flood():\n    for i in range(200000):\n"
        "        sys.stdout.write(f'line {i:06d} ' + 'x' * 40 + '\\n')\n    assert False\n"
    )
    sha = orch.repo.commit("flood", {"tests/test_flood.py": flood})
    orch.configure(runner={"max_log_bytes": 100_000})
    orch.cli("run", "--once")
    result = orch.result(sha)
    log = orch.log(sha)
    assert result["log_truncated"] is True and result["status"] == "failed"
    assert len(log) < 100_000 + 200 and b"log truncated" in log
    assert log.rstrip().endswith(b"=") or b"failed" in log[-2000:]  # the tail keeps pytest's summary


def test_memory_hog_is_an_error_in_words(orch) -> None:
    hog = "def test_hog():\n    blocks = []\n    while True:\n        blocks.append(bytearray(16 * 1024 * 1024))\n"
    sha = orch.repo.commit("hog", {"tests/test_hog.py": hog})
    orch.configure(runner={"memory": "96m"})
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(sha)
    assert result["status"] == "error" and "out of memory" in result["message"]


def test_missing_image_is_an_error_not_a_retry_loop(orch) -> None:
    sha = orch.repo.commit("root", PASSING)
    orch.configure(runner={"image": "no-such-runner:never"})
    proc = orch.cli("run", "--once")
    assert proc.returncode == 1
    result = orch.result(sha)
    assert result["status"] == "error" and "image build" in result["message"] and result["attempts"] == 1


def test_parallel_jobs_never_share_a_loopback(orch) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 2})
    assert orch.cli("run", "--once").returncode == 0
    server = (
        "import socket, time\n"
        "def test_listen():\n"
        "    s = socket.socket()\n"
        "    s.bind(('127.0.0.1', 45678))  # the same port in every job\n"
        "    s.listen()\n"
        "    time.sleep(2.5)\n"
        "    s.close()\n"
    )
    shas = [orch.repo.commit(f"listen {i}", {"tests/test_listen.py": server + f"# {i}\n"}) for i in range(4)]
    assert orch.cli("run", "--once").returncode == 0
    results = [orch.result(s) for s in shas]
    assert [r["status"] for r in results] == ["passed"] * 4
    spans = sorted((r["started_at"], r["finished_at"]) for r in results)
    assert spans[1][0] < spans[0][1]  # two of them did listen at the same time


FLAKY_ONCE = """import os

def test_steady():
    pass

def test_flaky_once():
    marker = "/tmp/ran-before"   # the container's own /tmp: the re-run finds what the first run left
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise AssertionError("fails the first time only")
"""
BROKEN = "def test_broken():\n    assert False\n"


def test_failed_tests_are_rerun_and_one_that_then_passes_is_flaky(orch) -> None:
    """rerun_failures: only the failed tests run again, in the same container; a job whose
    failures all passed on re-run passes, naming them flaky; the report keeps every run."""
    sha = orch.repo.commit("flaky", {"tests/test_f.py": FLAKY_ONCE})
    orch.configure(repository={"rerun_failures": 2})
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert (result["status"], result["flaky"], result["tests"]["passed"], result["tests"]["failed"]) == (
        "passed",
        ["tests.test_f::test_flaky_once"],
        2,
        0,
    ), orch.log(sha).decode()[-2000:]
    report = orch.path(sha, "junit.xml").read_text()
    assert report.count("orchestrator-rerun-1") == 1 and "fails the first time only" in report
    assert b"re-running the 1 failed test(s), re-run 1 of 2" in orch.log(sha)
    broken = orch.repo.commit("broken", {"tests/test_f.py": BROKEN})
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(broken)
    assert (result["status"], result["flaky"]) == ("failed", [])
    assert orch.path(broken, "junit.xml").read_text().count("orchestrator-rerun-") == 2


LEAVES_ARTIFACTS = """import os

def test_writes_artifacts():
    os.makedirs(".ci-artifacts/screens", exist_ok=True)
    with open(".ci-artifacts/screens/home.png", "wb") as fh:
        fh.write(b"\\x89PNG fake")
    os.symlink("/etc/passwd", ".ci-artifacts/passwd")       # never followed
    with open("coverage.xml", "w") as fh:
        fh.write('<?xml version="1.0"?><coverage line-rate="0.75"></coverage>')
    os.makedirs("dist", exist_ok=True)
    with open("dist/report.txt", "w") as fh:
        fh.write("made by the suite")
"""


def test_artifacts_and_coverage_are_collected_from_a_real_container(orch) -> None:
    sha = orch.repo.commit("artifacts", {"tests/test_a.py": LEAVES_ARTIFACTS})
    orch.configure(repository={"artifacts": ["dist/*.txt"]})
    assert orch.cli("run", "--once").returncode == 0, orch.log(sha).decode()[-2000:]
    result = orch.result(sha)
    assert sorted(result["artifacts"]["files"]) == ["dist/report.txt", "screens/home.png"]
    assert result["artifacts"]["refused"] == [".ci-artifacts/passwd: not a regular file"]
    assert result["coverage"] == 75.0
    folder = orch.path(sha, "artifacts")
    assert (folder / "screens" / "home.png").read_bytes() == b"\x89PNG fake"
    assert not (folder / "passwd").exists()
    port = orch.config.dispatcher.port
    dispatcher = orch.start("dispatcher")
    try:
        orch.wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        download = http_get(f"http://127.0.0.1:{port}/api/jobs/{result['id']}/artifacts/dist/report.txt")
        assert download.content == b"made by the suite" and "attachment" in download.headers["content-disposition"]
        assert http_get(f"http://127.0.0.1:{port}/api/jobs/{result['id']}/artifacts/passwd") is None
        badge = http_get(f"http://127.0.0.1:{port}/badge/demo/main/coverage.svg")
        assert b"75%" in badge.content and b"coverage" in badge.content
        assert "screens/home.png" in http_get(f"http://127.0.0.1:{port}/jobs/{result['id']}").text
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=30)
