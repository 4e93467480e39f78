"""Runs inside the runner container: the commit's tests, with pytest, writing junit.xml.

With ORCHESTRATOR_INSTALL set (the commit has a pyproject.toml or setup.py, and an
environment image holds its dependencies), the commit itself is installed first, last of
all and without its dependencies, into a folder of this job's own (the root file system
stays read-only), which then comes first on the path: the code under test is the commit's,
never a released copy that arrived as a dependency.

With ORCHESTRATOR_RELEASE_FILE set, the container starts warm: it installs the commit and
imports pytest, then waits for the orchestrator to create that file (the previous job's
slot is free), so that all this overlaps the job before.

ORCHESTRATOR_COMMAND replaces the default `pytest tests` (run by /bin/sh); pytest still
writes its JUnit report, through PYTEST_ADDOPTS.

With ORCHESTRATOR_REPORT_FRAME set (a Swarm task: no folder is shared with the dispatcher,
and the container has no network), the JUnit report is printed at the end of the output,
base64 between two lines naming that value, and the engine's log carries it back.

Exit status: pytest's own (0 passed, 1 failed, 2 interrupted / collection error,
3 internal error, 4 usage error, 5 no tests collected), or 100 when the commit has no
tests directory, 101 when pytest is missing, 102 when the commit could not be installed.
The orchestrator reads the verdict from this status, never from the log.
"""

import base64
import os
import subprocess
import sys
import time

WORKSPACE = "/workspace"
JUNIT = "/ci-out/junit.xml"
SITE = "/ci-out/site"
MAX_REPORT_BYTES = 20 * 1024 * 1024
REPORT_OPTIONS = f"--junitxml={JUNIT} -o junit_family=xunit2 -p no:cacheprovider"


def wait_for_release(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def install_project() -> bool:
    """pip install the commit, no dependencies, no index, no build isolation (its build
    backend is in the environment), into SITE."""
    print("orchestrator: installing this commit (pip install --no-deps)", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check",
                           "--target", SITE, WORKSPACE], stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        print(f"orchestrator: the commit could not be installed (pip exited {proc.returncode})", flush=True)
        return False
    # PYTHONPATH puts the commit before the images' own copies (pluggy under test, not
    # pytest's); the image's ci-out.pth keeps it importable for children that clear their
    # environment; its console scripts go on PATH, as a virtual environment's would.
    sys.path.insert(0, SITE)
    os.environ["PYTHONPATH"] = SITE + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    os.environ["PATH"] = f"{SITE}/bin{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    return True


def main() -> int:
    os.chdir(WORKSPACE)
    installed = not os.environ.get("ORCHESTRATOR_INSTALL") or install_project()
    release = os.environ.get("ORCHESTRATOR_RELEASE_FILE")
    if release:
        try:
            import pytest  # noqa: F401  (warm the import cache before the job is released)
        except ImportError:
            pass
        wait_for_release(release)
    if not installed:
        return 102
    command = os.environ.get("ORCHESTRATOR_COMMAND")
    if command:
        os.environ["PYTEST_ADDOPTS"] = f"{REPORT_OPTIONS} {os.environ.get('PYTEST_ADDOPTS', '')}".strip()
        return subprocess.call(["/bin/sh", "-c", command])
    if not os.path.isdir("tests"):
        print("orchestrator: this commit has no tests directory", flush=True)
        return 100
    try:
        import pytest
    except ImportError:
        print("orchestrator: pytest is not installed in the runner image", flush=True)
        return 101
    sys.path.insert(0 if not os.environ.get("ORCHESTRATOR_INSTALL") else 1, WORKSPACE)
    return int(pytest.main(["tests", *REPORT_OPTIONS.split(), "-v", "-rfE"]))


def print_report(frame: str) -> None:
    """The JUnit report at the end of the output, framed (see the module's docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(JUNIT, "rb") as fh:
            report = fh.read(MAX_REPORT_BYTES + 1)
    except OSError:
        report = b""
    body = base64.encodebytes(report).decode() if 0 < len(report) <= MAX_REPORT_BYTES else ""
    os.write(1, f"\n{frame} begin\n{body}{frame} end\n".encode())


if __name__ == "__main__":
    status = main()
    if os.environ.get("ORCHESTRATOR_REPORT_FRAME"):
        print_report(os.environ["ORCHESTRATOR_REPORT_FRAME"])
    sys.exit(status)
