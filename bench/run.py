"""Benchmarks of the real orchestrator on the real engine: per-job overhead, parallel
scaling, trigger latency and scale. Prints a table and writes JSON.

    python bench/run.py            # the full run (about 10 minutes on 2 cores)
    python bench/run.py --smoke    # a tiny workload, to keep this script from rotting

Ratios are measured within one run, against the host floor measured in the same run:
machines here are noisy, absolute seconds are not comparable across runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import environments  # noqa: E402
from workloads import FULL, SMOKE, Workloads, pct, rss, save, serving, sh, wait_http, wait_job  # noqa: E402

from orchestrator.config import load_config  # noqa: E402
from orchestrator.models import JobStatus, TestCounts, parse_iso, transition, utcnow  # noqa: E402
from orchestrator.observe.mirror import Mirrors  # noqa: E402
from orchestrator.observe.observer import Observer  # noqa: E402
from orchestrator.store import NewCommit, Store  # noqa: E402
from tests.helpers import free_port  # noqa: E402


class Bench(Workloads):
    """The four figures, each measured against the host floor of the same run."""

    # -- orchestrator set-ups ----------------------------------------------------------

    def config(self, repo: Path, seen: str | None, name: str = "bench", **runner) -> Path:
        """A fresh state_dir whose store has already seen ``seen`` on main, so the next
        `run --once` tests every commit after it (None: first sight, the head only)."""
        self.configs += 1
        directory = self.work / f"setup{self.configs}"
        directory.mkdir()
        port = free_port()
        data = {
            "repositories": [{"name": name, "url": str(repo)}],
            "poll_interval": runner.pop("poll_interval", 1.0),
            "state_dir": str(directory / "state"),
            "results_dir": str(directory / "results"),
            "dispatcher": {"port": port},
            "runner": {"parallelism": 1, "timeout": 300, **runner},
        }
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        if seen is not None:
            store = Store(load_config(path).db_path)
            store.record_commits(name, [], {"main": seen})
            store.close()
        return path

    @staticmethod
    def orchestrator(*args: str, config: Path) -> float:
        """`orchestrator ARGS -c CONFIG`, timed whole. It starts as an installed one does,
        from its bytecode: an environment that forbids writing bytecode (this machine's and
        CI's set PYTHONDONTWRITEBYTECODE) would compile its 62 modules at every start-up."""
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "-c", str(config)],
            check=False,
            capture_output=True,
            timeout=1800,
            env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        )
        return time.perf_counter() - began

    @staticmethod
    def results(config: Path, shas: list[str]) -> list[dict]:
        results_dir = load_config(config).results_dir / "bench"
        return [json.loads((results_dir / sha / "result.json").read_text()) for sha in shas]

    # -- the four figures --------------------------------------------------------------

    def overhead(self) -> dict:
        out = {}
        for kind in ("io", "cpu"):
            repo = self.repo(f"{kind}-repo")
            root = sh("git", "rev-parse", "HEAD", cwd=repo)
            shas = self.io_series(repo) if kind == "io" else self.cpu_series(repo)
            floor = self.host_floor(repo, shas)
            config = self.config(repo, root)
            total = self.orchestrator("run", "--once", config=config)
            results = self.results(config, shas)
            idle = self.config(repo, shas[-1])
            startup = self.orchestrator("run", "--once", config=idle)
            phases = {
                k: statistics.mean(r["timings"].get(k, 0.0) for r in results)
                for k in ("checkout_s", "create_s", "start_s", "run_s", "collect_s", "history_s")
            }
            gaps = [
                (parse_iso(b["started_at"]) - parse_iso(a["finished_at"])).total_seconds()
                for a, b in itertools.pairwise(results)
            ]
            accounted = startup + sum(sum(r["timings"].values()) for r in results)
            out[kind] = {
                "commits": len(shas),
                "host_floor_s": floor,
                "orchestrator_s": total,
                "ratio": total / floor,
                "startup_s": startup,
                "per_job_phases_s": phases,
                "other_per_job_s": max(0.0, (total - accounted) / len(shas)),
                "gap_between_jobs_s": statistics.median(gaps) if gaps else None,
                "all_passed": all(r["status"] == "passed" for r in results),
            }
            if kind == "io":
                self._io = (repo, root, shas, floor)
        return out

    def scaling(self) -> dict:
        repo, root, shas, floor = self._io
        rows = {}
        for n in self.sizes.parallelism:
            config = self.config(repo, root, parallelism=n)
            total = self.orchestrator("run", "--once", config=config)
            ok = all(r["status"] == "passed" for r in self.results(config, shas))
            rows[str(n)] = {"orchestrator_s": total, "speedup_vs_host_floor": floor / total, "all_passed": ok}
        return {"host_floor_s": floor, "by_parallelism": rows}

    def latency(self) -> dict:
        """From just before `git push` to the container's start, for a push into a bare repository,
        with the post-receive hook installed
        (instant) and without it (polling)."""
        seed = self.repo("trigger-seed")
        bare = self.work / "trigger.git"
        sh("git", "clone", "-q", "--bare", str(seed), str(bare))
        clone = self.work / "trigger-clone"
        sh("git", "clone", "-q", str(bare), str(clone))
        for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
            sh("git", "config", key, value, cwd=clone)
        hook = bare / "hooks" / "post-receive"
        out = {}
        for mode, poll in (("polling", 1.0), ("instant", 3600.0)):
            config = self.config(bare, sh("git", "rev-parse", "HEAD", cwd=clone), poll_interval=poll)
            port = load_config(config).dispatcher.port
            if mode == "instant":
                shutil.copy(ROOT / "hooks" / "post-receive", hook)
                hook.chmod(0o755)
                for key, value in (
                    ("orchestrator.repository", "bench"),
                    ("orchestrator.config", str(config)),
                    ("orchestrator.url", f"http://127.0.0.1:{port}"),
                ):
                    sh("git", "config", key, value, cwd=bare)
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz")
                time.sleep(1.5)  # the first poll has happened
                samples = []
                for i in range(self.sizes.triggers):
                    (clone / "tests" / "test_root.py").write_text(f"def test_root():\n    pass  # {mode} {i}\n")
                    sha = self.commit(clone, f"{mode} {i}")
                    pushed = time.time()
                    sh("git", "push", "-q", "origin", "main", cwd=clone)
                    job = wait_job(port, sha, final=True)  # its started_at is then the container's own
                    samples.append(parse_iso(job["started_at"]).timestamp() - pushed)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            out[mode] = {
                "poll_interval_s": poll if mode == "polling" else None,
                "p50_s": statistics.median(samples),
                "p95_s": pct(samples, 0.95),
                "samples": len(samples),
            }
        return out

    def scale(self) -> dict:
        repo = self.repo("scale-repo")
        root = sh("git", "rev-parse", "HEAD", cwd=repo)
        config = self.config(repo, root)
        cfg = load_config(config)
        store = Store(cfg.db_path)
        fake = [NewCommit(f"{i:040x}", f"synthetic {i}", ("main",)) for i in range(1, self.sizes.jobs + 1)]
        store.record_commits("bench", fake)
        while (job := store.claim_next()) is not None:  # each one passed, as a real attempt would record it
            store.apply(job, transition(job, JobStatus.PASSED, utcnow(), exit_code=0, tests=TestCounts(3, 3)))
        store.close()
        status_times = [self.orchestrator("status", config=config) for _ in range(max(3, self.sizes.triggers))]
        with serving(config) as (base, proc):
            session = requests.Session()
            api = []
            for i in range(self.sizes.requests):
                began = time.perf_counter()
                resp = session.get(f"{base}/api/jobs", params={"limit": 50, "offset": (i * 50) % self.sizes.jobs})
                api.append(time.perf_counter() - began)
                assert resp.status_code == 200 and len(resp.json()) == 50
            rss_kb = rss(proc.pid)
        burst = self.burst()
        return {
            "jobs_in_store": self.sizes.jobs,
            "status_cli_p50_s": statistics.median(status_times),
            "status_cli_p95_s": pct(status_times, 0.95),
            "api_jobs_page_p50_s": statistics.median(api),
            "api_jobs_page_p95_s": pct(api, 0.95),
            "dispatcher_rss_mb": rss_kb / 1024,
            **burst,
        }

    def burst(self) -> dict:
        """N commits pushed at once: how long the observer takes to queue them all."""
        repo = self.repo("burst-repo")
        root = sh("git", "rev-parse", "HEAD", cwd=repo)
        config = load_config(self.config(repo, root))
        store = Store(config.db_path)
        observer = Observer(
            config.repositories, config.poll_interval, Mirrors(config.state_dir, config.repositories), store
        )
        observer.poll_once()  # the mirror exists, as it would on a running system
        stream = "".join(
            f"commit refs/heads/main\nmark :{i + 1}\ncommitter b <b@x> {1700000000 + i} +0000\n"
            f"data {len(f'burst {i}')}\nburst {i}\n" + (f"from {root}\n" if i == 0 else f"from :{i}\n") + "\n"
            for i in range(self.sizes.burst)
        )
        subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=stream, text=True, check=True)
        began = time.perf_counter()
        queued = observer.poll_once()
        took = time.perf_counter() - began
        store.close()
        return {"burst_commits": self.sizes.burst, "burst_queued": queued, "burst_queue_s": took}


