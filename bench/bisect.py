"""Coalescing and bisection under load: 32 commits pushed at once, one of them (in the
middle) breaking the suite, at parallelism 2; every commit tested, against coalescing.

    python bench/bisect.py            # about 2 minutes
    python bench/bisect.py --smoke    # 8 commits

Figures: the time from the start until the newest commit's result, in both modes; the
time until the culprit is named; and the jobs (containers) each mode spent.
"""

from __future__ import annotations

import argparse
import shutil
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

from orchestrator.models import parse_iso  # noqa: E402

SUITE = "import time\n# commit {i}\ndef test_work():\n    time.sleep(1)\n    assert {ok}\n"


def commits(bench: Bench, repo: Path, count: int, bad: int) -> list[str]:
    shas = []
    for i in range(1, count + 1):
        (repo / "tests" / "test_work.py").write_text(SUITE.format(i=i, ok="False" if i >= bad else "True"))
        shas.append(bench.commit(repo, f"c{i}"))
    return shas


def configured(bench: Bench, repo: Path, coalesce: bool) -> Path:
    """A set-up that has tested the root (a passing commit: where a bisection starts from)."""
    config = bench.config(repo, None, parallelism=2)
    data = yaml.safe_load(config.read_text())
    data["repositories"][0]["coalesce"] = coalesce
    config.write_text(yaml.safe_dump(data))
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--once", "-c", str(config)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return config


def run(bench: Bench, config: Path, shas: list[str], bad: int) -> dict:
    began = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--once", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    results = bench.results(config, shas)
    newest = parse_iso(results[-1]["finished_at"]).timestamp() - began
    culprits = [r for r in results if r.get("culprit")]
    pair = [r for r in results[bad - 2 : bad] if r["finished_at"] and r["status"] != "skipped"]
    return {
        # every commit tested: the first failing one can be read off once it and its parent have results
        "boundary_known_s": max(parse_iso(r["finished_at"]).timestamp() for r in pair) - began
        if len(pair) == 2
        else None,
        "exit": proc.returncode,
        "newest_result_s": newest,
        "culprit": culprits[0]["commit"] if culprits else None,
        "culprit_named_s": (parse_iso(culprits[0]["finished_at"]).timestamp() - began) if culprits else None,
        "jobs": sum(r["attempts"] for r in results),
        "skipped": sum(1 for r in results if r["status"] == "skipped"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bisect.json")
    args = parser.parse_args()
    count = 4 if args.smoke else 32  # --smoke: the bisection still has a range of 3 to search
    bad = count // 2 + 1
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-bisect-"))
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        repo = bench.repo("bisect-repo")
        every, coalesced = configured(bench, repo, False), configured(bench, repo, True)
        shas = commits(bench, repo, count, bad)  # pushed at once
        result = {
            "commits": count,
            "bad": shas[bad - 1],
            "bad_index": bad,
            "every_commit": run(bench, every, shas, bad),
            "coalesced": run(bench, coalesced, shas, bad),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    every, co = result["every_commit"], result["coalesced"]
    print(f"{count} commits pushed at once, commit {bad} breaks the suite, parallelism 2\n")
    print("| | every commit | coalesced, then bisected |\n|---|---|---|")
    print(f"| newest commit's result | {every['newest_result_s']:.1f} s | {co['newest_result_s']:.1f} s |")
    print(
        f"| first failing commit known | {every['boundary_known_s']:.1f} s (its result and its parent's) | "
        f"{co['culprit_named_s']:.1f} s, named ({'right' if co['culprit'] == result['bad'] else 'WRONG'}) |"
    )
    print(f"| jobs spent | {every['jobs']} | {co['jobs']} ({co['skipped']} commits skipped) |")
    return 0 if co["culprit"] == result["bad"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
