"""Named crash points for the fault-injection tests (the failpoint pattern).

With ``protocol.CRASH_AT=<name>`` in its environment, the process kills itself with
SIGKILL when it reaches that point, exactly as a power cut or an OOM kill would, so the
tests can show that recovery works from each step of a job's life.
"""

from __future__ import annotations

import os
import signal

from runner_image.orchestrator_protocol import CRASH_AT  # the variable that names the point

POINTS = frozenset(
    {
        "job-claimed",
        "container-created",
        "container-started",
        "result-written",
        "job-finished",
        "merge-before-push",  # a merge request recorded as merging, its target not pushed yet
        "merge-after-push",  # the target pushed to the candidate, not recorded as merged yet
    }
)


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
