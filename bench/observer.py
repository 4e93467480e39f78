"""Many repositories: the observer with 500 local repositories at `poll_interval: 5`.

    python bench/observer.py            # about 2 minutes
    python bench/observer.py --smoke    # 20 repositories, seconds

A real dispatcher (`orchestrator dispatcher`) and a real observer (`orchestrator observer`,
its own process, posting to the dispatcher's API) over N bare repositories on this disk.
Once every mirror is cloned: the observer's CPU over a quiet window (its own time and its
git children's, from /proc), and, for commits pushed to repositories picked at random, the
time from just before `git push` until the job is in the dispatcher's queue (p50, p95).
Goals: under half a core, p50 under 2 s.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from workloads import save  # noqa: E402

from orchestrator.config import load_config  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from tests.helpers import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """A process's CPU time with its waited-for children's (its git commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS  # utime stime cutime cstime


def repositories(work: Path, count: int) -> tuple[list[Path], str]:
    """``count`` bare repositories of one root commit; and that commit."""
    seed = work / "seed"
    git("init", "-q", "-b", "main", str(seed))
    for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
        git("config", key, value, cwd=seed)
    (seed / "tests").mkdir()
    (seed / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    git("add", "-A", cwd=seed)
    git("commit", "-q", "-m", "root", cwd=seed)
    bares = [work / f"r{i}.git" for i in range(count)]
    for bare in bares:
        git("clone", "-q", "--bare", str(seed), str(bare))
    return bares, git("rev-parse", "HEAD", cwd=seed)


def measure(work: Path, count: int, poll: float, pushes: int, window: float) -> dict:
    bares, head = repositories(work, count)
    port = free_port()
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repositories": [{"name": bare.stem, "url": str(bare)} for bare in bares],
                "poll_interval": poll,
                "state_dir": str(work / "state"),
                "results_dir": str(work / "results"),
                "dispatcher": {"port": port},
                "runner": {"parallelism": 2, "timeout": 120},
            }
        )
    )
    store = Store(load_config(config).db_path)  # every repository seen at its root: nothing to test yet
    for bare in bares:
        store.record_commits(bare.stem, [], {"main": head})
    store.close()
    base = f"http://127.0.0.1:{port}"
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dispatcher", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    observer = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        began = time.monotonic()
        observer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "observer",
                "-c",
                str(config),
                "--dispatcher-server",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        mirrors = work / "state" / "mirrors"
        while time.monotonic() - began < 600 and len(list(mirrors.glob("*/HEAD"))) < count:
            time.sleep(0.2)
        cloned_s = time.monotonic() - began
        time.sleep(poll)  # a whole round after the clones
        used, at = cpu_seconds(observer.pid), time.monotonic()
        time.sleep(window)
        quiet_cores = (cpu_seconds(observer.pid) - used) / (time.monotonic() - at)
        latencies = []
        random.seed(7)
        for n, bare in enumerate(random.sample(bares, pushes)):
            clone = work / f"push{n}"
            git("clone", "-q", str(bare), str(clone))
            for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
                git("config", key, value, cwd=clone)
            git("commit", "-q", "--allow-empty", "-m", f"push {n}", cwd=clone)
            sha = git("rev-parse", "HEAD", cwd=clone)
            time.sleep(random.uniform(0, poll))  # pushes land anywhere in a round
            pushed = time.monotonic()
            git("push", "-q", "origin", "main", cwd=clone)
            while time.monotonic() - pushed < 60:
                jobs = requests.get(base + "/api/jobs", params={"repository": bare.stem}, timeout=10).json()
                if any(j["commit"] == sha for j in jobs):
                    latencies.append(time.monotonic() - pushed)
                    break
                time.sleep(0.05)
        return {
            "repositories": count,
            "poll_interval_s": poll,
            "first_round_clones_s": cloned_s,
            "quiet_window_s": window,
            "observer_cores": quiet_cores,
            "pushes": pushes,
            "queued": len(latencies),
            "push_to_queued_p50_s": statistics.median(latencies) if latencies else None,
            "push_to_queued_p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies else None,
        }
    finally:
        for proc in (observer, dispatcher):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repositories", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "observer.json")
    args = parser.parse_args()
    count = args.repositories or (20 if args.smoke else 500)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-observer-"))
    try:
        result = measure(work, count, 5.0, 3 if args.smoke else 12, 5.0 if args.smoke else 30.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(
        f"{result['repositories']} repositories, poll_interval {result['poll_interval_s']:g} s: "
        f"observer {result['observer_cores']:.2f} cores while quiet; push -> queued "
        f"p50 {result['push_to_queued_p50_s']:.2f} s, p95 {result['push_to_queued_p95_s']:.2f} s "
        f"({result['queued']}/{result['pushes']}); first round (clones) {result['first_round_clones_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
