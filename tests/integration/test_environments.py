"""Environments on the real engine, with requirements fetched from PyPI at test time:
a src-layout project with a dependency group, reuse and rebuild by fingerprint, one build
for two commits, a dependency that cannot be resolved, pruning."""

from __future__ import annotations

import json
import re
import time
import uuid

import docker
import pytest

from orchestrator.environment.settings import LABEL_ENVIRONMENT
from tests.helpers import SRC_PYPROJECT, TestIndex, http_get, write_config

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("environment_images")]

CODE = 'from packaging.version import Version\n\ndef greet(name):\n    return "hello %s %s" % (name, Version("1.0"))\n'
TESTS = (
    "import pytest\nfrom greet import greet\n\n"
    "def test_greet():\n    assert greet('x') == 'hello x 1.0'\n\n"
    "def test_the_projects_own_pytest_runs():\n    assert int(pytest.__version__.split('.')[0]) >= 9\n\n"
    # the runner image's pytest (8.3) is replaced whole, as an install over it would: one version is left
    "def test_one_pytest_is_installed():\n    from importlib.metadata import distributions\n"
    "    assert [d.version for d in distributions() if d.metadata['Name'] == 'pytest'] == [pytest.__version__]\n\n"
    # compiled once by the build, not in memory by every job
    "def test_the_environment_is_compiled():\n    import os, importlib.util, packaging.version\n"
    "    assert os.path.isfile(importlib.util.cache_from_source(packaging.version.__file__))\n\n"
    "def test_the_commit_is_the_installed_copy():\n    import greet, os\n"
    "    assert os.path.dirname(greet.__file__) == '/ci-out/site/greet'\n"
)


def project(deps: str = '"packaging>=23"', note: str = "") -> dict[str, str]:
    return {
        "pyproject.toml": SRC_PYPROJECT.format(deps=deps),
        "src/greet/__init__.py": CODE + note,
        "tests/test_greet.py": TESTS,
    }


def test_a_src_layout_project_reuses_its_environment_until_its_dependencies_change(orch, engine) -> None:
    first = orch.repo.commit("src layout, dependency group", project())
    orch.configure(runner={"parallelism": 2, "timeout": 120})
    run = orch.cli("run", "--once")
    assert run.returncode == 0, orch.log(first).decode()[-2000:]
    result = orch.result(first)
    assert result["tests"]["passed"] == 5 and result["environment"]["built"] is True
    # the build says how far it got, stage by stage (the job's message: the live view, the dashboard)
    assert re.search(r"building environment: resolving \d+ requirements", run.stderr), run.stderr[-3000:]
    assert "building environment: installing" in run.stderr
    assert result["environment"]["detected"] == [
        "dependency-groups: test",
        "project.dependencies",
        "build-system.requires",
    ]
    assert result["timings"]["environment_s"] > 1
    # the image is the instance's, as its build containers were (what the instance cleans up)
    mine = engine.images.list(filters={"label": [f"orchestrator.instance={orch.instance()}", LABEL_ENVIRONMENT]})
    assert [image.labels[LABEL_ENVIRONMENT] for image in mine] == [result["environment"]["fingerprint"]]
    built_log = orch.path(first, "environment.log").read_text()  # kept for the job that built it
    assert re.search(r"Installed \d+ packages", built_log), built_log
    same = orch.repo.commit("code only", project(note="# a change\n"))
    assert orch.cli("run", "--once").returncode == 0
    again = orch.result(same)
    assert not orch.path(same, "environment.log").exists()
    assert (
        again["environment"]["built"] is False
        and again["environment"]["fingerprint"] == result["environment"]["fingerprint"]
        and again["timings"]["environment_s"] < 1
    )
    two = [
        orch.repo.commit("new dependency", project('"packaging>=23", "iniconfig"')),
        orch.repo.commit("and more code", project('"packaging>=23", "iniconfig"', note="# more\n")),
    ]
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


