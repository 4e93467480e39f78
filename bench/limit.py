"""How close a user's `orchestrator run --once` comes to the physical limit, on the workload
shaped like Buildbot's own benchmark: 10 commits, each with 8 test files of one 0.25 s sleep
and 24 trivial tests (warm.py's series).

    python bench/limit.py            # about 4 minutes on 2 cores
    python bench/limit.py --smoke    # a tiny workload

Each round times, one after the other, the host floor (a fresh checkout of each commit and
host pytest, one after the other), `run --once` at parallelism 1 and at parallelism 4, all
from start-up to exit; the figures are medians over the rounds, so that a machine that slows
down during the run slows all three. Per job, the phases that result.json records, and for
each whether it runs inside the job's time or is hidden behind the job before (a warm start).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from warm import series  # noqa: E402
from workloads import FULL, SMOKE, save  # noqa: E402

from orchestrator.models import parse_iso  # noqa: E402

PHASES = ("checkout_s", "environment_s", "create_s", "start_s", "run_s", "collect_s", "history_s")
HIDDEN = {"checkout_s", "create_s", "start_s"}  # done while the job before runs, when started warm


def measure(bench: Bench, smoke: bool, rounds: int) -> dict:
    files, trivial = (2, 4) if smoke else (8, 24)
    repo, root, shas = series(bench, 2 if smoke else 10, files, trivial)
    floors: list[float] = []
    runs: dict[int, list[float]] = {1: [], 4: []}
    phases: dict[int, dict[str, list[float]]] = {n: {p: [] for p in PHASES} for n in runs}
    gaps: list[float] = []
    passed = True
    for _ in range(rounds):
        floors.append(bench.host_floor(repo, shas))
        for n in runs:
            config = bench.config(repo, root, parallelism=n)
            runs[n].append(bench.orchestrator("run", "--once", config=config))
            results = bench.results(config, shas)
            passed = passed and all(r["status"] == "passed" for r in results)
            for r in results:
                for p in PHASES:
                    phases[n][p].append(r["timings"].get(p, 0.0))
            if n == 1:
                ordered = sorted(results, key=lambda r: r["started_at"])
                gaps += [
                    (parse_iso(b["started_at"]) - parse_iso(a["finished_at"])).total_seconds()
                    for a, b in itertools.pairwise(ordered)
                ]
    idle = bench.config(repo, shas[-1])
    startup = statistics.median(bench.orchestrator("run", "--once", config=idle) for _ in range(rounds))
    floor = statistics.median(floors)
    return {
        "commits": len(shas),
        "files": files,
        "trivial": trivial,
        "rounds": rounds,
        "host_floor_s": floor,
        "host_floor_per_commit_s": floor / len(shas),
        "p1_s": statistics.median(runs[1]),
        "p4_s": statistics.median(runs[4]),
        "p1_ratio": statistics.median(runs[1]) / floor,
        "p4_speedup": floor / statistics.median(runs[4]),
        "startup_s": startup,
        "gap_between_jobs_s": statistics.median(gaps) if gaps else None,
        "phases_s": {str(n): {p: statistics.mean(v) for p, v in ph.items()} for n, ph in phases.items()},
        "all_passed": passed,
    }


def table(result: dict) -> str:
    lines = [
        f"Buildbot-shaped workload: {result['commits']} commits ({result['files']} files of a 0.25 s sleep, "
        f"{result['trivial']} trivial tests each), medians of {result['rounds']} rounds",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
        f"| parallelism 1, our time / host floor | {result['p1_ratio']:.3f}× ({result['p1_s']:.1f} s vs "
        f"{result['host_floor_s']:.1f} s) | ≤ 1.03× |",
        f"| parallelism 4, host floor / our time | {result['p4_speedup']:.2f}× ({result['p4_s']:.1f} s) | ≥ 2.9× |",
        "",
        f"Per job (mean), start-up of `run --once` {result['startup_s']:.2f} s once, gap between one job's end and "
        f"the next one's start {result['gap_between_jobs_s'] or 0:.3f} s at parallelism 1; the host floor spends "
        f"{result['host_floor_per_commit_s']:.2f} s per commit:",
        "",
        "| phase | parallelism 1 | parallelism 4 | where |",
        "|---|---|---|---|",
    ]
    for p in PHASES:
        where = "hidden behind the job before (warm start)" if p in HIDDEN else "inside the job's time"
        one, four = result["phases_s"]["1"][p], result["phases_s"]["4"][p]
        lines.append(f"| {p.removesuffix('_s')} | {one:.3f} s | {four:.3f} s | {where} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny workload (seconds, not minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "limit.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-limit-"))
    try:
        result = measure(Bench(work, SMOKE if args.smoke else FULL), args.smoke, 1 if args.smoke else args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
