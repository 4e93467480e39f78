"""Test history at scale: how fast test cases are recorded, and what the API answers in
with 1,000,000 of them in the store.

    python bench/history.py            # 1,000 jobs of 1,000 test cases (about 1 minute)
    python bench/history.py --smoke    # 50 jobs of 100

The cases are recorded as an attempt records them (history.record, one statement per job)
into a real store; then a real dispatcher serves the API over it. What a job's own
recording costs is also in each real job's result.json (``timings.history_s``).
"""

from __future__ import annotations

import argparse
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
from orchestrator.models import JobStatus, TestCounts, transition, utcnow  # noqa: E402
from orchestrator.results import history  # noqa: E402
from orchestrator.results.report import Report  # noqa: E402
from orchestrator.store import NewCommit, Store  # noqa: E402


def report(cases: int, job: int) -> bytes:
    """A JUnit report of ``cases`` tests; one of them fails every seventh job."""
    body = "".join(
        f'<testcase classname="tests.test_m{c // 50}" name="test_{c}" time="{(c % 13) / 100}">'
        + ('<failure message="no"/>' if c == 7 and job % 7 == 0 else "")
        + "</testcase>"
        for c in range(cases)
    )
    return f'<testsuites><testsuite tests="{cases}">{body}</testsuite></testsuites>'.encode()


def measure(bench: Bench, jobs: int, cases: int, requests_n: int) -> dict:
    repo = bench.repo("history-repo")
    config = bench.config(repo, sh("git", "rev-parse", "HEAD", cwd=repo))
    cfg = load_config(config)
    store = Store(cfg.db_path)
    store.record_commits("bench", [NewCommit(f"{i:040x}", f"synthetic {i}", ("main",)) for i in range(1, jobs + 1)])
    recording = []
    while (job := store.claim_next()) is not None:
        status = JobStatus.FAILED if job.id % 7 == 0 else JobStatus.PASSED
        done = store.apply(
            job,
            transition(
                job, status, utcnow(), exit_code=int(status is JobStatus.FAILED), tests=TestCounts(cases, cases)
            ),
        )
        junit = report(cases, job.id)
        began = time.perf_counter()
        history.record(store, done, Report(junit))
        recording.append(time.perf_counter() - began)
        if status is JobStatus.FAILED:  # the job page reads its failures from the result files
            folder = cfg.results_dir / "bench" / done.commit
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "junit.xml").write_bytes(junit)
    recorded = store.tests.count()
    store.close()
    with serving(config) as (base, _):
        session = requests.Session()

        def timed(path: str, **params) -> list[float]:
            times = []
            for _ in range(requests_n):
                began = time.perf_counter()
                resp = session.get(base + path, params=params)
                times.append(time.perf_counter() - began)
                assert resp.status_code == 200, resp.text[:300]
            return times

        failing = 7 * (jobs // 7)
        figures = {
            "api_jobs_page": timed("/api/jobs", limit=50),
            "api_failures_with_history": timed(f"/api/jobs/{failing}/failures"),
            "api_test_runs": timed("/api/tests/bench/tests.test_m0::test_7", branch="main"),
            "branch_page": timed("/repos/bench/main"),
        }
    return {
        "jobs": jobs,
        "cases_per_job": cases,
        "cases_recorded": recorded,
        "record_per_job_p50_s": statistics.median(recording),
        "cases_per_hour": cases / statistics.median(recording) * 3600,
        **{f"{k}_p50_s": statistics.median(v) for k, v in figures.items()},
        **{f"{k}_p95_s": pct(v, 0.95) for k, v in figures.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "history.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-history-"))
    try:
        jobs, cases, n = (50, 100, 10) if args.smoke else (1000, 1000, 100)
        result = measure(Bench(work, SMOKE if args.smoke else FULL), jobs, cases, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    r = result
    print(f"{r['cases_recorded']:,} test cases recorded ({r['jobs']} jobs of {r['cases_per_job']})\n")
    print("| figure | p50 | p95 |\n|---|---|---|")
    print(
        f"| recording one job's {r['cases_per_job']} cases | {r['record_per_job_p50_s'] * 1000:.1f} ms "
        f"({r['cases_per_hour']:,.0f} cases per hour) | |"
    )
    for key, name in (
        ("api_jobs_page", "`GET /api/jobs`, a page of 50"),
        ("api_failures_with_history", "`GET /api/jobs/{id}/failures` with each test's record"),
        ("api_test_runs", "`GET /api/tests/{repo}/{test}`, 100 runs"),
        ("branch_page", "`/repos/{repo}/{branch}` (charts, slowest tests)"),
    ):
        print(f"| {name} | {r[key + '_p50_s'] * 1000:.1f} ms | {r[key + '_p95_s'] * 1000:.1f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
