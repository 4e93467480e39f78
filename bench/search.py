"""Search every log at scale: 10,000 jobs indexed, and what a search answers in.

    python bench/search.py            # 10,000 jobs of about 300 log lines (a minute or two)
    python bench/search.py --smoke    # 200 jobs

Each job gets a log as a pytest run prints it (its tests' lines, and for one job in seven a
traceback with an error message of its own), indexed as a job's end indexes it
(search.index: its log, its failing tests, its reason) into a real store; then a real
dispatcher serves ``GET /api/search`` over it. Goal: a search's p50 under 100 ms.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, pct, save, serving, sh  # noqa: E402

from orchestrator.config import load_config  # noqa: E402
from orchestrator.models import JobStatus, TestCounts, iso, transition, utcnow  # noqa: E402
from orchestrator.results import search  # noqa: E402
from orchestrator.results.report import Report  # noqa: E402
from orchestrator.store import NewCommit, Store  # noqa: E402

ERRORS = ("ConnectionResetError", "TimeoutError", "KeyError", "AssertionError", "PermissionError", "OSError")


def log_of(job: int, tests: int, rng: random.Random) -> tuple[str, bytes | None]:
    """A pytest log of ``tests`` tests; every seventh job fails one, with a traceback."""
    lines = [
        "============================= test session starts ==============================",
        "platform linux -- Python 3.11.2, pytest-8.3.5, pluggy-1.6.0 -- /usr/bin/python3",
        f"collected {tests} items",
        "",
    ]
    failing = job % 7 == 0
    for t in range(tests):
        outcome = "FAILED" if failing and t == 3 else "PASSED"
        lines.append(f"tests/test_module_{t // 25}.py::test_case_{t} {outcome} [{100 * (t + 1) // tests:3d}%]")
    report = None
    if failing:
        error = rng.choice(ERRORS)
        lines += [
            "=================================== FAILURES ===================================",
            "____________________________________ test_case_3 ____________________________________",
            "    def test_case_3():",
            f">       client.fetch('/api/item/{job}')",
            f"E       {error}: request {job} to worker-{job % 13} failed after {job % 5 + 1} tries",
            "tests/test_module_0.py:42: " + error,
        ]
        report = (
            '<testsuite tests="1" failures="1"><testcase classname="tests.test_module_0" name="test_case_3">'
            f'<failure message="{error}: request {job} failed">trace</failure></testcase></testsuite>'
        ).encode()
    lines.append(f"======== {tests - failing} passed{', 1 failed' if failing else ''} in {job % 9 + 1}.0s ========")
    return "\n".join(lines) + "\n", report


def measure(bench: Bench, jobs: int, tests: int, requests_n: int) -> dict:
    repo = bench.repo("search-repo")
    config = bench.config(repo, sh("git", "rev-parse", "HEAD", cwd=repo))
    cfg = load_config(config)
    store = Store(cfg.db_path)
    store.record_commits("bench", [NewCommit(f"{i:040x}", f"synthetic {i}", ("main",)) for i in range(1, jobs + 1)])
    rng = random.Random(7)
    logs = cfg.results_dir / "logs"
    logs.mkdir(parents=True)
    indexing, lines = [], 0
    while (job := store.claim_next()) is not None:
        text, junit = log_of(job.id, tests, rng)
        status = JobStatus.FAILED if junit else JobStatus.PASSED
        done = store.apply(job, transition(job, status, utcnow(), exit_code=int(bool(junit)), tests=TestCounts(tests)))
        path = logs / f"{job.id}.log"
        path.write_text(text)
        lines += text.count("\n")
        began = time.perf_counter()
        search.index(store, done, path, Report(junit), cfg.search.log_mb)
        indexing.append(time.perf_counter() - began)
    recent = store.list_jobs(limit=1, offset=100)[0].finished_at  # the newest 100 jobs ended since
    store.close()
    size = cfg.db_path.stat().st_size + sum(p.stat().st_size for p in cfg.db_path.parent.glob("*.db-wal"))
    middle = 7 * (jobs // 14)
    queries = {
        "a rare message (one job)": {"q": f'"request {middle} to worker"'},
        "an error name (1 job in 7)": {"q": "ConnectionResetError"},
        "a word in every log": {"q": "PASSED"},
        "a prefix": {"q": "Timeout*"},
        "two words, one repository": {"q": "PermissionError tries", "repository": "bench"},
        "an error name, the newest 100 jobs (since)": {"q": "TimeoutError", "since": iso(recent)},
    }
    with serving(config) as (base, _):
        session = requests.Session()
        figures, hits = {}, {}
        for name, params in queries.items():
            times = []
            for _ in range(requests_n):
                began = time.perf_counter()
                resp = session.get(base + "/api/search", params=params)
                times.append(time.perf_counter() - began)
                assert resp.status_code == 200, resp.text[:300]
            figures[name], hits[name] = times, len(resp.json())
    return {
        "jobs": jobs,
        "log_lines": lines,
        "store_mb": round(size / 1e6, 1),
        "index_per_job_p50_s": statistics.median(indexing),
        "queries": {
            name: {"p50_s": statistics.median(t), "p95_s": pct(t, 0.95), "hits": hits[name]}
            for name, t in figures.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "search.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-search-"))
    try:
        jobs, tests, n = (200, 50, 5) if args.smoke else (10_000, 300, 50)
        result = measure(Bench(work, SMOKE if args.smoke else FULL), jobs, tests, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["smoke"] = args.smoke
    save(args.out, result)
    r = result
    print(f"{r['jobs']:,} jobs indexed, {r['log_lines']:,} log lines, a store of {r['store_mb']} MB")
    print(f"indexing one job at its end: p50 {r['index_per_job_p50_s'] * 1000:.1f} ms\n")
    print("| `GET /api/search` (the newest 50 hits, with their neighbours) | p50 | p95 | hits |\n|---|---|---|---|")
    for name, q in r["queries"].items():
        print(f"| {name} | {q['p50_s'] * 1000:.1f} ms | {q['p95_s'] * 1000:.1f} ms | {q['hits']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
