"""Environments on the real engine, with requirements fetched from PyPI at test time:
a src-layout project with a dependency group, reuse and rebuild by fingerprint, one build
for two commits, a dependency that cannot be resolved, pruning."""

from __future__ import annotations

import json
import re

import docker
import pytest

from orchestrator.environment.build import LABEL_ENVIRONMENT
from tests.helpers import SRC_PYPROJECT, http_get

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("environment_images")]

CODE = 'from packaging.version import Version\n\ndef greet(name):\n    return "hello %s %s" % (name, Version("1.0"))\n'
TESTS = ("import pytest\nfrom greet import greet\n\n"
         "def test_greet():\n    assert greet('x') == 'hello x 1.0'\n\n"
         "def test_the_projects_own_pytest_runs():\n    assert int(pytest.__version__.split('.')[0]) >= 9\n\n"
         "def test_the_commit_is_the_installed_copy():\n    import greet, os\n"
         "    assert os.path.dirname(greet.__file__) == '/ci-out/site/greet'\n")


def project(deps: str = '"packaging>=23"', note: str = "") -> dict[str, str]:
    return {"pyproject.toml": SRC_PYPROJECT.format(deps=deps), "src/greet/__init__.py": CODE + note,
            "tests/test_greet.py": TESTS}


def test_a_src_layout_project_reuses_its_environment_until_its_dependencies_change(orch) -> None:
    first = orch.repo.commit("src layout, dependency group", project())
    orch.configure(runner={"parallelism": 2, "timeout": 120})
    run = orch.cli("run", "--once")
    assert run.returncode == 0, orch.log(first).decode()[-2000:]
    result = orch.result(first)
    assert result["tests"]["passed"] == 3 and result["environment"]["built"] is True
    # the build says how far it got, stage by stage (the job's message: the live view, the dashboard)
    assert re.search(r"building environment: resolving \d+ requirements", run.stderr), run.stderr[-3000:]
    assert "building environment: installing" in run.stderr
    assert result["environment"]["detected"] == ["dependency-groups: test", "project.dependencies",
                                                 "build-system.requires"]
    assert result["timings"]["environment_s"] > 1
    assert "Successfully installed" in orch.path(first, "environment.log").read_text()  # the job that built it
    same = orch.repo.commit("code only", project(note="# a change\n"))
    assert orch.cli("run", "--once").returncode == 0
    again = orch.result(same)
    assert not orch.path(same, "environment.log").exists()
    assert again["environment"]["built"] is False and again["environment"]["fingerprint"] == \
        result["environment"]["fingerprint"] and again["timings"]["environment_s"] < 1
    two = [orch.repo.commit("new dependency", project('"packaging>=23", "iniconfig"')),
           orch.repo.commit("and more code", project('"packaging>=23", "iniconfig"', note="# more\n"))]
    assert orch.cli("run", "--once").returncode == 0
    built = [orch.result(sha)["environment"] for sha in two]
    assert built[0]["fingerprint"] == built[1]["fingerprint"] != result["environment"]["fingerprint"]
    assert sorted(b["built"] for b in built) == [False, True]  # two commits, one build


def test_a_dependency_that_cannot_be_resolved_is_an_error_with_its_log(orch) -> None:
    bad = orch.repo.commit("typo", project('"no-such-package-orchestrator-test==1.0"'))
    orch.configure(runner={"timeout": 120})
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(bad)
    assert result["status"] == "error" and result["attempts"] == 1  # never retried
    assert result["message"].startswith("environment build failed: ")
    assert "no-such-package-orchestrator-test" in result["message"]
    assert b"no-such-package-orchestrator-test" in orch.path(bad, "environment.log").read_bytes()
    dispatcher = orch.start("dispatcher")  # the job page links the log, and the API serves it
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    page = orch.wait_for(lambda: http_get(f"{base}/jobs/{result['id']}"), timeout=30)
    assert f"/api/jobs/{result['id']}/environment.log" in page.text
    assert "no-such-package-orchestrator-test" in http_get(f"{base}/api/jobs/{result['id']}/environment.log").text
    dispatcher.terminate()
    assert dispatcher.wait(timeout=30) == 0
    again = orch.repo.commit("same dependencies", project('"no-such-package-orchestrator-test==1.0"', note="# x\n"))
    assert orch.cli("run", "--once").returncode == 1
    assert orch.result(again)["message"] == result["message"]  # the recorded failure, not a new try
    assert orch.result(again)["timings"]["environment_s"] < 1


def test_a_project_on_python_3_13_gets_its_release_wheels_and_packages(orch) -> None:
    """The trixie runner image: a compiled cp313 wheel, and a Debian package fetched from
    trixie (not from the host's bookworm) by a private apt tree."""
    sha = orch.repo.commit("3.13", {
        "pyproject.toml": SRC_PYPROJECT.format(deps='"pyyaml>=6"'), "src/greet/__init__.py": "",
        "tests/test_py313.py": "import shutil, sys, yaml\n\n"
                               "def test_python_3_13():\n    assert sys.version_info[:2] == (3, 13)\n\n"
                               "def test_a_compiled_cp313_wheel():\n    assert yaml.__with_libyaml__\n\n"
                               "def test_a_trixie_package():\n    assert shutil.which('less')\n"})
    orch.configure(runner={"timeout": 300}, repository={"python": "3.13", "system_packages": ["less"]})
    assert orch.cli("run", "--once", timeout=600).returncode == 0, orch.log(sha).decode()[-2000:]
    result = orch.result(sha)
    assert result["tests"]["passed"] == 3
    assert result["environment"]["python"] == "3.13" and result["environment"]["system_packages"] == ["less"]
    log = orch.path(sha, "environment.log").read_text()
    assert "trixie" in log and "cp313" in log


def test_prune_keeps_the_newest(orch, engine: docker.DockerClient) -> None:
    for image in engine.images.list(filters={"label": "orchestrator.repository=demo"}):   # other tests' "demo"
        engine.images.remove(image.id, force=True)
    orch.repo.commit("one", project())
    orch.configure(runner={"timeout": 120})
    assert orch.cli("run", "--once").returncode == 0
    newest = orch.repo.commit("two", project('"packaging>=23", "iniconfig"'))
    assert orch.cli("run", "--once").returncode == 0
    pruned = orch.cli("image", "prune", "--keep", "1")
    assert pruned.returncode == 0 and pruned.stdout.count("orchestrator-env/demo:") == 1
    left = [i for i in engine.images.list(filters={"label": "orchestrator.repository=demo"})
            if LABEL_ENVIRONMENT in i.labels]
    assert [i.labels[LABEL_ENVIRONMENT] for i in left] == [orch.result(newest)["environment"]["fingerprint"]]
    assert json.loads(orch.cli("status", "--json").stdout)[0]["commit"] == newest

