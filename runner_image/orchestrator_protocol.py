"""The contract between the orchestrator and the runner image: what the host tells the
container, where each side reads and writes, and what the container's exit status means;
and every other ORCHESTRATOR_* variable the project reads (its command line's, its tests').

One file for both sides, standard library only: the runner image carries it beside the
entrypoint (/opt/runner, imported as ``orchestrator_protocol``: a name no project under test
uses), and the orchestrator imports it from ``runner_image``. A name, a path or a rule
written here is written nowhere else.
"""

from __future__ import annotations

import os
import re

# -- paths inside the container ----------------------------------------------------------
WORKSPACE = "/workspace"  # the commit's checkout (read-write)
OUTPUT_DIR = "/ci-out"  # what the host reads back
CLAIMS_DIR = "/ci-claims"  # a split suite's shared queue on one engine: one claim per unit taken
JUNIT = f"{OUTPUT_DIR}/junit.xml"  # pytest's JUnit report (re-runs appended)
SITE = f"{OUTPUT_DIR}/site"  # where the commit itself is installed
SHARD_PLAN = "shard-plan.json"  # in OUTPUT_DIR: a split suite's plan (the host writes it)
ONLY_FILE = "only.json"  # in OUTPUT_DIR: the test ids to keep of what is collected (the host writes it)
RELEASE_FILE = ".release"  # in OUTPUT_DIR: created by the host to release a warm start
FRAME_FILE = ".report-frame"  # in OUTPUT_DIR: the report frame's secret marker (a Swarm task)
MAX_REPORT_BYTES = 20 * 1024 * 1024  # a JUnit report larger than this is not read

# -- what the host tells the container (environment variables) --------------------------
INSTALL = "ORCHESTRATOR_INSTALL"  # "1": pip install the commit (no deps) into SITE first
COMMAND = "ORCHESTRATOR_COMMAND"  # a shell command instead of `pytest tests`
RERUN_FAILURES = "ORCHESTRATOR_RERUN_FAILURES"  # N: re-run failed tests up to N times
SHARD = "ORCHESTRATOR_SHARD"  # "k/N": run only this share of the suite (SHARD_PLAN)
SHARD_TRY = "ORCHESTRATOR_SHARD_TRY"  # which try of a shard this is (for its log)
ONLY = "ORCHESTRATOR_ONLY"  # a path (OUTPUT_DIR/ONLY_FILE): run only these tests (re-running the failed ones)
SHARD_CLAIMS = "ORCHESTRATOR_SHARD_CLAIMS"  # CLAIMS_DIR: take units from the shared queue, not a fixed share
RELEASE = "ORCHESTRATOR_RELEASE_FILE"  # start warm: wait for this file before the tests
REPORT_FRAME = "ORCHESTRATOR_REPORT_FRAME"  # "1": print the report framed at the end of the log
NO_NETWORK = "ORCHESTRATOR_NO_NETWORK"  # "1": refuse to run in a task with any network interface but lo
DISK_LIMITS = "ORCHESTRATOR_DISK_LIMITS"  # JSON [[[folder, ...], bytes], ...]: supervise the suite
COMMIT = "ORCHESTRATOR_COMMIT"  # the commit under test (information for the suite)
ATTEMPT = "ORCHESTRATOR_ATTEMPT"  # the attempt's number (information for the suite)

# -- what the host's own processes read from their environment ----------------------------
SERVER = "ORCHESTRATOR_SERVER"  # the command line: a dispatcher's address (as --server)
TOKEN = "ORCHESTRATOR_TOKEN"  # the command line: that dispatcher's api token (as --token)
CRASH_AT = "ORCHESTRATOR_CRASH_AT"  # a crash point's name: the process kills itself there (faults.py)
SCREENSHOTS = "ORCHESTRATOR_SCREENSHOTS"  # the browser tests: a folder to save each page's picture in

# -- exit statuses beyond pytest's own 0-5 ------------------------------------------------
EXIT_NO_TESTS_DIR = 100
EXIT_NO_PYTEST = 101
EXIT_NOT_INSTALLED = 102
EXIT_DISK_LIMIT = 103  # only where the entrypoint supervises the suite (a Swarm task)
EXIT_OUT_OF_MEMORY = 104  # only there too: the cgroup's OOM kill count rose
EXIT_HAS_NETWORK = 105  # NO_NETWORK was asked, and the task has a network: nothing of the commit ran

# -- what the report carries -----------------------------------------------------------------
RERUN_SUITE = "orchestrator-rerun-"  # + k: the k-th re-run's testsuite, appended by the entrypoint
SHARD_PROPERTY = "orchestrator-shard"  # a shard's report: "k/N"
COLLECTED_PROPERTY = "orchestrator-collected"  # a shard's report: "count:digest" of what it collected
RAN_PROPERTY = "orchestrator-ran"  # a shard's report: how many of them it ran (its loop ended)


def frame(marker: str) -> str:
    """The line that begins (+ " begin") and ends (+ " end") the framed report."""
    return f"--- orchestrator report {marker}"


def test_id(classname: str, name: str) -> str:
    """A test's id, as everything names it: its JUnit ``<classname>::<name>``."""
    return f"{classname}::{name}" if classname else name


def test_id_of_node(nodeid: str) -> str:
    """The same id from a pytest node id (pytest's junitxml names a case the same way)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return test_id(".".join(names[:-1]), names[-1]) if len(names) > 1 else names[0]


MAX_ENTRIES = 1_000_000  # more files than that is over any disk limit


def disk_used(folders: list, limit: int) -> int:
    """Bytes held under ``folders``: blocks (a sparse file costs what it uses), each inode
    once, links not followed; more than ``limit`` as soon as MAX_ENTRIES files are seen.
    How the host watches a workspace on one engine, and a Swarm task watches its own."""
    seen: set = set()
    total, stack = 0, [str(f) for f in folders]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
        if len(seen) > MAX_ENTRIES:
            return limit + 1
    return total