def table(result: dict) -> str:
    o, s, lat, sc = result["overhead"], result["scaling"], result["latency"], result["scale"]
    lines = [
        f"orchestrator benchmark, {result['date']}, {result['cores']} cores, Docker {result['docker']}",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
    ]
    for kind in ("io", "cpu"):
        r = o[kind]
        lines.append(
            f"| per-job overhead, {kind}-bound ({r['commits']} commits, parallelism 1) | "
            f"{r['ratio']:.2f}× host floor ({r['orchestrator_s']:.1f} s vs {r['host_floor_s']:.1f} s) | ≤ 1.10 |"
        )
    for n, row in s["by_parallelism"].items():
        lines.append(
            f"| parallel scaling, parallelism {n} | {row['speedup_vs_host_floor']:.2f}× faster than host floor "
            f"({row['orchestrator_s']:.1f} s) | {'≥ 2.8 at 4' if n == '4' else ''} |"
        )
    for mode, r in lat.items():
        extra = f" (poll_interval {r['poll_interval_s']:g} s)" if r["poll_interval_s"] else " (hooks/post-receive)"
        lines.append(
            f"| `git push` → container start, {mode}{extra} | p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s | "
            f"{'p50 ≤ 0.5 s' if mode == 'instant' else ''} |"
        )
    lines += [
        f"| `orchestrator status`, {sc['jobs_in_store']} jobs in store | p50 {sc['status_cli_p50_s'] * 1000:.0f} ms, "
        f"p95 {sc['status_cli_p95_s'] * 1000:.0f} ms (whole command) | |",
        f"| `GET /api/jobs` page of 50, {sc['jobs_in_store']} jobs | p50 {sc['api_jobs_page_p50_s'] * 1000:.1f} ms, "
        f"p95 {sc['api_jobs_page_p95_s'] * 1000:.1f} ms | p50 ≤ 50 ms |",
        f"| dispatcher resident memory | {sc['dispatcher_rss_mb']:.0f} MB | < 150 MB |",
        f"| {sc['burst_commits']} commits pushed at once → all queued | {sc['burst_queue_s']:.2f} s "
        f"({sc['burst_queued']} queued) | < 2 s |",
    ]
    r = o["io"]
    ph = r["per_job_phases_s"]
    env = result["environments"]
    lines += [
        f"| a commit of a src-layout project, environment reused ({env['commits']} commits, parallelism 1) | "
        f"{env['per_commit_extra_s']:+.2f} s per commit over the same suite with no environment "
        f"({env['src_s']:.1f} s vs {env['flat_s']:.1f} s) | ≤ +0.5 s |",
        f"| cold environment build, a small dependency set | {env['cold_build_s']['small']:.1f} s | |",
        *(
            [f"| the same packages, a new fingerprint (wheels kept) | {env['cold_build_s']['small_again']:.1f} s | |"]
            if "small_again" in env["cold_build_s"]
            else []
        ),
        *(
            [
                f"| cold environment build, with numpy | {env['cold_build_s']['numpy']:.1f} s | |",
                f"| numpy, a new fingerprint (wheels kept) | {env['cold_build_s']['numpy_again']:.1f} s | |",
            ]
            if "numpy" in env["cold_build_s"]
            else []
        ),
    ]
    lines += [
        "",
        "Per-job breakdown (I/O-bound series, parallelism 1, mean seconds per job):",
        "",
        "| start-up (once) | checkout | create + attach | start | container run | report + verdict | test history "
        "| other (scheduling, removal) | gap between jobs |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['startup_s']:.2f} | {ph['checkout_s']:.3f} | {ph['create_s']:.3f} | {ph['start_s']:.3f} | "
        f"{ph['run_s']:.2f} | {ph['collect_s']:.3f} | {ph['history_s']:.4f} | {r['other_per_job_s']:.3f} | "
        f"{r['gap_between_jobs_s'] or 0:.3f} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny workload (seconds, not minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "results.json")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    try:
        bench = Bench(work, sizes)
        result = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "docker": client.version().get("Version"),
            "smoke": args.smoke,
        }
        result["overhead"] = bench.overhead()
        result["scaling"] = bench.scaling()
        result["latency"] = bench.latency()
        result["scale"] = bench.scale()
        result["environments"] = environments.measure(
            bench,
            lambda config, build=False: bench.orchestrator("run", "--once", config=config),  # noqa: ARG005 (the others' signature)
            again=not args.smoke,
        )
    finally:
        environments.remove_images()
        for container in client.api.containers(all=True, filters={"label": "orchestrator.job"}):
            if container["Labels"].get("orchestrator.repository") == "bench":
                client.api.remove_container(container["Id"], force=True)
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(table(result))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
