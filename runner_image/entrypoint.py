"""Runs inside the runner container: the commit's tests, with pytest, writing junit.xml.

With ``protocol.INSTALL`` set (the commit has a pyproject.toml or setup.py, and an
environment image holds its dependencies), the commit itself is installed first, last of
all and without its dependencies, into a folder of this job's own (the root file system
stays read-only), which then comes first on the path: the code under test is the commit's,
never a released copy that arrived as a dependency.

With ``protocol.RELEASE`` set, the container starts warm: it installs the commit and
imports pytest, then waits for the orchestrator to create that file (the previous job's
slot is free), so that all this overlaps the job before.

``protocol.COMMAND`` replaces the default `pytest tests` (run by /bin/sh); pytest still
writes its JUnit report, through PYTEST_ADDOPTS.

With ``protocol.RERUN_FAILURES``=N (repositories[].rerun_failures), tests that failed are
run again, only they, up to N times, until a run passes them all: then the exit status is 0,
and the report holds every run (the orchestrator names those tests flaky). Each re-run is a
testsuite named orchestrator-rerun-<k>, k from 1, appended after the suite's own report: the
orchestrator counts such suites only when it asked for re-runs, only up to N, each k once.

With ``protocol.ONLY`` set (a path to a JSON list of test ids), only those of the collected
tests run: the orchestrator re-runs a job's failed tests alone (``retry --failed``). They are
kept before a shard takes its share, so a split re-run splits only them.

With ``protocol.SHARD``=k/N (repositories[].shards), only this container's share of the
suite runs: orchestrator_shard.py, beside this file, splits what pytest collected.

With ``protocol.REPORT_FRAME`` set (a Swarm task: no folder is shared with the dispatcher,
and the container has no network), the JUnit report is printed at the end of the output,
base64 between two marker lines, and the engine's log carries it back. The suite writes to
that same log, so the marker is a secret of this attempt that the suite never sees: it
arrives in the file /ci-out/.report-frame, which this process reads and removes before the
suite starts; the suite then runs in a process of its own, started afresh (exec), and this
one makes itself undumpable (its memory and environment unreadable to the suite, which runs
as the same user). A frame the suite prints itself cannot carry the marker.

There, too, the dispatcher cannot watch the workspace, nor the engine tell an OOM kill:
with ``protocol.DISK_LIMITS`` set (JSON: [[[folder, ...], bytes], ...]) the suite runs in a
child that this process supervises, ending it when any group of folders holds more than
its bytes (exit 103), and telling an end by the kernel's OOM killer (exit 104) from the
memory cgroup's count of OOM kills.

Exit status: pytest's own (0 passed, 1 failed, 2 interrupted / collection error,
3 internal error, 4 usage error, 5 no tests collected), or 100 when the commit has no
tests directory, 101 when pytest is missing, 102 when the commit could not be installed,
103 over a disk limit, 104 out of memory (both only when supervising).
The orchestrator reads the verdict from this status, never from the log.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # as the host's checks see it
    import pytest as _pytest

    from runner_image import orchestrator_protocol as protocol
else:
    import orchestrator_protocol as protocol  # beside this file: the contract with the orchestrator

WORKSPACE, JUNIT, SITE = protocol.WORKSPACE, protocol.JUNIT, protocol.SITE
REPORT_OPTIONS = f"--junitxml={JUNIT} -o junit_family=xunit2 -p no:cacheprovider"
MAX_RERUN_TESTS = 100  # more failures than that is a broken commit, not a flaky test
WATCH_EVERY = 0.5  # as the dispatcher's DiskWatch on one engine
FRAME_FILE = f"{protocol.OUTPUT_DIR}/{protocol.FRAME_FILE}"
SUITE_ARGUMENT = "--suite"
PR_SET_DUMPABLE = 4
OOM_COUNTERS = (
    "/sys/fs/cgroup/memory.events",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.oom_control",
)  # cgroup v1


def wait_for_release(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def install_project() -> bool:
    """Install the commit, no dependencies, no index, no build isolation (its build
    backend is in the environment), into SITE: with the image's uv (0.3 s here), else
    with pip (0.9 s: an image built before uv came into it)."""
    uv = shutil.which("uv")
    tool = "uv pip" if uv else "pip"
    print(f"orchestrator: installing this commit ({tool} install --no-deps)", flush=True)
    common = ["install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation", "--target", SITE, WORKSPACE]
    if uv:
        command = [uv, "pip", *common, "--no-cache", "--no-config", "--no-python-downloads", "--python", sys.executable]
    else:
        command = [sys.executable, "-m", "pip", *common, "--no-cache-dir", "--disable-pip-version-check"]
    proc = subprocess.run(command, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        print(f"orchestrator: the commit could not be installed ({tool} exited {proc.returncode})", flush=True)
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
    installed = not os.environ.get(protocol.INSTALL) or install_project()
    release = os.environ.get(protocol.RELEASE)
    if release:
        try:
            import pytest  # warm the import cache before the job is released
        except ImportError:
            pass
        wait_for_release(release)
    if not installed:
        return protocol.EXIT_NOT_INSTALLED
    command = os.environ.get(protocol.COMMAND)
    if command:
        os.environ["PYTEST_ADDOPTS"] = f"{REPORT_OPTIONS} {os.environ.get('PYTEST_ADDOPTS', '')}".strip()
        return subprocess.call(["/bin/sh", "-c", command])
    if not os.path.isdir("tests"):
        print("orchestrator: this commit has no tests directory", flush=True)
        return protocol.EXIT_NO_TESTS_DIR
    try:
        import pytest
    except ImportError:
        print("orchestrator: pytest is not installed in the runner image", flush=True)
        return protocol.EXIT_NO_PYTEST
    from orchestrator_shard import Shard  # imported before the commit's folder goes on the path

    shard = Shard.from_environment()
    sys.path.insert(0 if not os.environ.get(protocol.INSTALL) else 1, WORKSPACE)
    failed = FailedTests()
    only = only_tests(pytest)
    plugins = [failed] + ([shard] if shard else []) + ([only] if only else [])
    status = int(pytest.main(["tests", *REPORT_OPTIONS.split(), "-v", "-rfE"], plugins=plugins))
    if status == 5 and shard and shard.collected:  # more shards than tests: this one's share is empty
        status = 0
    reruns = int(os.environ.get(protocol.RERUN_FAILURES) or 0)
    if status == 1 and reruns and 0 < len(failed.nodeids) <= MAX_RERUN_TESTS:
        status = rerun_failures(list(failed.nodeids), reruns)
    return status


def only_tests(pytest: ModuleType) -> object | None:
    """The plugin that keeps only the tests named in ``protocol.ONLY``'s file, or None."""
    path = os.environ.get(protocol.ONLY)
    if not path:
        return None
    with open(path) as fh:
        wanted = set(json.load(fh))

    class OnlyTests:
        @pytest.hookimpl(tryfirst=True)  # before a shard takes its share of what is left
        def pytest_collection_modifyitems(self, config: _pytest.Config, items: list[_pytest.Item]) -> None:
            kept = [i for i in items if protocol.test_id_of_node(i.nodeid) in wanted]
            dropped = [i for i in items if protocol.test_id_of_node(i.nodeid) not in wanted]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = kept
            print(f"\norchestrator: re-running {len(kept)} of the {len(wanted)} failed tests", flush=True)

    return OnlyTests()


