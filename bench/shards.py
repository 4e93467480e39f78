"""A long suite split across containers: one commit whose tests take about 40 s one after
the other on the host, uneven (a few long tests, many short ones), at parallelism 4.

    python bench/shards.py            # about 2 minutes
    python bench/shards.py --smoke    # a 6 s suite

First the host's own sequential run (pytest on the host: the floor of one container),
then the orchestrator unsplit (which records every test's duration), then a commit with
the same tests split 4 ways. Figures, all from this one run: the split job's time over
the unsplit one's (goal <= 0.33), over a perfect quarter of it (goal <= 1.3), and the
balance, the longest shard over the mean shard.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, save  # noqa: E402

# (count, seconds): 39.5 s in all, a few long tests and many short ones
FULL_SUITE = [(8, 2.0), (14, 1.0), (20, 0.4), (30, 0.05)]
SMOKE_SUITE = [(2, 1.0), (4, 0.5), (10, 0.1)]
FILES = 6


def write_suite(repo: Path, sizes: list[tuple[int, float]], note: str) -> None:
    """The tests spread over FILES files, round robin (so no file is the long one)."""
    bodies: list[list[str]] = [["import time", f"# {note}"] for _ in range(FILES)]
    n = 0
    for count, seconds in sizes:
        for _ in range(count):
            bodies[n % FILES] += ["", f"def test_{n}():", f"    time.sleep({seconds})"]
            n += 1
    tests = repo / "tests"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir()
    for i, body in enumerate(bodies):
        (tests / f"test_part{i}.py").write_text("\n".join(body) + "\n")


def run_once(config: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--once", "-c", str(config)],
        capture_output=True,
        check=True,
        timeout=900,
    )
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "shards.json")
    args = parser.parse_args()
    sizes = SMOKE_SUITE if args.smoke else FULL_SUITE
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-shards-"))
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        repo = bench.repo("long-suite")
        root = bench.commit(repo, "root")
        write_suite(repo, sizes, "unsplit")
        unsplit_sha = bench.commit(repo, "the long suite")
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=repo,
            capture_output=True,
            check=True,
            timeout=600,
        )
        host = time.perf_counter() - began
        config = bench.config(repo, root, parallelism=4)
        unsplit_wall = run_once(config)
        write_suite(repo, sizes, "split")
        split_sha = bench.commit(repo, "the same suite, split")
        data = yaml.safe_load(config.read_text())
        data["repositories"][0]["shards"] = 4
        config.write_text(yaml.safe_dump(data))
        split_wall = run_once(config)
        unsplit, split = bench.results(config, [unsplit_sha, split_sha])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    durations = [s["duration_s"] for s in split["shards"]]
    result = {
        "tests": sum(count for count, _ in sizes),
        "suite_s": round(sum(count * seconds for count, seconds in sizes), 2),
        "host_sequential_s": round(host, 2),
        "unsplit": {
            "status": unsplit["status"],
            "duration_s": unsplit["duration_s"],
            "run_once_s": round(unsplit_wall, 2),
        },
        "split": {
            "status": split["status"],
            "duration_s": split["duration_s"],
            "run_once_s": round(split_wall, 2),
            "shards": [{k: s[k] for k in ("index", "status", "duration_s", "tests")} for s in split["shards"]],
        },
        "split_over_unsplit": round(split["duration_s"] / unsplit["duration_s"], 3),
        "split_over_quarter": round(split["duration_s"] / (unsplit["duration_s"] / 4), 3),
        "balance": round(max(durations) / statistics.mean(durations), 3),
    }
    save(args.out, result)
    print(
        f"{result['tests']} tests, {result['suite_s']} s of sleeps, uneven; parallelism 4; "
        f"host, sequential: {result['host_sequential_s']:.1f} s\n"
    )
    print("| | unsplit | split 4 ways |\n|---|---|---|")
    print(f"| the job (claim to last result) | {unsplit['duration_s']:.1f} s | {split['duration_s']:.1f} s |")
    print(f"| `run --once`, start to exit | {unsplit_wall:.1f} s | {split_wall:.1f} s |")
    print(f"| split / unsplit (goal <= 0.33) | | {result['split_over_unsplit']:.2f} |")
    print(f"| split / a perfect quarter (goal <= 1.3) | | {result['split_over_quarter']:.2f} |")
    print(
        f"| balance: longest shard / mean shard | | {result['balance']:.2f} "
        f"({', '.join(f'{d:.1f}' for d in durations)} s) |"
    )
    passed = (
        unsplit["status"] == split["status"] == "passed"
        and split["shards"]
        and sum(s["tests"]["total"] for s in split["shards"]) == result["tests"]
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
