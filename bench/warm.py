"""The warm pool's effect: the same series tested with one job waiting warm (as before
the pool) and with as many as the slots (the default), at parallelism 2, 4 and 8, each
against the host floor of the same run.

    python bench/warm.py            # about 4 minutes on 2 cores
    python bench/warm.py --smoke    # a tiny workload

The workload is one the pool was not tuned on: 10 commits, each with 8 test files of one
0.25 s sleep and 24 trivial tests. Runs alternate between the two settings, so that a
machine that slows down during the run slows both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, save, sh  # noqa: E402


def series(bench: Bench, commits: int, files: int, trivial: int) -> tuple[Path, str, list[str]]:
    repo = bench.repo("warm-repo")
    root = sh("git", "rev-parse", "HEAD", cwd=repo)
    shas = []
    for i in range(commits):
        for f in range(files):
            (repo / "tests" / f"test_sleep_{f}.py").write_text(
                f"import time\n# commit {i}\ndef test_sleep():\n    time.sleep(0.25)\n"
            )
        (repo / "tests" / "test_trivial.py").write_text(
            f"# commit {i}\n" + "".join(f"def test_trivial_{t}():\n    assert {t} == {t}\n" for t in range(trivial))
        )
        shas.append(bench.commit(repo, f"warm {i}"))
    return repo, root, shas


def measure(bench: Bench, smoke: bool, rounds: int) -> dict:
    files, trivial = (2, 4) if smoke else (8, 24)
    repo, root, shas = series(bench, 2 if smoke else 10, files, trivial)
    floor = bench.host_floor(repo, shas)
    out: dict = {
        "commits": len(shas),
        "files": files,
        "trivial": trivial,
        "host_floor_s": floor,
        "rounds": rounds,
        "by_parallelism": {},
    }
    for n in (1, 2) if smoke else (2, 4, 8):
        times: dict[str, list[float]] = {"one": [], "pool": []}
        passed = True
        for _ in range(rounds):
            for setting, warm in (("one", 1), ("pool", n)):
                config = bench.config(repo, root, parallelism=n, warm=warm)
                times[setting].append(bench.orchestrator("run", "--once", config=config))
                passed = passed and all(r["status"] == "passed" for r in bench.results(config, shas))
        row = {
            setting: {"orchestrator_s": statistics.median(ts), "speedup_vs_host_floor": floor / statistics.median(ts)}
            for setting, ts in times.items()
        }
        row["all_passed"] = passed
        out["by_parallelism"][str(n)] = row
    return out


def table(result: dict) -> str:
    lines = [
        f"Warm pool, {result['commits']} commits ({result['files']} files of a 0.25 s sleep, "
        f"{result['trivial']} trivial tests each), "
        f"host floor {result['host_floor_s']:.1f} s, median of {result['rounds']} runs",
        "",
        "| parallelism | one warm job | warm pool (runner.warm = parallelism) | pool / one |",
        "|---|---|---|---|",
    ]
    for n, row in result["by_parallelism"].items():
        one, pool = row["one"], row["pool"]
        lines.append(
            f"| {n} | {one['speedup_vs_host_floor']:.2f}× host floor ({one['orchestrator_s']:.1f} s) | "
            f"{pool['speedup_vs_host_floor']:.2f}× host floor ({pool['orchestrator_s']:.1f} s) | "
            f"{one['orchestrator_s'] / pool['orchestrator_s']:.2f}× faster |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "warm.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-warm-"))
    try:
        result = measure(Bench(work, SMOKE if args.smoke else FULL), args.smoke, 1 if args.smoke else args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
