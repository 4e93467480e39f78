"""Nothing a commit declares reaches the host: each class of hostile declaration, on a
branch of its own, against an index on loopback that records every request it gets, with a
build backend in reach that writes a marker file on this host if it ever runs. Every job
ends `error` naming the line; the index is asked nothing; no marker appears; no host secret
or host file is in any result. Then the index, named in config.yaml, is asked: only config
chooses where pip looks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PASSING, TestIndex

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("environment_images")]

SECRET = "topsecret-value-4711"
BACKEND = (
    "import pathlib\npathlib.Path({marker!r}).write_text('a build backend ran on the host')\n"
    "from setuptools import setup\nsetup(name='probe', version='1.0')\n"
)


def probe(into: Path, marker: Path) -> Path:
    """A project whose build writes ``marker``: as a folder, and as a Git repository."""
    into.mkdir(parents=True)
    (into / "setup.py").write_text(BACKEND.format(marker=str(marker)))
    (into / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=x@y", "-c", "user.name=x", "commit", "-q", "-m", "p"],
    ):
        subprocess.run(["git", *args], cwd=into, check=True, capture_output=True)
    return into


def cases(index: str, host_dir: Path, host_file: Path) -> dict[str, dict[str, str]]:
    """Branch name -> the files of its commit: one class of hostile declaration each."""
    pyproject = '[project]\nname = "p"\nversion = "1"\ndependencies = [{deps}]\n'
    sdist, wheel = f"{index}/probe-1.0.tar.gz", f"{index}/probe-1.0-py3-none-any.whl"
    return {
        "dep-direct-ref": {"pyproject.toml": pyproject.format(deps=f'"probe @ {sdist}"')},
        "req-direct-ref": {"requirements.txt": f"probe @ {sdist}\n"},
        "req-local-dir": {"requirements.txt": "./vendor/probe\n", "vendor/probe/setup.py": BACKEND.format(marker="x")},
        "req-host-dir": {"requirements.txt": f"{host_dir}\n"},
        "req-editable-git": {"requirements.txt": f"-e git+file://{host_dir}#egg=probe\n"},
        "dep-extra-index": {"pyproject.toml": pyproject.format(deps=f'"--extra-index-url {index}/simple", "probe"')},
        "group-index-url": {"pyproject.toml": f'[dependency-groups]\ntest = ["--index-url {index}/simple", "probe"]\n'},
        "toml-newline": {"pyproject.toml": pyproject.format(deps=f'"pytest\\n--extra-index-url {index}/simple"')},
        "build-find-links": {
            "pyproject.toml": f'[build-system]\nrequires = ["--find-links {index}/", "setuptools"]\n'
            '[project]\nname = "p"\nversion = "1"\n'
        },
        "req-constraints-url": {"requirements.txt": f"-c {index}/constraints.txt\npytest\n"},
        "req-trusted-host": {
            "requirements.txt": f"--trusted-host 127.0.0.1\n--extra-index-url {index}/simple\nprobe\n"
        },
        "setup-cfg-index": {
            "setup.cfg": f"[metadata]\nname = p\n[options]\ninstall_requires =\n"
            f"    --extra-index-url {index}/simple\n    probe\n"
        },
        "bare-url": {"requirements.txt": f"{sdist}\n"},
        "wheel-direct-ref": {"requirements.txt": f"probe @ {wheel}\n"},
        "bom-index": {"requirements.txt": f"\ufeff--extra-index-url {index}/simple\nprobe\n"},
        "env-var": {
            "requirements.txt": f"probe @ {index}/${{ORCH_TEST_SECRET}}/${{HOME}}/probe-1.0-py3-none-any.whl\n"
        },
        "host-file": {"pyproject.toml": pyproject.format(deps=f'"-r {host_file}"')},
        "bom-host-file": {"requirements.txt": f"\ufeff-r {host_file}\n"},
    }


def test_nothing_a_commit_declares_reaches_the_host(orch, tmp_path: Path) -> None:
    index = TestIndex()
    marker = tmp_path / "marker"
    host_dir = probe(tmp_path / "probe", marker)
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(f"SECRET: {SECRET}\n")
    try:
        branches = cases(index.url, host_dir, host_file)
        shas = {}
        orch.repo.commit("root", PASSING)
        for name, files in branches.items():
            orch.repo.checkout("main")
            orch.repo.checkout(name, create=True)
            shas[name] = orch.repo.commit(name, {**PASSING, **files})
        orch.configure(runner={"parallelism": 2, "timeout": 60}, retries=0)
        run = orch.cli("run", "--once", timeout=300, env={"ORCH_TEST_SECRET": SECRET})
        assert run.returncode == 1, run.stderr[-3000:]
        for name, sha in shas.items():
            result = orch.result(sha)
            message = result["message"] or ""
            assert result["status"] == "error" and message.startswith("environment build failed: "), (name, result)
            assert result["attempts"] == 1 and result["environment"] is None, name
            assert len(message) < 250 and "\n" not in message, (name, message)
            everything = json.dumps(result) + orch.log(sha).decode(errors="replace")
            assert SECRET not in everything and "SECRET:" not in everything, (name, message)
        assert index.requests == [], index.requests
        assert not marker.exists(), marker.read_text()
        assert not (orch.config.state_dir / "environments").exists()  # nothing was even tried

        # The same index, named in config.yaml: pip asks it (and finds iniconfig on PyPI).
        orch.repo.checkout("main")
        orch.repo.checkout("configured", create=True)
        good = orch.repo.commit("configured index", {**PASSING, "requirements.txt": "iniconfig\n"})
        orch.configure(runner={"timeout": 120}, environments={"extra_index_urls": [f"{index.url}/simple"]})
        assert orch.cli("run", "--once", timeout=300).returncode == 0, orch.log(good).decode()[-2000:]
        assert "GET /simple/iniconfig/" in index.requests and not marker.exists()
    finally:
        index.close()
