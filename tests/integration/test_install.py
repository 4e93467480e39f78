"""The orchestrator as a user installs it: a wheel of this checkout, in a fresh virtual
environment with no test extras, used from an empty folder outside the checkout. An import
the wheel does not declare, or a data file it does not ship, fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import yaml
from uv import find_uv_bin

from tests.helpers import PASSING, GitRepo

CHECKOUT = Path(__file__).resolve().parents[2]
LOCAL = (".git", "*.egg-info", "build", "dist", "__pycache__", ".orchestrator", "test_results", "demo-repo", ".*_cache")
IMAGE = "orchestrator-install-test:latest"  # not the suite's ci-runner: the other worker runs jobs in it


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command as a user types it: nothing of this checkout on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a virtual environment holding the wheel and its declared
    dependencies alone."""
    where = tmp_path_factory.mktemp("install")
    source = where / "source"  # a copy: setuptools builds in the tree it is given
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=shutil.ignore_patterns(*LOCAL))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", where / "dist", source, cwd=where)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (where / "dist").glob("orchestrator-*.whl")
    made = run(sys.executable, "-m", "venv", where / "venv", cwd=where)
    assert made.returncode == 0, made.stderr[-2000:]
    bin_ = where / "venv" / "bin"
    # uv (a dependency of the orchestrator) installs it as pip would, in a fraction of the time
    done = run(find_uv_bin(), "pip", "install", "--quiet", "--python", bin_ / "python", wheel, cwd=where, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return bin_


def test_every_module_of_the_wheel_imports_with_only_its_declared_dependencies(installed: Path, tmp_path: Path) -> None:
    listed = run(installed / "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"pytest", "selenium", "schemathesis", "ruff", "mypy"}, "test tools came in"
    # the host imports the protocol of runner_image/; its other modules run in the container
    walk = f"""
import importlib, io, pkgutil, tempfile, pathlib, orchestrator, runner_image.orchestrator_protocol
assert {str(CHECKOUT)!r} not in orchestrator.__file__, orchestrator.__file__
for module in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
from orchestrator.backends import runner_images
runner_images.resource("bootstrap-base.sh")
with tempfile.TemporaryDirectory() as empty:
    runner_images.context(pathlib.Path(empty), io.BytesIO())
assert importlib.resources.files("orchestrator.web").joinpath("templates", "job.html").is_file()
"""
    imported = run(installed / "python", "-c", walk, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr[-3000:]
    helped = run(installed / "orchestrator", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "init" in helped.stdout, helped.stderr


@pytest.mark.docker
def test_from_init_to_a_tested_commit_in_an_empty_folder(
    installed: Path, tmp_path: Path, runner_image: str, engine: docker.DockerClient
) -> None:
    project = GitRepo(tmp_path / "myproject")
    sha = project.commit("first", PASSING)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    orchestrator = installed / "orchestrator"

    made = run(orchestrator, "init", project.path, cwd=folder)
    assert made.returncode == 0, made.stderr
    assert "orchestrator image build" in made.stdout
    again = run(orchestrator, "init", project.path, cwd=folder)
    assert again.returncode == 2 and "never overwrites" in again.stderr

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["repositories"][0]["branches"] == ["main"]
    config["runner"]["image"] = IMAGE
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        built = run(orchestrator, "image", "build", cwd=folder, timeout=900)
        assert built.returncode == 0, built.stderr[-3000:]
        ran = run(orchestrator, "run", "--once", cwd=folder)
        assert ran.returncode == 0, ran.stderr[-3000:]
        result = json.loads((folder / "test_results" / "myproject" / sha / "result.json").read_text())
        assert result["status"] == "passed" and result["tests"]["passed"] == 1
        assert result["image"]["tag"] == IMAGE
    finally:
        try:
            engine.images.remove(IMAGE)  # the tag: the image itself is the suite's runner image's
        except docker.errors.ImageNotFound:
            pass
