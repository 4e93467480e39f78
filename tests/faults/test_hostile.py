"""Hostile or broken test suites end in a recorded result with a reason, within bounds,
while other jobs go on."""

import json
import os
import time

import pytest

from tests.helpers import PASSING

pytestmark = pytest.mark.docker


def _run(orch, files: dict, **runner) -> tuple[dict, str]:
    """One root commit with ``files`` and a well-behaved sibling branch, tested together."""
    sha = orch.repo.commit("hostile", files)
    orch.repo.checkout("good", create=True)
    good = orch.repo.commit("good", {**{k: None for k in files if k.startswith("tests/")}, **PASSING})
    orch.configure(runner={"parallelism": 2, **runner})
    proc = orch.cli("run", "--once")
    assert orch.result(good)["status"] == "passed"  # the other job went on
    return orch.result(sha), proc.stderr


def test_hang_ignoring_sigterm_is_killed_at_the_timeout(orch) -> None:
    hang = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef test_hang():\n    time.sleep(600)\n"
    started = time.monotonic()
    result, _ = _run(orch, {"tests/test_hang.py": hang}, timeout=3)
    assert result["status"] == "timed_out" and "3 s timeout" in result["message"]
    assert result["duration_s"] < 3 + 5 and time.monotonic() - started < 40


def test_fork_bomb_is_held_by_the_pids_limit(orch) -> None:
    bomb = (
        "import os\ndef test_bomb():\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n"
    )
    result, _ = _run(orch, {"tests/test_bomb.py": bomb}, timeout=8, pids=64)
    assert result["status"] in ("timed_out", "error") and result["message"]
    assert result["duration_s"] < 8 + 10


def test_network_attempts_fail(orch) -> None:
    probe = (
        "import errno, socket, pytest\n"
        "def test_no_dns():\n    with pytest.raises(OSError):\n        socket.getaddrinfo('example.com', 80)\n"
        "def test_no_route():\n    with pytest.raises(OSError) as e:\n"
        "        socket.create_connection(('192.0.2.1', 80), timeout=2)  # TEST-NET-1: never routed\n"
        "    assert e.value.errno == errno.ENETUNREACH\n"
    )
    result, _ = _run(orch, {"tests/test_net.py": probe})
    assert result["status"] == "passed" and result["tests"]["passed"] == 2


def test_junit_replaced_by_a_link_to_a_host_file_is_not_read(orch, tmp_path) -> None:
    secret = tmp_path / "host-secret.xml"
    secret.write_text('<testsuite tests="99" failures="0" errors="0" skipped="0">TOP SECRET</testsuite>')
    swap = (
        "import os\n"
        "def pytest_unconfigure(config):\n"
        "    os.replace('/ci-out/junit.xml', '/ci-out/real.xml')\n"
        f"    os.symlink({str(secret)!r}, '/ci-out/junit.xml')\n"
    )
    result, _ = _run(orch, {"tests/conftest.py": swap, **PASSING})
    assert result["status"] == "passed" and result["tests"]["total"] == 0  # counts not taken from the link
    directory = orch.path(result["commit"])
    assert not (directory / "junit.xml").exists()
    assert all(b"TOP SECRET" not in p.read_bytes() for p in directory.iterdir() if p.is_file())


def test_symlinks_out_of_the_checkout_do_not_reach_the_host(orch, tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.chmod(victim, 0o600)
    owner = victim.stat().st_uid
    orch.repo.path.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, orch.repo.path / "escape")
    kept = tmp_path / "kept"  # a host folder a link in the checkout points to (not /etc: were
    kept.mkdir()  # the clean-up to follow it, the test would break the machine it runs on)
    (kept / "file").write_text("kept")
    os.symlink(kept, orch.repo.path / "dir-link")
    probe = (
        "import os, pytest\n"
        "def test_link_target_is_not_the_host_file():\n"
        "    with pytest.raises(OSError):\n        open('escape').read()\n"
    )
    result, _ = _run(orch, {"tests/test_links.py": probe})
    assert result["status"] == "passed"
    assert victim.read_text() == "untouched" and victim.stat().st_uid == owner
    assert oct(victim.stat().st_mode & 0o777) == "0o600"
    assert (kept / "file").read_text() == "kept"  # the clean-up removed the link, not what it points to


def test_gigabyte_log_flood_is_capped_with_flat_memory(orch) -> None:
    flood = (
        "import sys\n"
        "def test_flood(capfd):\n"
        "    line = b'x' * (1024 * 1024 - 1) + b'\\n'\n"
        "    with capfd.disabled():  # past pytest's capture, straight to the container's stdout\n"
        "        for _ in range(1024):\n"
        "            sys.stdout.buffer.write(line)\n"
        "        sys.stdout.flush()\n"
    )
    sha = orch.repo.commit("flood", {"tests/test_flood.py": flood, "tests/conftest.py": ""})
    orch.configure(runner={"max_log_bytes": 2_000_000, "timeout": 120})
    run = orch.start("run", "--once")
    peak = 0
    while run.poll() is None:
        try:
            with open(f"/proc/{run.pid}/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
            peak = max(peak, rss)
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.05)
    result = orch.result(sha)
    log = orch.log(sha)
    assert result["log_truncated"] is True and result["status"] == "passed"
    assert len(log) <= 2_000_000 + 200 and b"log truncated" in log and b"1 passed" in log
    assert peak < 200 * 1024, f"dispatcher peak RSS {peak} kB"


def test_results_that_cannot_be_written_end_the_job_loudly(orch) -> None:
    """The repository's result folder is a file (as a full disk or a folder made
    read-only would fail a write): the job ends `error` saying why, after its retries,
    and nothing is left running or behind."""
    sha = orch.repo.commit("root", PASSING)
    orch.configure(retries=1)
    blocker = orch.config.results_dir / "demo"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    proc = orch.cli("run", "--once")
    assert proc.returncode == 1, proc.stderr
    (job,) = json.loads(orch.cli("status", "--json").stdout)
    assert job["commit"] == sha and job["status"] == "error" and job["attempts"] == 2
    assert "results could not be written" in job["message"] and "Not a directory" in job["message"]
    assert "no result files" in job["message"]
    assert orch.containers() == []


def test_writing_without_end_into_the_workspace_is_stopped_at_the_disk_limit(orch) -> None:
    fill = (
        "import itertools, os, time\n"
        "def test_fill():\n"
        "    block = os.urandom(1024 * 1024)\n"
        "    for i in itertools.count():\n"
        "        with open(f'/workspace/fill-{i}', 'wb') as fh:\n"
        "            fh.write(block * 4)\n"
        "        time.sleep(0.01)\n"
    )
    result, _ = _run(orch, {"tests/test_fill.py": fill}, disk="64m", timeout=60)
    assert result["status"] == "error" and result["message"].startswith("disk limit exceeded")
    assert result["duration_s"] < 30  # stopped by the watchdog, not by the timeout
