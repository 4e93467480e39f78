"""A long suite split across containers: one commit whose tests take about 40 s one after
the other on the host, uneven (a few long tests, many short ones), at parallelism 4.

    python bench/shards.py            # about 3 minutes
    python bench/shards.py --smoke    # a 2 s suite

In one run: the host's own sequential run (pytest on the host: the floor of one
container), then the orchestrator unsplit (which records every test's duration), then
the same tests split 4 ways in four situations, each a commit of its own:

- *as recorded*: the recorded durations are right;
- *slower than recorded*, twice: the tests that the fixed split puts in its first shard,
  but for the longest ones, take SLOWER times as long as recorded, once with
  ``shard_split: fixed`` and once with the shared queue (the default), each from the same
  recorded durations;
- *no history*: the recorded durations are removed first.

Each is compared with the best possible: one container's overhead (the unsplit job less
its tests) plus a perfect quarter of the tests' time, or plus the longest test if that is
longer. Goals: as recorded <= 1.3x, slower than recorded with the queue <= 1.15x, no
history <= 1.3x, and the split job <= 0.33 of the unsplit one.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
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

from orchestrator.config import load_config  # noqa: E402
from runner_image.orchestrator_shard import split  # noqa: E402

# (count, seconds): 39.5 s in all, a few long tests and many short ones
FULL_SUITE = [(8, 2.0), (14, 1.0), (20, 0.4), (30, 0.05)]
SMOKE_SUITE = [(2, 0.5), (4, 0.2), (6, 0.05)]
FILES = 6
SHARDS = 4
SLOWER = 4.0  # how many times as long the slowed tests take


def sleeps(sizes: list[tuple[int, float]]) -> dict[str, float]:
    """Each test's node id and sleep, spread over FILES files round robin (so no file is
    the long one)."""
    out, n = {}, 0
    for count, seconds in sizes:
        for _ in range(count):
            out[f"tests/test_part{n % FILES}.py::test_{n}"] = seconds
            n += 1
    return out


def write_suite(repo: Path, suite: dict[str, float], note: str) -> None:
    bodies: dict[str, list[str]] = {}
    for nodeid, seconds in suite.items():
        path, _, name = nodeid.partition("::")
        bodies.setdefault(path, ["import time", f"# {note}"]).extend(
            ["", f"def {name}():", f"    time.sleep({seconds})"]
        )
    tests = repo / "tests"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir()
    for path, body in bodies.items():
        (repo / path).write_text("\n".join(body) + "\n")


def run_once(config: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--once", "-c", str(config)],
        capture_output=True,
        check=True,
        timeout=900,
    )
    return time.perf_counter() - began


class Durations:
    """The store's recorded durations of the bench repository: read, put back, removed
    (between runs, while no orchestrator has the store open)."""

    def __init__(self, config: Path):
        self.db = load_config(config).db_path

    def _run(self, sql: str, rows: list | None = None) -> list:
        db = sqlite3.connect(self.db)
        try:
            with db:
                if rows is not None:
                    db.executemany(sql, rows)
                    return []
                return db.execute(sql).fetchall()
        finally:
            db.close()

    def rows(self) -> list:
        return self._run("SELECT * FROM test_durations")

    def by_test(self) -> dict[str, float]:
        return dict(self._run("SELECT test_id, seconds FROM test_durations"))

    def restore(self, rows: list) -> None:
        self._run("DELETE FROM test_durations")
        if rows:
            self._run(f"INSERT INTO test_durations VALUES ({', '.join('?' * len(rows[0]))})", rows)

    def remove(self) -> None:
        self._run("DELETE FROM test_durations")


def configure(config: Path, **repository) -> None:
    data = yaml.safe_load(config.read_text())
    data["repositories"][0].update(repository)
    config.write_text(yaml.safe_dump(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "shards.json")
    args = parser.parse_args()
    suite = sleeps(SMOKE_SUITE if args.smoke else FULL_SUITE)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-shards-"))
    shas: dict[str, str] = {}
    walls: dict[str, float] = {}
    suites: dict[str, dict[str, float]] = {}
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        repo = bench.repo("long-suite")
        root = bench.commit(repo, "root")
        write_suite(repo, suite, "unsplit")
        shas["unsplit"] = bench.commit(repo, "the long suite")
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=repo,
            capture_output=True,
            check=True,
            timeout=600,
        )
        host = time.perf_counter() - began
        config = bench.config(repo, root, parallelism=SHARDS)
        durations = Durations(config)

        def case(name: str, tests: dict[str, float], **repository) -> None:
            write_suite(repo, tests, name)
            shas[name] = bench.commit(repo, name)
            suites[name] = tests
            configure(config, **repository)
            walls[name] = run_once(config)

        suites["unsplit"] = suite
        walls["unsplit"] = run_once(config)
        case("as recorded", suite, shards=SHARDS)
        recorded = durations.rows()
        # what the fixed split puts in its first shard, from what was recorded, gets slower
        # (but for the suite's longest tests: the best possible stays a quarter)
        first = split(list(suite), SHARDS, durations.by_test())[0]
        longest = max(suite.values())
        slowed = {n: s * SLOWER if n in first and s < longest else s for n, s in suite.items()}
        case("slower, fixed split", slowed, shards=SHARDS, shard_split="fixed")
        durations.restore(recorded)
        case("slower, queue", slowed, shards=SHARDS, shard_split="queue")
        durations.remove()
        case("no history, queue", suite, shards=SHARDS)
        jobs = dict(zip(shas, bench.results(config, list(shas.values())), strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    unsplit = jobs["unsplit"]
    overhead = unsplit["duration_s"] - sum(suites["unsplit"].values())

    def best(tests: dict[str, float]) -> float:
        return overhead + max(sum(tests.values()) / SHARDS, max(tests.values()))

    cases = {}
    for name in [n for n in shas if n != "unsplit"]:
        job = jobs[name]
        cases[name] = {
            "status": job["status"],
            "duration_s": job["duration_s"],
            "run_once_s": round(walls[name], 2),
            "best_s": round(best(suites[name]), 2),
            "over_best": round(job["duration_s"] / best(suites[name]), 3),
            "shards": [{k: s[k] for k in ("index", "status", "duration_s", "tests")} for s in job["shards"]],
            "tests_run": sum(s["tests"]["total"] for s in job["shards"] if s["tests"]),
        }
    result = {
        "tests": len(suite),
        "suite_s": round(sum(suite.values()), 2),
        "slower": {"factor": SLOWER, "tests": sum(1 for n in suite if slowed[n] != suite[n])},
        "host_sequential_s": round(host, 2),
        "overhead_s": round(overhead, 2),
        "unsplit": {
            "status": unsplit["status"],
            "duration_s": unsplit["duration_s"],
            "run_once_s": round(walls["unsplit"], 2),
        },
        "cases": cases,
        "split_over_unsplit": round(cases["as recorded"]["duration_s"] / unsplit["duration_s"], 3),
    }
    save(args.out, result)
    print(
        f"{result['tests']} tests, {result['suite_s']} s of sleeps, uneven; parallelism {SHARDS}; "
        f"host, sequential: {host:.1f} s; unsplit job {unsplit['duration_s']:.1f} s "
        f"(a container's overhead: {overhead:.1f} s)\n"
    )
    goals = {"as recorded": "≤ 1.3", "slower, fixed split": "", "slower, queue": "≤ 1.15", "no history, queue": "≤ 1.3"}
    print("| split 4 ways | the job | best possible | job / best | goal | shards (s) |\n|---|---|---|---|---|---|")
    for name, figures in cases.items():
        spread = ", ".join(f"{s['duration_s']:.1f}" for s in figures["shards"])
        print(
            f"| {name} | {figures['duration_s']:.1f} s | {figures['best_s']:.1f} s | {figures['over_best']:.2f} | "
            f"{goals[name]} | {spread} |"
        )
    print(f"\nsplit as recorded / unsplit: {result['split_over_unsplit']:.2f} (goal ≤ 0.33)")
    passed = unsplit["status"] == "passed" and all(
        c["status"] == "passed" and c["tests_run"] == len(suite) for c in cases.values()
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
