"""The merge queue: 8 requests queued at once, each candidate a 10 s suite, parallelism 4.

    python bench/merge_queue.py            # about 3 minutes
    python bench/merge_queue.py --smoke    # 1 s suites

In one run, each in a fresh repository and state: the 8 all passing at depth 4 (goal: all
merged within 3 suites' time plus overhead), the same one at a time (depth 1: 8 suites),
and the 8 at depth 4 with the 3rd failing (goal: the other 7 merged, at most ``depth``
jobs beyond one per request spent on candidates made again). And, of every merge, the
time from its candidate's job ending to the target moving (goal: p50 under 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, pct, save, sh  # noqa: E402

from orchestrator.models import parse_iso  # noqa: E402

REQUESTS, PARALLELISM, DEPTH = 8, 4, 4
SMOKE_REQUESTS, SMOKE_DEPTH = 3, 2  # --smoke: the shortest queue with a 3rd to fail (it runs in the test suite)


def queue_case(bench: Bench, name: str, suite_s: float, depth: int, failing: int | None, requests: int) -> dict:
    """A repository whose suite sleeps ``suite_s`` (one test on main), 8 branches off it
    each adding a trivial test (the ``failing``-th, from 1, a failing one), all asked for at
    once; `run --once` timed until every request ended."""
    repo = bench.repo(f"{name}-repo")
    (repo / "tests" / "test_suite.py").write_text(f"import time\n\ndef test_suite():\n    time.sleep({suite_s})\n")
    root = bench.commit(repo, "the suite")
    sh("git", "config", "receive.denyCurrentBranch", "updateInstead", cwd=repo)
    for i in range(1, requests + 1):
        sh("git", "checkout", "-q", "-b", f"req{i}", root, cwd=repo)
        body = "def test_broken():\n    assert False\n" if i == failing else f"def test_req{i}():\n    pass\n"
        (repo / "tests" / f"test_req{i}.py").write_text(body)
        bench.commit(repo, f"request {i}")
    sh("git", "checkout", "-q", "main", cwd=repo)
    config = bench.config(repo, root, name=name, parallelism=PARALLELISM)
    data = yaml.safe_load(config.read_text())
    data["repositories"][0]["merge_queue"] = {"target": "main", "depth": depth}
    data["repositories"][0]["branches"] = ["main"]  # the requests' own branches are not tested for themselves
    config.write_text(yaml.safe_dump(data))
    for i in range(1, requests + 1):
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "merge", f"req{i}", "-c", str(config)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    seconds = bench.orchestrator("run", "--once", config=config)
    listed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "merges", "--json", "-c", str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    merges = json.loads(listed.stdout)
    status = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", "--json", "--limit", "100", "-c", str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    jobs = {j["id"]: j for j in json.loads(status.stdout)}
    spent = [j for j in jobs.values() if j["status"] not in ("cancelled", "queued")]  # every job is a candidate's
    to_target = []
    for m in merges:
        job = jobs.get(m["job_id"])
        if m["state"] == "merged" and job and job.get("finished_at"):
            to_target.append((parse_iso(m["ended_at"]) - parse_iso(job["finished_at"])).total_seconds())
    return {
        "seconds": round(seconds, 2),
        "merged": sum(1 for m in merges if m["state"] == "merged"),
        "rejected": sum(1 for m in merges if m["state"] == "rejected"),
        "rejections": [f"{m['branch']}: {m['message']}" for m in merges if m["state"] == "rejected"],
        "candidate_jobs_run": len(spent),
        "extra_jobs": len(spent) - requests,
        "to_target_s": [round(s, 3) for s in to_target],
        "main_history": sh("git", "rev-list", "--count", "main", cwd=repo),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "merge_queue.json")
    args = parser.parse_args()
    suite_s = 0.5 if args.smoke else 10.0
    requests, depth = (SMOKE_REQUESTS, SMOKE_DEPTH) if args.smoke else (REQUESTS, DEPTH)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-merges-"))
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        cases = {
            "speculative, all passing": queue_case(bench, "speculative", suite_s, depth, None, requests),
            "one at a time, all passing": queue_case(bench, "one-at-a-time", suite_s, 1, None, requests),
            "speculative, the 3rd failing": queue_case(bench, "one-failing", suite_s, depth, 3, requests),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    latencies = [s for case in cases.values() for s in case["to_target_s"]]
    result = {
        "requests": requests,
        "depth": depth,
        "suite_s": suite_s,
        "parallelism": PARALLELISM,
        "cases": cases,
        "speculative_over_suite": round(cases["speculative, all passing"]["seconds"] / suite_s, 2),
        "one_at_a_time_over_suite": round(cases["one at a time, all passing"]["seconds"] / suite_s, 2),
        "to_target_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "to_target_p90_s": round(pct(latencies, 0.9), 3) if latencies else None,
    }
    save(args.out, result)
    print(
        f"{requests} merge requests at once, each candidate a {suite_s:g} s suite, parallelism {PARALLELISM}, "
        f"speculation depth {depth}\n"
    )
    print("| | `run --once` | / one suite | merged | rejected | candidate jobs run | beyond one per request |")
    print("|---|---|---|---|---|---|---|")
    for name, case in cases.items():
        print(
            f"| {name} | {case['seconds']:.1f} s | {case['seconds'] / suite_s:.2f} | {case['merged']} | "
            f"{case['rejected']} | {case['candidate_jobs_run']} | {case['extra_jobs']} |"
        )
    print(
        f"\nfrom a candidate's job ending to the target moving: p50 {result['to_target_p50_s']} s, "
        f"p90 {result['to_target_p90_s']} s (goal: p50 < 0.5 s)"
    )
    ok = (
        cases["speculative, all passing"]["merged"] == requests
        and cases["one at a time, all passing"]["merged"] == requests
        and cases["speculative, the 3rd failing"]["merged"] == requests - 1
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