class FailedTests:
    """A pytest plugin: the node ids of the tests that failed (setup, call or teardown)."""

    def __init__(self) -> None:
        self.nodeids: dict = {}  # in the order they failed, each once

    def pytest_runtest_logreport(self, report: _pytest.TestReport) -> None:
        if report.failed:
            self.nodeids.setdefault(report.nodeid, None)


def rerun_failures(nodeids: list, times: int) -> int:
    """Run only the failed tests again, up to ``times`` times, in a fresh interpreter each
    (the first one's imports and state stay out of it), until one run passes them all.
    Each run's report is added to junit.xml as a testsuite of its own: the report keeps
    every attempt, and the orchestrator reads which tests passed only when re-run."""
    for attempt in range(1, times + 1):
        print(f"\norchestrator: re-running the {len(nodeids)} failed test(s), re-run {attempt} of {times}", flush=True)
        report = f"{JUNIT}.rerun{attempt}"
        status = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                *nodeids,
                f"--junitxml={report}",
                "-o",
                "junit_family=xunit2",
                "-o",
                f"junit_suite_name={protocol.RERUN_SUITE}{attempt}",
                "-p",
                "no:cacheprovider",
                "-v",
                "-rfE",
            ],
            stdin=subprocess.DEVNULL,
        )
        add_report(report)
        if status == 0:
            return 0
    return 1


