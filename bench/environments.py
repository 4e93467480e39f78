"""The environment figures of the benchmark: what a commit costs when its environment is
reused (a pure-Python src-layout project against the same suite with no environment), and
how long a cold environment build takes, with a small dependency set and with numpy: on a
fresh state_dir, and again for a new fingerprint of the same packages (the wheels kept)."""

from __future__ import annotations

import json
from pathlib import Path

import docker
from workloads import Workloads, sh

from tests.helpers import SRC_PYPROJECT

CODE = "def greet(name):\n    return 'hello ' + name  # {i}\n"
TESTS = "".join(
    f"def test_greet_{t}():\n    from greet import greet\n    assert greet('x') == 'hello x'\n" for t in range(20)
)


def measure(bench: Workloads, run, again: bool = True) -> dict:
    """``run(config) -> seconds`` runs `orchestrator run --once` on a config; ``again``: each
    cold build is followed by one of a new fingerprint of the same packages (a smoke run, which
    only keeps the script working, leaves that second build of the same code out)."""
    commits = bench.sizes.commits
    flat, src = bench.work / "env-flat", bench.work / "env-src"
    for path, layout in ((flat, "flat"), (src, "src")):
        sh("git", "init", "-q", "-b", "main", str(path))
        for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
            sh("git", "config", key, value, cwd=path)
        _write(path, layout, 0, '"packaging>=23"')
        root = bench.commit(path, "root")
        if layout == "src":  # the environment exists before the series, as it would after the first commit
            run(bench.config(path, None, name="bench-env", timeout=600), build=True)
    series = {}
    for path, layout in ((flat, "flat"), (src, "src")):
        root = sh("git", "rev-parse", "HEAD", cwd=path)
        shas = []
        for i in range(1, commits + 1):
            _write(path, layout, i, '"packaging>=23"')
            shas.append(bench.commit(path, f"{layout} {i}"))
        config = bench.config(path, root, name="bench-env", timeout=600)
        series[layout] = run(config)
        results = [json.loads((_results(config) / sha / "result.json").read_text()) for sha in shas]
        assert all(r["status"] == "passed" for r in results), [r["message"] for r in results]
    cold = {}
    for label, deps in (("small", '"packaging>=23"'), ("numpy", '"numpy>=1.26"'))[: 2 if bench.sizes.numpy else 1]:
        path = bench.work / f"env-cold-{label}"
        sh("git", "init", "-q", "-b", "main", str(path))
        for key, value in (("user.email", "bench@example.invalid"), ("user.name", "bench")):
            sh("git", "config", key, value, cwd=path)
        _write(path, "src", 0, deps + ', "iniconfig"')  # a fingerprint no earlier run has built
        sha = bench.commit(path, label)
        config = bench.config(path, None, name="bench-env", timeout=900)
        run(config, build=True)
        result = json.loads((_results(config) / sha / "result.json").read_text())
        cold[label] = result["timings"]["environment_s"]
        if not again:
            continue
        # a new fingerprint of the same packages on a machine that has built before (its wheels kept)
        _write(path, "src", 1, deps + ', "iniconfig>=1"')
        sha = bench.commit(path, f"{label}, again")
        run(config, build=True)
        result = json.loads((_results(config) / sha / "result.json").read_text())
        cold[f"{label}_again"] = result["timings"]["environment_s"]
    return {
        "commits": commits,
        "flat_s": series["flat"],
        "src_s": series["src"],
        "per_commit_extra_s": (series["src"] - series["flat"]) / commits,
        "cold_build_s": cold,
    }


def remove_images() -> None:
    client = docker.from_env()
    for image in client.images.list(filters={"label": "orchestrator.repository=bench-env"}):
        client.images.remove(image.id, force=True)


def _write(path: Path, layout: str, i: int, deps: str) -> None:
    package = path / ("src/greet" if layout == "src" else "greet")
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(CODE.format(i=i))
    (path / "tests").mkdir(exist_ok=True)
    (path / "tests" / "test_greet.py").write_text(TESTS)
    if layout == "src":
        (path / "pyproject.toml").write_text(SRC_PYPROJECT.format(deps=deps))


def _results(config: Path) -> Path:
    from orchestrator.config import load_config

    return load_config(config).results_dir / "bench-env"
