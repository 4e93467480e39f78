"""The benchmark's workloads: sizes, synthetic repositories and series of commits, the
host floor, and the small helpers the measurements share (see run.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass(frozen=True)
class Sizes:
    commits: int  # commits per series
    io_tests: int  # tests per I/O-bound suite
    io_sleep: float  # seconds each of them sleeps
    cpu_seconds: float  # CPU-bound suite length on the host
    parallelism: tuple[int, ...]
    triggers: int  # commits per trigger-latency measurement
    jobs: int  # jobs in the store for the scale test
    burst: int  # commits pushed at once
    requests: int  # API requests per latency figure
    numpy: bool = True  # a cold environment build with numpy (a download of its wheels)


FULL = Sizes(10, 25, 0.1, 2.5, (1, 2, 4, 8), 10, 10_000, 1_000, 200)
SMOKE = Sizes(2, 2, 0.05, 0.2, (1, 2), 2, 200, 20, 10, numpy=False)


def sh(*args: str, cwd: Path | None = None, **kw) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def save(out: Path, result: dict) -> None:
    """A benchmark's figures as JSON at ``out`` (bench/out/ by default), beside its table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Workloads:
    """Synthetic repositories and their series of commits, and the host floor they are
    measured against."""

    def __init__(self, work: Path, sizes: Sizes):
        self.work = work
        self.sizes = sizes
        self.configs = 0

    # -- repositories ------------------------------------------------------------------

    def repo(self, name: str) -> Path:
        path = self.work / name
        sh("git", "init", "-q", "-b", "main", str(path))
        for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
            sh("git", "config", key, value, cwd=path)
        (path / "tests").mkdir()
        (path / "tests" / "test_root.py").write_text("def test_root():\n    pass\n")
        self.commit(path, "root")
        return path

    @staticmethod
    def commit(path: Path, subject: str) -> str:
        sh("git", "add", "-A", cwd=path)
        sh("git", "commit", "-q", "--allow-empty", "-m", subject, cwd=path)
        return sh("git", "rev-parse", "HEAD", cwd=path)

    def io_series(self, path: Path) -> list[str]:
        shas = []
        for i in range(self.sizes.commits):
            body = "".join(
                f"def test_io_{t}():\n    time.sleep({self.sizes.io_sleep})\n" for t in range(self.sizes.io_tests)
            )
            (path / "tests" / "test_io.py").write_text(f"import time\n# commit {i}\n{body}")
            shas.append(self.commit(path, f"io {i}"))
        return shas

    def cpu_series(self, path: Path) -> list[str]:
        loops = calibrate(self.sizes.cpu_seconds)
        shas = []
        for i in range(self.sizes.commits):
            (path / "tests" / "test_cpu.py").write_text(
                f"# commit {i}\ndef test_cpu():\n    total = 0\n    for n in range({loops}):\n"
                f"        total += n * n % 7\n    assert total >= 0\n"
            )
            shas.append(self.commit(path, f"cpu {i}"))
        return shas

    def host_floor(self, repo: Path, shas: list[str]) -> float:
        """A fresh checkout of each commit and `pytest tests` on the host, one after the other."""
        began = time.perf_counter()
        for sha in shas:
            checkout = Path(tempfile.mkdtemp(dir=self.work))
            archive = subprocess.run(["git", "-C", str(repo), "archive", sha], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
            # Only pytest, as in the runner image: no plugins this host happens to have installed.
            subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                cwd=checkout,
                check=False,
                capture_output=True,
                env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            )
            shutil.rmtree(checkout)
        return time.perf_counter() - began


def calibrate(seconds: float) -> int:
    """Loop count of the CPU-bound test that takes ``seconds`` on this host."""
    n, began = 0, time.process_time()
    total = 0
    while time.process_time() - began < 0.3:
        for k in range(10_000):
            total += k * k % 7
        n += 10_000
    return int(n * seconds / (time.process_time() - began))


@contextmanager
def serving(config: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real dispatcher on ``config`` (its address and process) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dispatcher", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from orchestrator.config import load_config

        base = f"http://127.0.0.1:{load_config(config).dispatcher.port}"
        wait_http(f"{base}/healthz")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def wait_job(port: int, sha: str, final: bool = False, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in requests.get(f"http://127.0.0.1:{port}/api/jobs", params={"limit": 20}, timeout=5).json():
            if job["commit"] == sha and job["started_at"] and (not final or job["finished_at"]):
                if not final or job["status"] not in ("queued", "running"):
                    return job
        time.sleep(0.01)
    raise TimeoutError(sha)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