def add_report(path: str) -> None:
    """Append the testsuites of the report at ``path`` to junit.xml (and remove it)."""
    import xml.etree.ElementTree as ET

    try:
        extra = ET.parse(path).getroot()
        tree = ET.parse(JUNIT)
    except (OSError, ET.ParseError):
        return
    root = tree.getroot()
    if root.tag == "testsuite":  # wrap a bare testsuite, so that others can follow it
        wrapper = ET.Element("testsuites")
        wrapper.append(root)
        tree, root = ET.ElementTree(wrapper), wrapper
    for suite in [extra] if extra.tag == "testsuite" else extra.findall("testsuite"):
        root.append(suite)
    tree.write(JUNIT, encoding="utf-8", xml_declaration=True)
    os.unlink(path)


def print_report(frame: str) -> None:
    """The JUnit report at the end of the output, framed (see the module's docstring)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(JUNIT, "rb") as fh:
            report = fh.read(protocol.MAX_REPORT_BYTES + 1)
    except OSError:
        report = b""
    body = base64.encodebytes(report).decode() if 0 < len(report) <= protocol.MAX_REPORT_BYTES else ""
    os.write(1, f"\n{frame} begin\n{body}{frame} end\n".encode())


def oom_kills() -> int:
    for path in OOM_COUNTERS:
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def run_child() -> int:
    """The suite in a child of its own process group (what it starts goes with it), started
    afresh by exec: nothing of this process's memory (the report's marker) is in it. The
    child asks the OOM killer to take it before this process, which must live to tell."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        return child
    try:
        os.setpgid(0, 0)
        try:
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")
        except OSError:
            pass
        environment = {k: v for k, v in os.environ.items() if k not in (protocol.REPORT_FRAME, protocol.DISK_LIMITS)}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), SUITE_ARGUMENT], environment)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(3)


def run_suite() -> int:
    """The suite itself, in the exec'd child (see run_child)."""
    status = 3
    try:
        status = main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def take_frame_marker() -> str:
    """The report's marker, read from its file and the file removed, with this process made
    undumpable first: the suite that runs next (same user) can read neither."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        with open(FRAME_FILE) as fh:
            marker = fh.read().strip()
        os.unlink(FRAME_FILE)
    except OSError:
        marker = ""
    return marker or "missing"


def supervised(limits: list) -> int:
    """Run the suite in a child and watch it: its disk use every WATCH_EVERY seconds, and
    its end the moment it comes (a thread waits for it), not at the next look."""
    oom_before = oom_kills()
    child = run_child()
    ended, statuses = threading.Event(), []

    def reap() -> None:
        statuses.append(os.waitpid(child, 0)[1])
        ended.set()

    threading.Thread(target=reap, name="reap", daemon=True).start()
    over = None
    while True:
        done = ended.wait(WATCH_EVERY)
        over = next(((folders, limit) for folders, limit in limits if protocol.disk_used(folders, limit) > limit), None)
        if done or over:
            break
    if over:
        try:
            os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        ended.wait()
        folders, limit = over
        print(
            f"\norchestrator: more than {limit} bytes written into {' and '.join(folders)}: the tests were stopped",
            flush=True,
        )
        return protocol.EXIT_DISK_LIMIT
    try:
        os.killpg(child, signal.SIGKILL)  # what the suite left running: nothing writes after its end
    except (ProcessLookupError, PermissionError):
        pass
    wait_status = statuses[0]
    if os.WIFSIGNALED(wait_status) and oom_kills() > oom_before:
        print("\norchestrator: the tests were killed by the kernel at the memory limit", flush=True)
        return protocol.EXIT_OUT_OF_MEMORY
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def networks() -> list[str]:
    """The network interfaces this container has, but loopback."""
    return sorted(name for _, name in socket.if_nameindex() if name != "lo")


if __name__ == "__main__":
    if sys.argv[1:] == [SUITE_ARGUMENT]:
        sys.exit(run_suite())
    if os.environ.get(protocol.NO_NETWORK) and (found := networks()):  # before anything of the commit runs
        print(f"orchestrator: this task has a network ({', '.join(found)}); nothing of the commit ran", flush=True)
        sys.exit(protocol.EXIT_HAS_NETWORK)
    marker = take_frame_marker() if os.environ.get(protocol.REPORT_FRAME) else None
    limits = os.environ.get(protocol.DISK_LIMITS)
    # a framed report needs the suite in a process of its own, even with nothing to watch
    status = supervised(json.loads(limits) if limits else []) if limits or marker is not None else main()
    if marker is not None:
        print_report(protocol.frame(marker))
    sys.exit(status)
