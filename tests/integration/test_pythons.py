"""Every commit on every Python the project supports: real runner images of bookworm,
trixie and forky (3.11, 3.13, 3.14, 3.15, PyPy), real containers, real commits."""

from __future__ import annotations

import json
import signal

import pytest

pytestmark = pytest.mark.docker

AUTO_PROJECT = {
    "pyproject.toml": '[project]\nname = "matrixdemo"\nversion = "1.0"\nrequires-python = ">=3.11"\n',
    "tests/test_versions.py": (
        "import sys\n\n"
        "def test_everywhere():\n    assert sys.version_info >= (3, 11)\n\n"
        "def test_not_on_the_newest():\n    assert sys.version_info < (3, 14), 'broke on 3.14'\n"
    ),
}


def _variant(orch, sha: str, name: str) -> dict:
    return json.loads(orch.path(sha, f"{name}/result.json").read_text())


def test_auto_runs_each_python_requires_python_allows_and_the_commit_is_the_worst(orch, matrix_runners) -> None:
    sha = orch.repo.commit("fails on 3.14 and later", AUTO_PROJECT)
    orch.configure(runner={"parallelism": 3}, repository={"python": "auto"})
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]  # a variant failed

    summary = orch.result(sha)
    assert summary["status"] == "failed"
    by_python = {v["python"]: v for v in summary["variants"]}
    assert list(by_python) == ["3.11", "3.13", "3.14", "3.15"]
    assert {p: v["status"] for p, v in by_python.items()} == {
        "3.11": "passed",
        "3.13": "passed",
        "3.14": "failed",
        "3.15": "failed",
    }
    assert by_python["3.14"]["tests"]["failed"] == 1 and by_python["3.11"]["tests"]["passed"] == 2
    for name, variant in by_python.items():
        own = _variant(orch, sha, variant["folder"])
        assert variant["folder"] == f"py{name}" and own["python"] == name and own["id"] == variant["id"]
        assert orch.path(sha, f"py{name}/output.log").is_file() and orch.path(sha, f"py{name}/junit.xml").is_file()
    newest_log = orch.path(sha, "py3.15/output.log").read_text()
    assert "broke on 3.14" in newest_log and "does not exist" not in newest_log  # no word of a missing folder

    status = orch.cli("status")
    rows = [line for line in status.stdout.splitlines() if sha[:10] in line]
    assert len(rows) == 1 and "failed" in rows[0] and rows[0].count("passed") == 2, status.stdout  # a cell each

    first_failing = orch.cli("logs", sha[:12])  # no --python: the first variant that failed
    assert first_failing.returncode == 0 and first_failing.stdout == orch.path(sha, "py3.14/output.log").read_text()
    assert "broke on 3.14" not in orch.cli("logs", sha[:12], "--python", "3.13").stdout
    unknown = orch.cli("logs", sha[:12], "--python", "3.12")
    assert unknown.returncode == 2 and "not offered" in unknown.stderr and unknown.stderr.count("\n") == 1

    before = {name: _variant(orch, sha, f"py{name}")["attempts"] for name in ("3.13", "3.14")}
    retried = orch.cli("retry", sha[:12], "--python", "3.14")
    assert retried.returncode == 0 and retried.stdout.count("queued job") == 1 and "Python 3.14" in retried.stdout
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    again = _variant(orch, sha, "py3.14")  # a new attempt of 3.14 alone (an infrastructure retry may add one)
    assert again["attempts"] > before["3.14"], again["attempt_history"]
    assert _variant(orch, sha, "py3.13")["attempts"] == before["3.13"]
    assert orch.result(sha)["status"] == "failed"


def test_pypy_listed_by_name_runs_on_pypy(orch, matrix_runners) -> None:
    sha = orch.repo.commit(
        "pypy",
        {
            "tests/test_impl.py": "import platform, sys\n\n"
            "def test_pypy():\n    assert platform.python_implementation() == 'PyPy'\n"
            "    assert sys.version_info[:2] == (3, 11)\n",
        },
    )
    orch.configure(repository={"python": ["pypy3"]})
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 0, orch.path(sha, "pypy3.11/output.log").read_text()[-2000:]
    assert orch.result(sha)["variants"] == [
        {
            "python": "pypy3.11",
            "id": 1,
            "status": "passed",
            "tests": {"total": 1, "passed": 1, "failed": 0, "errors": 0, "skipped": 0, "quarantined": 0},
            "folder": "pypy3.11",
        }
    ]
    assert _variant(orch, sha, "pypy3.11")["image"]["tag"] == "ci-runner:pypy3.11"