def test_a_project_on_python_3_13_gets_its_release_wheels_and_packages(orch, environment_images) -> None:
    """The trixie runner image: a compiled cp313 wheel, and a Debian package fetched from
    trixie (not from the host's bookworm) by a private apt tree."""
    sha = orch.repo.commit(
        "3.13",
        {
            "pyproject.toml": SRC_PYPROJECT.format(deps='"pyyaml>=6"'),
            "src/greet/__init__.py": "",
            "tests/test_py313.py": "import shutil, sys, yaml\n\n"
            "def test_python_3_13():\n    assert sys.version_info[:2] == (3, 13)\n\n"
            "def test_a_compiled_cp313_wheel():\n    assert yaml.__with_libyaml__\n\n"
            "def test_a_trixie_package():\n    assert shutil.which('less')\n",
        },
    )
    # a name of this run's own: an environment image of the same declarations left by an
    # earlier run of the suite on this engine would be found, not built (and log nothing)
    orch.configure(
        f"py313-{uuid.uuid4().hex[:8]}",
        runner={"timeout": 300},
        repository={"python": "3.13", "system_packages": ["less"]},
    )
    assert orch.cli("run", "--once", timeout=600).returncode == 0, orch.log(sha).decode()[-2000:]
    result = orch.result(sha)
    assert result["tests"]["passed"] == 3
    assert result["environment"]["python"] == "3.13" and result["environment"]["system_packages"] == ["less"]
    log = orch.path(sha, "environment.log").read_text()
    assert "trixie" in log and "cp313" in log


def test_prune_keeps_the_newest_of_one_repository_and_never_another_s(
    orch, engine: docker.DockerClient, environment_images
) -> None:
    """Repositories of names no other test uses: other tests' environments are not theirs to
    prune. Two repositories that declare the same each have their own image, so that
    pruning one never removes what the other's next job runs in."""
    orch.repo.commit("one", project())
    orch.configure(name="prune-demo", runner={"timeout": 120})
    orch.config_path = write_config(
        orch.dir, {"prune-demo": orch.repo.path, "prune-other": orch.repo.path}, runner={"timeout": 120}
    )
    assert orch.cli("run", "--once").returncode == 0
    newest = orch.repo.commit("two", project('"packaging>=23", "iniconfig"'))
    assert orch.cli("run", "--once").returncode == 0
    pruned = orch.cli("image", "prune", "--keep", "1", "--repo", "prune-demo")
    assert pruned.returncode == 0 and pruned.stdout.count("orchestrator-env/prune-demo:") == 1, pruned.stdout

    def kept(repository: str) -> list[str]:
        found = engine.images.list(filters={"label": f"orchestrator.repository={repository}"})
        return [i.labels[LABEL_ENVIRONMENT] for i in found if LABEL_ENVIRONMENT in i.labels]

    fingerprint = orch.result(newest)["environment"]["fingerprint"]
    assert kept("prune-demo") == [fingerprint]
    assert len(kept("prune-other")) == 2 and fingerprint in kept("prune-other")
    assert {row["commit"] for row in json.loads(orch.cli("status", "--json").stdout)[:2]} == {newest}


def test_an_index_away_is_retried_later_and_a_slow_one_is_cut_at_the_deadline(orch) -> None:
    """A network or index failure is not a verdict on the declarations: nothing is recorded,
    and the next commit with the same ones builds. An index that answers a byte every 3 s
    holds a build no longer than `environments.timeout`."""
    index = TestIndex()
    try:
        index.mode = "down"
        # declarations no other test makes: another worker's environment of the same would be found
        first = orch.repo.commit("index down", project('"packaging>=23", "iniconfig>=1.0"'))
        orch.configure(runner={"timeout": 120}, retries=0, environments={"index_url": f"{index.url}/simple"})
        assert orch.cli("run", "--once").returncode == 1
        result = orch.result(first)
        assert result["status"] == "error" and result["message"].startswith(
            f"gave up after 1 attempts: package index unreachable: {index.url}/simple/"
        ), result["message"]
        assert not list((orch.config.state_dir / "environments").rglob("failed.json"))
        index.mode = "up"
        again = orch.repo.commit("index back", project('"packaging>=23", "iniconfig>=1.0"', note="# x\n"))
        assert orch.cli("run", "--once").returncode == 0, orch.log(again).decode()[-2000:]
        assert orch.result(again)["environment"]["built"] is True

        index.mode = "slow"
        slow = orch.repo.commit("a new dependency, a slow index", project('"packaging>=23", "attrs"'))
        orch.configure(
            runner={"timeout": 120}, retries=0, environments={"index_url": f"{index.url}/simple", "timeout": 6}
        )
        began = time.monotonic()
        assert orch.cli("run", "--once").returncode == 1
        assert time.monotonic() - began < 40
        result = orch.result(slow)
        assert (
            result["status"] == "error"
            and result["message"] == "environment build failed: environment build timed out after 6 s"
        ), result["message"]
    finally:
        index.close()


