"""Coalescing and bisection on the real engine with real Git history: the culprit in a
linear history, across a merge, as the first untested commit; a flaky failure; and a
dispatcher killed in the middle of a bisection."""

from __future__ import annotations

import json
import math
import signal

import pytest

from runner_image import orchestrator_protocol as protocol
from tests.helpers import PASSING

pytestmark = pytest.mark.docker

GOOD = "def test_value():\n    assert 1 + 1 == 2\n"
BAD = "def test_value():\n    assert 1 + 1 == 3, 'broken by this commit'\n"
# fails on a commit's first attempt, passes when the same commit is tested again
FLAKY = f"import os\n\ndef test_value():\n    assert os.environ['{protocol.ATTEMPT}'] != '1'\n"
SLOW_BAD = "import time\n\ndef test_value():\n    time.sleep(6)\n    assert 1 + 1 == 3\n"


def pushed_at_once(orch, count: int, bad_from: int, bad: str = BAD) -> list[str]:
    """``count`` commits after a passing root; from commit ``bad_from`` (1-based) on, the test fails."""
    return [
        orch.repo.commit(f"c{i}", {"tests/test_value.py": bad if i >= bad_from else GOOD, "n.txt": str(i)})
        for i in range(1, count + 1)
    ]


def first_sight(orch, **runner) -> None:
    orch.repo.commit("root", {**PASSING, "tests/test_value.py": GOOD})
    orch.configure(repository={"coalesce": True}, runner={"parallelism": 2, **runner})
    assert orch.cli("run", "--once").returncode == 0


def statuses(orch, shas: list[str]) -> list[str]:
    return [orch.result(sha)["status"] for sha in shas]


def test_the_culprit_in_a_linear_history(orch) -> None:
    first_sight(orch)
    shas = pushed_at_once(orch, 8, bad_from=5)
    run = orch.cli("run", "--once", timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    culprit = orch.result(shas[4])
    assert culprit["culprit"] is True and culprit["status"] == "failed"
    assert culprit["bisection"]["good"] == orch.repo.git("rev-parse", f"{shas[0]}^").strip()
    assert culprit["bisection"]["bad"] == shas[-1] and culprit["bisection"]["range"] == 8
    assert culprit["bisection"]["jobs"] <= math.ceil(math.log2(8)) + 1
    assert orch.result(shas[-1])["status"] == "failed" and orch.result(shas[-1])["culprit"] is False
    tested = [s for s in shas if orch.result(s)["status"] != "skipped"]
    assert len(tested) <= 1 + math.ceil(math.log2(8)) + 1
    for sha in shas:
        result = orch.result(sha)
        if result["status"] == "skipped":
            assert result["message"] == f"covered by {shas[-1][:12]}" and result["attempts"] == 0
            assert b"covered by" in orch.log(sha)
    jobs = json.loads(orch.cli("status", "--json", "--limit", "20").stdout)
    assert {j["commit"] for j in jobs if j["culprit"]} == {shas[4]}


def test_the_culprit_is_the_first_untested_commit(orch) -> None:
    first_sight(orch)
    shas = pushed_at_once(orch, 5, bad_from=1)
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    assert [orch.result(s)["culprit"] for s in shas] == [True, False, False, False, False]


def test_the_culprit_across_a_merge_is_the_merge_commit(orch) -> None:
    """First-parent history: a side branch merged into main is one step, its merge."""
    first_sight(orch)
    before = orch.repo.commit("m1", {"a.txt": "1"})
    orch.repo.checkout("side", create=True)
    orch.repo.commit("s1", {"tests/test_value.py": BAD})
    orch.repo.commit("s2", {"b.txt": "2"})
    orch.repo.checkout("main")
    orch.repo.git("merge", "--no-ff", "-q", "-m", "merge side", "side")
    merge = orch.repo.head()
    orch.repo.git("branch", "-D", "side")
    after = [orch.repo.commit(f"m{i}", {"a.txt": str(i)}) for i in (2, 3)]
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    assert orch.result(merge)["culprit"] is True
    assert [orch.result(s)["culprit"] for s in (before, *after)] == [False, False, False]


def test_a_flaky_failure_names_no_culprit_and_says_so(orch) -> None:
    first_sight(orch)
    shas = pushed_at_once(orch, 4, bad_from=3, bad=FLAKY)
    assert orch.cli("run", "--once", timeout=300).returncode == 1
    assert not any(orch.result(s)["culprit"] for s in shas)
    boundary = orch.result(shas[2])  # failed first, passed on the re-run
    assert boundary["status"] == "passed" and boundary["attempts"] == 2
    run = orch.cli("bisections")
    assert "flaky" in run.stdout and "no culprit" in run.stdout, run.stdout


def test_a_bisection_resumes_after_the_dispatcher_is_killed(orch) -> None:
    first_sight(orch)
    shas = pushed_at_once(orch, 8, bad_from=6, bad=SLOW_BAD)
    run = orch.start("run")
    # the newest (6 s) fails, then the first probe of the bisection starts
    orch.wait_for(
        lambda: any(c.status == "running" and c.labels["orchestrator.commit"] != shas[-1] for c in orch.containers()),
        timeout=120,
        interval=0.3,
    )
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    again = orch.cli("run", "--once", timeout=300)
    assert again.returncode == 1, again.stderr[-2000:]
    assert orch.result(shas[5])["culprit"] is True
    assert sum(1 for s in shas if orch.result(s)["culprit"]) == 1
    assert orch.containers() == []