def test_a_dependency_without_a_wheel_for_one_python_is_that_variant_s_error_alone(
    orch, matrix_runners, environment_images
) -> None:
    """PyYAML 6.0.1 has wheels up to CPython 3.12: 3.11 installs it, 3.14 cannot."""
    sha = orch.repo.commit(
        "old pin",
        {
            "requirements.txt": "pyyaml==6.0.1\n",
            "tests/test_yaml.py": "import yaml\n\ndef test_yaml():\n    assert yaml.safe_load('a: 1') == {'a': 1}\n",
        },
    )
    orch.configure(runner={"timeout": 300}, repository={"python": ["3.11", "3.14"]})
    assert orch.cli("run", "--once", timeout=600).returncode == 1
    assert _variant(orch, sha, "py3.11")["status"] == "passed"
    broken = _variant(orch, sha, "py3.14")
    assert broken["status"] == "error"
    assert "pyyaml==6.0.1" in broken["message"].lower() and "Python 3.14" in broken["message"], broken["message"]
    assert orch.result(sha)["status"] == "error"


def test_kill_9_while_two_variants_run_readopts_both(orch, matrix_runners) -> None:
    sha = orch.repo.commit(
        "slow",
        {"tests/test_slow.py": "import time\n\ndef test_slow():\n    time.sleep(5)\n"},
    )
    orch.configure(runner={"parallelism": 2, "warm": 0}, repository={"python": ["3.11", "3.14"]})
    run = orch.start("run")

    def running() -> dict[str, str]:
        jobs = json.loads(orch.cli("status", "--json").stdout or "[]")
        return {j["python"]: j["container"] for j in jobs if j["status"] == "running" and j["container"]}

    seen = orch.wait_for(lambda: running() if len(running()) == 2 else None, timeout=120)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    restarted = orch.cli("run", "--once", timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "re-attached" in restarted.stderr
    for name in ("3.11", "3.14"):
        result = _variant(orch, sha, f"py{name}")
        assert result["status"] == "passed" and result["attempts"] == 1 and result["container"] == seen[name]
    assert orch.result(sha)["status"] == "passed"
    assert orch.containers() == []


@pytest.mark.usefixtures("environment_images")
def test_a_real_project_passes_on_every_python_its_requires_python_allows(orch, matrix_runners, tmp_path) -> None:
    """Each variant builds its own environment (its interpreter's wheels) and runs every test
    the host collects with none failing; the host has only its own Python, so the variant on
    that one must pass exactly as many as the host's fresh virtual environment (pluggy: its
    version from a Git tag, a dependency of pytest itself; test_real_projects.py runs the rest)."""
    import shutil
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.test_real_projects import ON_EVERY_PYTHON, PROJECTS, host_counts, outcomes, sdist

    project = next(p for p in PROJECTS if p.name == ON_EVERY_PYTHON)
    source = sdist(project, tmp_path / "sdist")
    shutil.copytree(source, orch.repo.path, dirs_exist_ok=True)
    sha = orch.repo.commit(f"{project.name} {project.version}")
    if project.tag:
        orch.repo.git("tag", project.version)
    orch.configure(
        project.name,
        runner={"timeout": 600, "memory": "1g", "pids": 512, "parallelism": 2},
        repository={**project.repository, "python": "auto"},
    )
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(host_counts, source, project, tmp_path / "venv")
        run = orch.cli("run", "--once", timeout=1200)
        host = reference.result(timeout=900)
    summary = orch.result(sha)
    assert [v["python"] for v in summary["variants"]] == ["3.11", "3.13", "3.14", "3.15"], summary
    assert summary["status"] == "passed", (summary, run.stderr[-2000:])
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for variant in summary["variants"]:
        result = _variant(orch, sha, variant["folder"])
        log = orch.path(sha, f"{variant['folder']}/output.log").read_text()
        assert result["environment"]["python"] == variant["python"] and f"Python {variant['python']}." in log
        ours = outcomes(orch.path(sha, f"{variant['folder']}/junit.xml").read_bytes())
        assert ours["total"] == host["total"] > 10 and result["tests"]["failed"] == 0, variant
        if variant["python"] == here:
            assert ours["passed"] == host["passed"] + project.as_uid_1000
