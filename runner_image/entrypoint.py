"""Runs inside the runner container: the commit's tests, with pytest, writing junit.xml.

With ORCHESTRATOR_RELEASE_FILE set, the container starts warm: it imports pytest, then waits
for the orchestrator to create that file (the previous job's slot is free) before it
looks at the workspace, so starting the container and the interpreter overlaps the job
before it.

Exit status: pytest's own (0 passed, 1 failed, 2 interrupted / collection error,
3 internal error, 4 usage error, 5 no tests collected), or 100 when the commit has no
tests directory and 101 when pytest is missing. The orchestrator reads the verdict from
this status, never from the log.
"""

import os
import sys
import time

WORKSPACE = "/workspace"
JUNIT = "/ci-out/junit.xml"


def wait_for_release(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def main() -> int:
    release = os.environ.get("ORCHESTRATOR_RELEASE_FILE")
    if release:
        try:
            import pytest  # noqa: F401  (warm the import cache before the job is released)
        except ImportError:
            pass
        wait_for_release(release)
    os.chdir(WORKSPACE)
    if not os.path.isdir("tests"):
        print("orchestrator: this commit has no tests directory", flush=True)
        return 100
    try:
        import pytest
    except ImportError:
        print("orchestrator: pytest is not installed in the runner image", flush=True)
        return 101
    sys.path.insert(0, WORKSPACE)
    args = ["tests", f"--junitxml={JUNIT}", "-o", "junit_family=xunit2",
            "-p", "no:cacheprovider", "-v", "-rfE"]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
