"""Real public projects, fetched from PyPI at test time into a cache (never committed):
each sdist becomes a Git repository, is tested in its container with its environment, and
must pass as many tests as in a fresh virtual environment on this host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from uv import find_uv_bin

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("environment_images")]

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orchestrator-tests" / "sdists"


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    kind: str  # what it shows
    test_deps: tuple[str, ...]  # what the host's venv installs to run its tests
    repository: dict = field(default_factory=dict)  # config.yaml keys for it
    tests: str = "tests"
    tag: bool = False  # tagged, so that its version comes from Git
    extra: str = ""  # the host's venv installs the project with this extra
    select: str = ""  # a -k expression, on both sides (the command says it too)
    as_uid_1000: int = 0  # passed in the container (uid 1000) less on the host (root)


# sh's tests write executable scripts to the temp folder and run them; its slow signal and
# timeout tests are left out (a minute of sleeping), and one that fails on the host too
SH_FAST = (
    "not sig and not timeout and not nested and not bufsize and not piped_generator and not nonblocking_iter "
    "and not eintr and not session and not callback"
)


PROJECTS = [
    Project(
        "click",
        "8.5.1",
        "src layout, [dependency-groups] tests, flit, needs `less`",
        ("pytest",),
        {"system_packages": ["less"]},
    ),
    Project(
        "pluggy",
        "1.7.0",
        "setuptools-scm version from Git, [dependency-groups] testing, a dependency of pytest itself",
        ("pytest>=8", "pytest-benchmark"),
        {"command": "python -m pytest testing"},
        "testing",
        tag=True,
    ),
    Project(  # its recipes' tests alone: 145 tests in 2 s, where the whole suite's 765 take 35 s here
        "more-itertools",
        "11.2.1",
        "requirements/testing.txt, flit",
        (),
        {"command": "python -m pytest tests/test_recipes.py"},
        "tests/test_recipes.py",
    ),
    Project(
        "exceptiongroup",
        "1.3.2",
        "the detected [project.optional-dependencies] test, flit_scm (version from Git), on Python 3.13",
        (),
        {"python": "3.13"},
        tag=True,
        extra="test",
    ),
    Project(
        "sh",
        "2.4.0",
        "tests that write scripts to /tmp and run them; install: ['.'] instead of its heavy dev group",
        (),
        {"install": ["."], "command": f"python -m pytest tests -k '{SH_FAST}'"},
        select=SH_FAST,
        as_uid_1000=-1,
    ),  # test_uid_drops_supplementary_groups needs root
    Project(
        "python-dotenv",
        "1.2.4",
        "the detected requirements.txt (IPython, tox, ...); its tests run its `dotenv` console script",
        ("-r", "requirements.txt"),
        as_uid_1000=+1,
    ),  # a 000-mode file root can read
    Project(
        "markupsafe",
        "3.0.3",
        "C speedups compiled in the container by gcc, from system_packages "
        "[gcc, python3-dev] as the README says (the speedups double the tests that run)",
        (),
        {"system_packages": ["gcc", "python3-dev"]},
    ),
    Project(
        "numpy-financial",
        "1.0.0",
        "setup.py only (never run on the host): numpy, a compiled wheel, named in install",
        ("numpy>=1.15",),
        {"install": ["numpy>=1.15", "pytest"], "command": "python -m pytest numpy_financial/tests"},
        "numpy_financial/tests",
    ),
]


def sdist(project: Project, into: Path) -> Path:
    """The project's source distribution, unpacked into ``into``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = list(CACHE.glob(f"{project.name.replace('-', '_')}-{project.version}.tar.gz")) or list(
        CACHE.glob(f"{project.name}-{project.version}.tar.gz")
    )
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                str(CACHE),
                f"{project.name}=={project.version}",
            ],
            check=True,
            timeout=300,
        )
        found = list(CACHE.glob(f"*{project.version}.tar.gz"))
    with tarfile.open(found[0]) as tar:
        tar.extractall(into, filter="data")
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