def test_a_warm_job_whose_build_fails_after_its_release_ends(orch) -> None:
    """At parallelism 1 a short job runs while the next starts warm and builds its
    environment, slowly, until it fails to resolve; the slot frees meanwhile and the warm
    job is claimed. It ends `error`, and run --once says so (it stayed `running`, and the
    run exited 0)."""
    index = TestIndex()
    index.delay = 4
    try:
        short = orch.repo.commit("short", {"tests/test_short.py": "import time\n\ndef test_a():\n    time.sleep(1)\n"})
        orch.repo.checkout("z-broken", create=True)  # queued after main's head
        broken = orch.repo.commit("no such dependency", project('"no-such-package-orchestrator-test==1.0"'))
        orch.configure(
            runner={"parallelism": 1, "warm": 1, "timeout": 60},
            retries=0,
            environments={"index_url": f"{index.url}/simple"},
        )
        run = orch.cli("run", "--once")
        assert run.returncode == 1, run.stderr[-3000:]
        assert orch.result(short)["status"] == "passed"
        result = orch.result(broken)
        assert result["status"] == "error" and "no-such-package-orchestrator-test" in result["message"]
        assert "still running" not in run.stderr
    finally:
        index.close()


def test_an_engine_that_cannot_load_a_layer_gets_the_same_environment_committed(
    tmp_path, engine, runner_image: str
) -> None:
    """The fallback for an engine that refuses a lone layer (the containerd image store), on
    the real engine: a root container removes what the layer replaces, puts its files in
    place, and is committed. The image runs the declared packages, one pytest, nothing setuid."""
    from orchestrator.backends.engine import Engine
    from orchestrator.environment.build import Environments
    from orchestrator.environment.needs import detect
    from orchestrator.environment.sandbox import Limits
    from orchestrator.environment.settings import Settings

    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(SRC_PYPROJECT.format(deps='"packaging>=23", "iniconfig>=2.0"'))
    ours = Engine()
    instance = f"fallback-{time.monotonic_ns()}"
    settings = Settings(None, (), 300, 1 << 30, Limits("512m", 1.0, 256), "1000:1000", instance)
    environments = Environments(tmp_path / "state", ours, settings)
    environments._loads = False  # as after the engine refused a load
    try:
        built = environments.ensure("fallback-demo", detect(src), ours.image(runner_image), "3.11")
        assert built.built and engine.images.get(built.image.id).labels["orchestrator.instance"] == instance
        check = (
            "import packaging, iniconfig, pytest, os\n"
            "from importlib.metadata import distributions\n"
            "assert [d.version for d in distributions() if d.metadata['Name'] == 'pytest'] == [pytest.__version__]\n"
            "assert int(pytest.__version__.split('.')[0]) >= 9\n"
            "print('ok', pytest.__version__)\n"
        )
        out = engine.containers.run(
            built.image.id, entrypoint=["python3", "-c", check], network_mode="none", remove=True
        )
        assert out.decode().startswith("ok 9"), out
        setuid = engine.containers.run(
            built.image.id, entrypoint=["sh", "-c", "find / -xdev -perm /6000 -type f"], remove=True, user="0"
        )
        assert setuid.strip() == b""
    finally:
        for image in engine.images.list(filters={"label": f"orchestrator.instance={instance}"}):
            engine.images.remove(image.id, force=True)
        ours.close()
