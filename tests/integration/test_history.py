"""Test history from real runs on the real engine: every test case recorded, and "failing
since" dated across a merge from where the failure began on the side branch."""

from __future__ import annotations

import pytest

from tests.helpers import http_get

pytestmark = pytest.mark.docker

GOOD = "def test_value():\n    assert 1 + 1 == 2\n\ndef test_other():\n    pass\n"
BAD = "def test_value():\n    assert 1 + 1 == 3\n\ndef test_other():\n    pass\n"


def test_failing_since_across_a_merge(orch) -> None:
    orch.repo.commit("root", {"tests/test_a.py": GOOD})
    orch.configure()
    assert orch.cli("run", "--once").returncode == 0
    orch.repo.checkout("side", create=True)
    broke = orch.repo.commit("breaks it on a side branch", {"tests/test_a.py": BAD})
    orch.repo.checkout("main")
    fine = orch.repo.commit("main goes on", {"other.txt": "1"})
    assert orch.cli("run", "--once").returncode == 1  # side fails, main passes
    orch.repo.git("merge", "--no-ff", "-q", "-m", "merge side", "side")
    merge = orch.repo.head()
    assert orch.cli("run", "--once").returncode == 1
    assert [orch.result(s)["status"] for s in (broke, fine, merge)] == ["failed", "passed", "failed"]
    port = orch.config.dispatcher.port
    dispatcher = orch.start("dispatcher")
    try:
        orch.wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        job = orch.result(merge)["id"]
        (failure,) = http_get(f"http://127.0.0.1:{port}/api/jobs/{job}/failures").json()
        assert failure["test"] == "tests.test_a::test_value"
        assert failure["history"]["since"] == {"commit": broke, "commits": 2}  # from the side branch
        runs = http_get(f"http://127.0.0.1:{port}/api/tests/demo/tests.test_a::test_other").json()
        assert len(runs) == 4 and {r["outcome"] for r in runs} == {"passed"}  # every case recorded
        assert orch.result(merge)["timings"]["history_s"] < 1
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=30)
