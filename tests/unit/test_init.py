"""``orchestrator init``: a config a newcomer can run as it is, written from what a real
repository declares, and never over a file that exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator import pythons
from orchestrator.config import load_config
from tests.helpers import PASSING, GitRepo

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "greet"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = ["packaging>=23"]

[dependency-groups]
test = ["pytest>=8.4", "pytest-timeout"]
"""


def init(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "init", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def test_it_writes_what_the_default_branch_declares(tmp_path: Path) -> None:
    project = GitRepo(tmp_path / "Greet Project", branch="trunk")
    head = project.commit("first", {**PASSING, "pyproject.toml": PYPROJECT})
    project.checkout("feature/x", create=True)
    project.commit("on a branch")
    project.checkout("trunk")
    made = init(project.path, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "orchestrator image build" in made.stdout and "orchestrator run --once" in made.stdout

    text = (tmp_path / "config.yaml").read_text()
    config = load_config(tmp_path / "config.yaml")
    (repo,) = config.repositories
    assert repo.name == "greet-project" and repo.url == str(project.path)
    assert repo.branches == ["trunk"] and repo.tracks("trunk") and not repo.tracks("feature/x")
    assert "feature/x" in text  # the other branches, named in a comment
    assert repo.python == [n for n in pythons.allowed_by(">=3.12")] and "3.11" not in repo.python
    assert f"trunk at {head[:12]}" in text
    for requirement in ("hatchling", "packaging>=23", "pytest-timeout", "pytest>=8.4"):
        assert requirement in text
    assert "dependency-groups: test" in text
    assert repo.command is None  # tests/ is there: the default command
    assert config.runner.parallelism == 2 and config.state_dir == tmp_path / ".orchestrator"


def test_it_never_overwrites_a_file(tmp_path: Path) -> None:
    project = GitRepo(tmp_path / "p")
    project.commit("first", PASSING)
    (tmp_path / "config.yaml").write_text("mine\n")
    refused = init(project.path, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "never overwrites" in refused.stderr
    assert (tmp_path / "config.yaml").read_text() == "mine\n"
    elsewhere = init(project.path, "-c", "ci/other.yaml", cwd=tmp_path)
    assert elsewhere.returncode == 0 and "-c ci/other.yaml" in elsewhere.stdout
    assert load_config(tmp_path / "ci" / "other.yaml").repositories[0].name == "p"


def test_without_a_tests_folder_pytest_finds_them_itself_and_a_python_is_chosen(tmp_path: Path) -> None:
    project = GitRepo(tmp_path / "flat")
    project.commit("first", {"test_it.py": "def test_it():\n    pass\n"})
    assert init(project.path, cwd=tmp_path).returncode == 0
    (repo,) = load_config(tmp_path / "config.yaml").repositories
    assert repo.command == "python -m pytest"
    assert repo.python == pythons.DEFAULT  # no requires-python: the default alone
    assert "no requires-python" in (tmp_path / "config.yaml").read_text()


def test_declarations_the_jobs_would_refuse_are_said_not_hidden(tmp_path: Path) -> None:
    project = GitRepo(tmp_path / "p")
    project.commit("first", {**PASSING, "requirements.txt": "--extra-index-url http://example.invalid/simple\n"})
    assert init(project.path, cwd=tmp_path).returncode == 0
    text = (tmp_path / "config.yaml").read_text()
    assert "would refuse" in text and "a pip option" in text
    load_config(tmp_path / "config.yaml")


def test_what_is_not_a_repository_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    cases = {
        str(tmp_path / "plain"): (3, "cannot read"),
        str(tmp_path / "missing"): (2, "no such folder"),
        "ext::sh -c touch% /tmp/pwned": (2, "transport helpers"),
    }
    for source, (code, said) in cases.items():
        done = init(source, cwd=tmp_path)
        assert done.returncode == code and said in done.stderr, (source, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    empty = GitRepo(tmp_path / "empty")
    done = init(empty.path, cwd=tmp_path)
    assert done.returncode == 3 and "no branches yet" in done.stderr
    assert not (tmp_path / "config.yaml").exists()