def host_counts(source: Path, project: Project, venv: Path) -> dict[str, int]:
    """Outcomes in a fresh venv on this host (the reference the container must match). Its
    temporary files go to a folder of the test's: a project's suite leaves some behind."""
    scratch = venv.parent / "host-tmp"
    scratch.mkdir(exist_ok=True)
    uv = find_uv_bin()  # as pip would, in a fraction of its time (a dependency of the orchestrator)
    subprocess.run([uv, "venv", "--quiet", "--seed", "--python", sys.executable, str(venv)], check=True, timeout=120)
    target = f"{source}[{project.extra}]" if project.extra else str(source)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "pytest", *project.test_deps]
        + [target],
        cwd=source,
        check=True,
        timeout=600,
    )
    select = ["-k", project.select] if project.select else []
    report = venv.parent / "host-junit.xml"
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
        + [*select, project.tests],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(scratch)},
    )
    return outcomes(report.read_bytes())


def outcomes(junit: bytes) -> dict[str, int]:
    """Test cases in a junit report, and those that passed: the same unit on both sides
    whatever pytest each has (pytest 9 counts unittest subtests in a suite's totals, 8 does
    not, and a project that does not ask for pytest runs on the runner image's)."""
    cases = list(ET.fromstring(junit).iter("testcase"))
    bad = {"skipped", "failure", "error"}
    return {"passed": sum(1 for c in cases if not bad & {child.tag for child in c}), "total": len(cases)}


ON_EVERY_PYTHON = "pluggy"  # tests/integration/test_pythons.py runs it on each, this host's compared as here
HERE = [p for p in PROJECTS if p.name != ON_EVERY_PYTHON]


@pytest.mark.parametrize(
    "project",
    HERE,
    ids=[p.name + (f"-py{p.repository['python']}" if "python" in p.repository else "") for p in HERE],
)
def test_a_real_project_passes_as_on_the_host(orch, tmp_path: Path, project: Project) -> None:
    source = sdist(project, tmp_path / "sdist")
    shutil.copytree(source, orch.repo.path, dirs_exist_ok=True)
    sha = orch.repo.commit(f"{project.name} {project.version}")
    if project.tag:
        orch.repo.git("tag", project.version)
    # a repository of its own name: its environment image is its own, whatever runs beside it
    orch.configure(project.name, runner={"timeout": 600, "memory": "1g", "pids": 512}, repository=project.repository)
    with ThreadPoolExecutor(1) as pool:  # the host's reference run meanwhile
        reference = pool.submit(host_counts, source, project, tmp_path / "venv")
        run = orch.cli("run", "--once", timeout=900)
        host = reference.result(timeout=900)
    result = orch.result(sha)
    assert result["status"] == "passed", (result["message"], orch.log(sha).decode()[-3000:], run.stderr[-2000:])
    assert result["environment"]["detected"]  # it ran in an environment of its own
    python = project.repository.get("python", "3.11")
    assert result["environment"]["python"] == python and f"Python {python}." in orch.log(sha).decode()
    ours = outcomes(orch.path(sha, "junit.xml").read_bytes())
    assert ours["total"] == host["total"] > 10  # every test the host collects runs, and none fails
    assert result["tests"]["failed"] == result["tests"]["errors"] == 0
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":  # skips differ between versions
        assert ours["passed"] == host["passed"] + project.as_uid_1000


def test_a_dependency_published_only_as_source_is_an_error_naming_it(orch, tmp_path: Path) -> None:
    """zipp's test extra needs big-O, which PyPI has only as an sdist: building it would
    run its code on this host, so the environment is refused, naming it."""
    zipp = Project("zipp", "4.1.2", "[project.optional-dependencies] test", (), tag=True)
    shutil.copytree(sdist(zipp, tmp_path / "sdist"), orch.repo.path, dirs_exist_ok=True)
    sha = orch.repo.commit("zipp 4.1.2")
    orch.configure("zipp", runner={"timeout": 600})
    assert orch.cli("run", "--once", timeout=900).returncode == 1
    result = orch.result(sha)
    assert result["status"] == "error" and result["attempts"] == 1
    assert result["message"].startswith("environment build failed: ") and "big-o" in result["message"].lower()
    assert orch.path(sha, "environment.log").exists()
