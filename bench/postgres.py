"""The PostgreSQL store against SQLite's, in one run: per-job overhead, the take-over time of
a standby, and the API over 10,000 jobs.

    python bench/postgres.py            # about 8 minutes
    python bench/postgres.py --smoke    # a tiny workload, with a 2 s lease

On a PostgreSQL cluster of its own (tests/postgres.py: initdb in a temporary folder, a Unix
socket, ended by its pid). Goals (issue 24): the per-job overhead on PostgreSQL within 1.1x
SQLite's; a take-over's time (kill -9 of the active to the first job claimed by the new one),
p50 over 5 runs, with the default lease of 10 s; ``GET /api/jobs``, a page of 50 with 10,000
jobs, p50 under 50 ms.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import docker
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, pct, save, serving, sh, wait_http  # noqa: E402

from orchestrator.config import load_config  # noqa: E402
from orchestrator.models import JobStatus, TestCounts, parse_iso, transition, utcnow  # noqa: E402
from orchestrator.store import NewCommit, Store  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.postgres import Cluster  # noqa: E402


def with_store(config: Path, url: str, **dispatcher: object) -> Path:
    data = yaml.safe_load(config.read_text())
    data["store"] = {"url": url}
    data["dispatcher"] = {**data.get("dispatcher", {}), **dispatcher}
    config.write_text(yaml.safe_dump(data))
    return config


def overhead(bench: Bench, cluster: Cluster, rounds: int) -> dict:
    """The same commits tested by `run --once` on each store, alternately, ``rounds`` times.
    bench/run.py's per-job overhead figure, the whole run over the host's own run of the same
    commits, on each; and what a job takes beyond the host's run of it, with its spread over
    the rounds (a few ms a job, where one run differs from the next by more)."""
    repo = bench.repo("overhead-repo")
    root = sh("git", "rev-parse", "HEAD", cwd=repo)
    shas = bench.io_series(repo)
    floor = bench.host_floor(repo, shas)
    totals: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for _ in range(rounds):
        for kind, runs in totals.items():
            config = bench.config(repo, None)
            if kind == "postgres":
                with_store(config, cluster.database())
            store = Store(load_config(config).store_location)  # seen at the root: the series is new
            store.record_commits("bench", [], {"main": root})
            store.close()
            runs.append(bench.orchestrator("run", "--once", config=config))
    total = {kind: statistics.median(runs) for kind, runs in totals.items()}
    per_job = {kind: [(t - floor) / len(shas) for t in runs] for kind, runs in totals.items()}
    return {
        "commits": len(shas),
        "rounds": rounds,
        "host_floor_s": floor,
        "orchestrator_s": totals,
        "over_floor": {kind: t / floor for kind, t in total.items()},
        "ratio": total["postgres"] / total["sqlite"],
        "per_job_beyond_floor_s": {kind: statistics.median(v) for kind, v in per_job.items()},
        "per_job_beyond_floor_range_s": {kind: [min(v), max(v)] for kind, v in per_job.items()},
    }


def started_by(port: int, sha: str, timeout: float = 120) -> datetime:
    """When the dispatcher at ``port`` started ``sha``'s job (waited for, up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            jobs = requests.get(f"http://127.0.0.1:{port}/api/jobs", timeout=5).json()
            started = next((j["started_at"] for j in jobs if j["commit"] == sha and j["started_at"]), None)
            if started is not None:
                return parse_iso(started)
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError("the standby never started the job")


