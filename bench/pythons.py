"""Every commit on several Pythons: what a matrix costs over one Python.

    python bench/pythons.py            # about 4 minutes (with the forky base rebuilt: 6)
    python bench/pythons.py --smoke    # under a minute, no base rebuild

Figures, all from this one run:

- the I/O-bound series (bench/workloads.py) on one Python at parallelism 1, and on three
  Pythons (3.11, 3.13, 3.14) at parallelism 3: the matrix's time over the single one's
  (goal <= 1.25: three times the jobs, three times the slots);
- a src-layout project whose environment is reused, against the same suite with no
  declarations, on the three Pythons at parallelism 1: the extra seconds per variant per
  commit (goal <= +0.5 s);
- the first build of each variant's environment (from that project's first commit), and,
  unless --smoke or --keep-base, the first build of the forky base (debootstrap) and the
  three runner images on it, as on a machine that has none of them (their tags removed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import environments  # noqa: E402
from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, save, sh  # noqa: E402

MATRIX = ["3.11", "3.13", "3.14"]


def with_python(config: Path, python: object) -> Path:
    data = yaml.safe_load(config.read_text())
    data["repositories"][0]["python"] = python
    config.write_text(yaml.safe_dump(data))
    return config


def results(config: Path, sha: str) -> list[dict]:
    """A commit's result files: its one, or each variant's."""
    data = yaml.safe_load(config.read_text())
    folder = Path(data["results_dir"]) / data["repositories"][0]["name"] / sha
    summary = json.loads((folder / "result.json").read_text())
    if "variants" not in summary:
        return [summary]
    return [json.loads((folder / v["folder"] / "result.json").read_text()) for v in summary["variants"]]


def matrix(bench: Bench) -> dict:
    repo = bench.repo("matrix")
    root = sh("git", "rev-parse", "HEAD", cwd=repo)
    shas = bench.io_series(repo)
    out = {}
    for label, python, parallelism in (("one", "3.11", 1), ("matrix", MATRIX, len(MATRIX))):
        config = with_python(bench.config(repo, root, parallelism=parallelism), python)
        took = bench.orchestrator("run", "--once", config=config)
        ended = [r for sha in shas for r in results(config, sha)]
        out[label] = {
            "pythons": python if isinstance(python, list) else [python],
            "parallelism": parallelism,
            "jobs": len(ended),
            "seconds": took,
            "all_passed": all(r["status"] == "passed" for r in ended),
        }
    out["ratio"] = out["matrix"]["seconds"] / out["one"]["seconds"]
    return out


def reuse(bench: Bench) -> dict:
    """Per variant and commit, what a reused environment costs; and each variant's first build."""
    commits = bench.sizes.commits
    flat, src = bench.work / "py-flat", bench.work / "py-src"
    first_build: dict[str, float] = {}
    for path, layout in ((flat, "flat"), (src, "src")):
        sh("git", "init", "-q", "-b", "main", str(path))
        for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
            sh("git", "config", key, value, cwd=path)
        environments._write(path, layout, 0, '"packaging>=23", "iniconfig"')
        root = bench.commit(path, "root")
        if layout == "src":  # the environments exist before the series, as after the first commit
            config = with_python(bench.config(path, None, name="bench-env", timeout=600, parallelism=3), MATRIX)
            bench.orchestrator("run", "--once", config=config)
            first_build = {r["python"]: r["timings"]["environment_s"] for r in results(config, root)}
    series: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}
    for path, layout in ((flat, "flat"), (src, "src")):
        root = sh("git", "rev-parse", "HEAD", cwd=path)
        shas = []
        for i in range(1, commits + 1):
            environments._write(path, layout, i, '"packaging>=23", "iniconfig"')
            shas.append(bench.commit(path, f"{layout} {i}"))
        config = with_python(bench.config(path, root, name="bench-env", timeout=600), MATRIX)
        series[layout] = bench.orchestrator("run", "--once", config=config)
        ended = [r for sha in shas for r in results(config, sha)]
        assert all(r["status"] == "passed" for r in ended), [r["message"] for r in ended]
        for python in MATRIX:  # where a variant's time goes: each phase's mean
            mine = [r["timings"] for r in ended if r["python"] == python]
            phases[f"{layout} {python}"] = {k: round(sum(t.get(k, 0) for t in mine) / len(mine), 3) for k in mine[0]}
    jobs = commits * len(MATRIX)
    return {
        "commits": commits,
        "pythons": MATRIX,
        "flat_s": series["flat"],
        "src_s": series["src"],
        "per_variant_commit_extra_s": (series["src"] - series["flat"]) / jobs,
        "first_environment_build_s": first_build,
        "phases_s": phases,
    }


def first_forky_build() -> dict:
    """The forky base (debootstrap) and the runner images of its three Pythons, as on a
    machine that has none of them: their tags are removed first (the default Python's
    runner image stays, cached)."""
    client = docker.from_env()
    for image in client.images.list(filters={"label": "orchestrator.base=orchestrator-base:forky-r2"}):
        for tag in image.tags:
            if tag.startswith(("orchestrator-base:forky-", "ci-runner:py3.14", "ci-runner:py3.15", "ci-runner:pypy")):
                client.images.remove(tag)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-base-"))
    try:
        (work / "repo").mkdir()
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {"repositories": [{"name": "demo", "url": str(work / "repo")}], "state_dir": str(work / "state")}
            )
        )
        began = time.perf_counter()
        built = subprocess.run(
            [sys.executable, "-m", "orchestrator", "image", "build", "-c", str(config)]
            + [arg for p in ("3.14", "3.15", "pypy3") for arg in ("--python", p)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        took = time.perf_counter() - began
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": took, "ok": built.returncode == 0, "last_line": (built.stdout.strip().splitlines() or [""])[-1]}


def table(result: dict) -> str:
    m, r = result["matrix"], result["reuse"]
    lines = [
        f"several Pythons, {result['date']}",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
        f"| I/O-bound series on {', '.join(m['matrix']['pythons'])} at parallelism {m['matrix']['parallelism']} "
        f"({m['matrix']['jobs']} jobs) over one Python at parallelism 1 ({m['one']['jobs']} jobs) | "
        f"{m['ratio']:.2f}× ({m['matrix']['seconds']:.1f} s vs {m['one']['seconds']:.1f} s) | ≤ 1.25 |",
        f"| environment reused, per variant and commit ({r['commits']} commits × {len(r['pythons'])} Pythons, "
        f"parallelism 1) | {r['per_variant_commit_extra_s']:+.2f} s over no declarations "
        f"({r['src_s']:.1f} s vs {r['flat_s']:.1f} s) | ≤ +0.5 s |",
        *(
            f"| first environment build on Python {python} | {seconds:.1f} s | |"
            for python, seconds in r["first_environment_build_s"].items()
        ),
    ]
    if result.get("base"):
        b = result["base"]
        lines.append(
            "| first build of the forky base (debootstrap) and the 3.14, 3.15, PyPy runner images | "
            f"{b['seconds']:.0f} s "
            f"({'built' if b['ok'] else 'failed: ' + b['last_line']}) | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--keep-base", action="store_true", help="do not build the forky base again")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "pythons.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    try:
        bench = Bench(work, SMOKE if args.smoke else FULL)
        result = {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke}
        result["matrix"] = matrix(bench)
        result["reuse"] = reuse(bench)
        if not (args.smoke or args.keep_base):
            result["base"] = first_forky_build()
    finally:
        environments.remove_images()
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
