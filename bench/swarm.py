"""The Swarm figures: the per-job overhead of the Swarm backend against the single-engine
backend on the same workload, and the parallel scaling with two workers, on a real Swarm
made by scripts/swarm-testbed.sh (this host's engine as manager, two workers in network
namespaces, a TLS registry).

    python bench/swarm.py            # about 5 minutes on 2 cores
    python bench/swarm.py --smoke    # a tiny workload
    python bench/swarm.py --registry HOST:PORT   # on the Swarm this engine already manages

Both backends run the same I/O-bound series in one run, the Swarm twice: with an internal
network of its own per job (the default), and with ``swarm_job_networks: false`` (the test
bed's workers run with --bridge=none, so a task without networks has none). Jobs go to the workers only
(node.role==worker); a warm-up job first pushes the runner image's layers and lets each
worker pull them, as any Swarm does once.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Bench  # noqa: E402
from workloads import FULL, SMOKE, save, sh  # noqa: E402

SCRIPT = ROOT / "scripts" / "swarm-testbed.sh"
SWARMS = ("swarm", "swarm, no job networks")  # with a network of its own per job (the default), and without


def measure(bench: Bench, registry: str, parallelism: tuple[int, ...]) -> dict:
    repo = bench.repo("swarm-repo")
    root = sh("git", "rev-parse", "HEAD", cwd=repo)
    shas = bench.io_series(repo)
    swarm = {"backend": "swarm", "registry": registry, "constraints": ["node.role==worker"]}
    warm_up = bench.config(repo, None, **swarm)  # the head only: pushes and pulls the base layers
    bench.orchestrator("run", "--once", config=warm_up)
    out: dict = {"commits": len(shas), "by_parallelism": {}}
    for n in parallelism:
        row = {}
        for backend, keys in (
            ("docker", {}),
            ("swarm", swarm),
            ("swarm, no job networks", {**swarm, "swarm_job_networks": False}),
        ):
            config = bench.config(repo, root, parallelism=n, **keys)
            seconds = bench.orchestrator("run", "--once", config=config)
            results = bench.results(config, shas)
            row[backend] = {
                "seconds": seconds,
                "all_passed": all(r["status"] == "passed" for r in results),
                "nodes": sorted({r.get("node") or "local" for r in results}),
                # per job, the mean of each phase result.json records
                "phases_s": {
                    phase: round(statistics.mean(r["timings"].get(phase, 0.0) for r in results), 3)
                    for phase in sorted({p for r in results for p in r["timings"]})
                },
            }
        out["by_parallelism"][str(n)] = row
    one = out["by_parallelism"][str(parallelism[0])]
    for backend in SWARMS:
        out.setdefault("overhead_ratio", {})[backend] = one[backend]["seconds"] / one["docker"]["seconds"]
        out.setdefault("overhead_per_job_s", {})[backend] = (one[backend]["seconds"] - one["docker"]["seconds"]) / len(
            shas
        )
    return out


def table(result: dict) -> str:
    lines = [
        f"Swarm backend, {result['commits']} I/O-bound commits, two workers",
        "",
        "| parallelism | one engine | Swarm | Swarm / one engine | Swarm, no job networks | its / one engine "
        "| Swarm speed-up over its parallelism 1 | nodes used |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = result["by_parallelism"]
    base = next(iter(rows.values()))["swarm"]["seconds"]
    for n, row in rows.items():
        d, s, bare = row["docker"], row["swarm"], row[SWARMS[1]]
        lines.append(
            f"| {n} | {d['seconds']:.1f} s | {s['seconds']:.1f} s | {s['seconds'] / d['seconds']:.2f}× | "
            f"{bare['seconds']:.1f} s | {bare['seconds'] / d['seconds']:.2f}× | "
            f"{base / s['seconds']:.2f}× | {', '.join(s['nodes'])} |"
        )
    one = next(iter(rows.values()))
    phases = sorted(set().union(*(one[b]["phases_s"] for b in ("docker", *SWARMS))))
    lines += ["", "| per job, parallelism 1 | one engine | Swarm | Swarm, no job networks |", "|---|---|---|---|"]
    for phase in phases:
        cells = " | ".join(f"{one[b]['phases_s'].get(phase, 0.0):.2f} s" for b in ("docker", *SWARMS))
        lines.append(f"| {phase} | {cells} |")
    lines.append("")
    for backend in SWARMS:
        lines.append(
            f"Per-job overhead of {backend} at parallelism 1: {result['overhead_per_job_s'][backend]:+.2f} s "
            f"({result['overhead_ratio'][backend]:.2f}× one engine)."
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "swarm.json")
    parser.add_argument(
        "--registry", help="use the Swarm this engine manages, with this registry, instead of making a test bed"
    )
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-swarm-"))
    bed = work / "testbed"
    try:
        registry = args.registry
        if registry is None:
            up = subprocess.run(["bash", str(SCRIPT), "up", str(bed), "2"], capture_output=True, text=True, timeout=300)
            if up.returncode != 0:
                print(up.stderr, file=sys.stderr)
                return 3
            registry = dict(line.split("=", 1) for line in up.stdout.split())["REGISTRY"]
        result = measure(Bench(work, sizes), registry, (1, 2, 4) if not args.smoke else (1,))
    finally:
        if args.registry is None:
            subprocess.run(["bash", str(SCRIPT), "down", str(bed)], capture_output=True, timeout=300)
        shutil.rmtree(work, ignore_errors=True)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