def takeover(bench: Bench, cluster: Cluster, runs: int, lease: float) -> dict:
    """Two dispatchers; the active kill -9ed; a commit pushed at that moment: from the kill to
    that commit's job started by the new active."""
    times = []
    for n in range(runs):
        repo = bench.repo(f"takeover-repo-{n}")
        config = with_store(bench.config(repo, None), cluster.database(), lease=lease)
        beta = config.parent / "beta.yaml"
        data = yaml.safe_load(config.read_text())
        data["state_dir"] = str(config.parent / "beta-state")
        beta.write_text(yaml.safe_dump(data))
        procs = {}
        for name, path in (("alpha", config), ("beta", beta)):
            port = free_port()
            procs[name] = (
                port,
                subprocess.Popen(
                    [sys.executable, "-m", "orchestrator", "run", "--name", name, "--port", str(port), "-c", str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        try:
            for port, _ in procs.values():
                wait_http(f"http://127.0.0.1:{port}/healthz")

            def role(port: int) -> str | None:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["dispatcher"]["role"]
                except (requests.RequestException, KeyError, ValueError):
                    return None

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(role(p) == "active" for p, _ in procs.values()):
                time.sleep(0.05)
            active = next(name for name, (p, _) in procs.items() if role(p) == "active")
            other = "beta" if active == "alpha" else "alpha"
            time.sleep(1)  # the repository observed at its root
            procs[active][1].send_signal(signal.SIGKILL)
            killed_at = utcnow()
            (repo / "tests" / "test_after.py").write_text("def test_after():\n    pass\n")
            sha = bench.commit(repo, "pushed as the active died")
            times.append((started_by(procs[other][0], sha) - killed_at).total_seconds())
        finally:
            for _, proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for _, proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            remove_containers(load_config(config).store_location)
    return {"lease_s": lease, "runs": runs, "takeover_s": times, "p50_s": statistics.median(times)}


def remove_containers(store_location: Path | str) -> None:
    """What the two left (the killed one's, the job a stop left to a next start that never
    comes): every container of this store's instance."""
    store = Store(store_location)
    instance = store.instance_id()
    store.close()
    engine = docker.from_env()
    for container in engine.containers.list(all=True, filters={"label": f"orchestrator.instance={instance}"}):
        container.remove(force=True)
    engine.close()


def api_page(bench: Bench, cluster: Cluster, jobs: int, requests_n: int) -> dict:
    repo = bench.repo("api-repo")
    config = with_store(bench.config(repo, sh("git", "rev-parse", "HEAD", cwd=repo)), cluster.database())
    store = Store(load_config(config).store_location)
    store.record_commits("bench", [NewCommit(f"{i:040x}", f"synthetic {i}", ("main",)) for i in range(1, jobs + 1)])
    while (job := store.claim_next()) is not None:
        store.apply(job, transition(job, JobStatus.PASSED, utcnow(), exit_code=0, tests=TestCounts(3, 3)))
    store.close()
    with serving(config) as (base, _):
        session = requests.Session()
        times = []
        for i in range(requests_n):
            began = time.perf_counter()
            resp = session.get(f"{base}/api/jobs", params={"limit": 50, "offset": (i * 50) % jobs})
            times.append(time.perf_counter() - began)
            assert resp.status_code == 200 and len(resp.json()) == 50
    return {"jobs": jobs, "p50_s": statistics.median(times), "p95_s": pct(times, 0.95)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "postgres.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-postgres-"))
    cluster = Cluster().start()
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        result = {
            "smoke": args.smoke,
            "overhead": overhead(bench, cluster, 1 if args.smoke else 4),
            "takeover": takeover(bench, cluster, 1 if args.smoke else 5, 2.0 if args.smoke else 10.0),
            "api": api_page(bench, cluster, 200 if args.smoke else 10_000, 10 if args.smoke else 200),
        }
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    o, t, a = result["overhead"], result["takeover"], result["api"]
    print("| figure | measured | goal |\n|---|---|---|")
    beyond, spread = o["per_job_beyond_floor_s"], o["per_job_beyond_floor_range_s"]
    print(
        f"| per-job overhead (bench/run.py's: `run --once` over the host floor), {o['commits']} commits, "
        f"median of {o['rounds']} alternate rounds | SQLite {o['over_floor']['sqlite']:.3f}x, PostgreSQL "
        f"{o['over_floor']['postgres']:.3f}x the host floor: PostgreSQL **{o['ratio']:.3f}x** SQLite | within 1.1x |"
    )
    print(
        "| a job beyond the host's run of it, median (range) | "
        + ", ".join(
            f"{name} {beyond[kind] * 1000:.0f} ms ({spread[kind][0] * 1000:.0f} to {spread[kind][1] * 1000:.0f})"
            for kind, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL"))
        )
        + " | |"
    )
    print(
        f"| take-over: kill -9 of the active to the first job started by the new one, lease {t['lease_s']:g} s "
        f"| p50 **{t['p50_s']:.1f} s** over {t['runs']} ({', '.join(f'{x:.1f}' for x in t['takeover_s'])}) "
        f"| within 15 s |"
    )
    print(
        f"| `GET /api/jobs`, a page of 50, {a['jobs']:,} jobs on PostgreSQL | p50 **{a['p50_s'] * 1000:.1f} ms**, "
        f"p95 {a['p95_s'] * 1000:.1f} ms | p50 under 50 ms |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
