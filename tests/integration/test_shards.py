"""A commit's suite split across containers (repositories[].shards), on the real engine."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

import pytest

from orchestrator.backends.base import LABEL_SHARD

# Uneven durations that four groups can balance exactly (2 s each), spread over three files
# unevenly, so that a split by file (what is done with no history) could not.
SLEEPS = {
    "tests/test_a.py": {"slowest": 2.0, "slow": 1.5, "tiny": 0.1},
    "tests/test_b.py": {"big": 1.2, "medium": 1.0, "small": 0.4, "smaller": 0.3},
    "tests/test_c.py": {"mid": 0.8, "half": 0.5, "fifth": 0.2},
}


def suite(failing: str | None = None, note: str = "") -> dict[str, str]:
    files = {}
    for path, tests in SLEEPS.items():
        body = ["import time", f"# {note}"]
        for name, seconds in tests.items():
            body += ["", f"def test_{name}():", f"    time.sleep({seconds})"]
            if name == failing:
                body.append("    assert False, 'broken on purpose'")
        files[path] = "\n".join(body) + "\n"
    return files


def report_ids(report: bytes) -> list[str]:
    root = ET.fromstring(report)
    return [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")]


def durations(orch) -> dict[str, float]:
    db = sqlite3.connect(orch.config.db_path)
    try:
        return dict(db.execute("SELECT test_id, seconds FROM test_durations WHERE repository = 'demo'"))
    finally:
        db.close()


def nodeid(test: str) -> str:
    module, _, name = test.partition("::")
    return f"{module.replace('.', '/')}.py::{name}"


def test_a_split_suite_takes_each_test_once_from_the_shared_queue_and_fails_by_its_shard(orch) -> None:
    """Unsplit first (which records the durations), then split 4 ways: each test runs in
    exactly one shard, the merged report holds the unsplit run's test ids, each shard took
    its tests from the queue the four share, longest first, and the shards end together;
    then a test fails: the commit is failed, naming it, and only the shard that ran it is."""
    first = orch.repo.commit("suite", suite())
    orch.configure(runner={"parallelism": 4})
    assert orch.cli("run", "--once").returncode == 0
    unsplit = report_ids(orch.path(first, "junit.xml").read_bytes())
    assert len(unsplit) == 10 and orch.result(first)["shards"] == []
    recorded = durations(orch)
    assert set(recorded) == set(unsplit)

    split = orch.repo.commit("again", suite(note="again"))
    orch.configure(runner={"parallelism": 4}, repository={"shards": 4})
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(split)
    assert result["status"] == "passed" and result["tests"]["passed"] == 10, result
    merged = report_ids(orch.path(split, "junit.xml").read_bytes())
    assert sorted(merged) == sorted(unsplit)  # none missed, none twice
    shards = result["shards"]
    assert [s["index"] for s in shards] == [1, 2, 3, 4] and {s["status"] for s in shards} == {"passed"}
    assert sum(s["tests"]["total"] for s in shards) == 10
    for index in range(1, 5):
        log = orch.path(split, f"output.{index}.log").read_text()
        assert f"shard {index} of 4: taking the 10 tests from a queue shared with the other shards" in log
    # the longest test (2.0 s) bounds the split, and the queue keeps every shard near it: a
    # shard takes its next test only once free, so none takes more than one test past the
    # longest (a shard whose container starts late under load takes less, the others a test more)
    logs = [orch.path(split, f"output.{k}.log").read_text() for k in range(1, 5)]
    loads = [sum(recorded[t] for t in unsplit if f"{nodeid(t)} PASSED" in log) for log in logs]
    longest, second = sorted(recorded.values(), reverse=True)[:2]
    assert sum(loads) == pytest.approx(sum(recorded.values())) and max(loads) <= (longest + second) * 1.01, loads
    combined = orch.log(split).decode()
    assert all(f"===== shard {k} of 4: passed =====" in combined for k in range(1, 5))

    victim = "medium"
    broken = orch.repo.commit("break one", suite(failing=victim, note="broken"))
    assert orch.cli("run", "--once").returncode == 1
    result = orch.result(broken)
    assert result["status"] == "failed" and result["tests"]["failed"] == 1
    failing = [k for k in range(1, 5) if "broken on purpose" in orch.path(broken, f"output.{k}.log").read_text()]
    assert len(failing) == 1, failing
    assert [s["status"] for s in result["shards"]] == ["failed" if k in failing else "passed" for k in range(1, 5)]
    assert f"test_{victim}" in orch.path(broken, "junit.xml").read_text()
    shown = orch.cli("logs", broken[:12], "--shard", str(failing[0]))
    assert shown.returncode == 0 and "broken on purpose" in shown.stdout


def test_a_shard_removed_by_the_engine_runs_again_alone(orch) -> None:
    """No history: two shards, two tests. One shard's container is removed while it runs;
    that shard runs again in a new container, takes back the test it had claimed, the
    other is not touched, and the commit passes with every test once."""
    sha = orch.repo.commit(
        "two files",
        {
            "tests/test_one.py": "import time\n\ndef test_one():\n    time.sleep(4)\n",
            "tests/test_two.py": "import time\n\ndef test_two():\n    time.sleep(4)\n",
        },
    )
    orch.configure(repository={"shards": 2})
    proc = orch.start("run", "--once")
    running = orch.wait_for(
        lambda: [c for c in orch.containers() if c.status == "running" and c.labels.get(LABEL_SHARD) == "2/2"],
        timeout=60,
    )
    orch.engine.api.remove_container(running[0].id, force=True)
    stderr = orch.ended(proc, timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    result = orch.result(sha)
    assert result["status"] == "passed" and result["tests"]["passed"] == 2, result
    assert [(s["index"], s["attempts"]) for s in result["shards"]] == [(1, 1), (2, 2)]
    assert result["attempts"] == 1
    assert sorted(report_ids(orch.path(sha, "junit.xml").read_bytes())) == [
        "tests.test_one::test_one",
        "tests.test_two::test_two",
    ]


@pytest.mark.parametrize("split", ["queue", "fixed"])
def test_more_shards_than_tests_leaves_the_extra_ones_empty_and_passing(orch, split: str) -> None:
    """Either way of splitting: with the queue, two shards find it empty; with the fixed
    split (which shares no folder), two get an empty share."""
    count = 3
    sha = orch.repo.commit("one test", {"tests/test_only.py": "def test_only():\n    pass\n"})
    orch.configure(runner={"parallelism": 3}, repository={"shards": count, "shard_split": split})
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert result["status"] == "passed" and result["tests"]["total"] == 1, result
    assert len(result["shards"]) == count and {s["status"] for s in result["shards"]} == {"passed"}
    assert sorted(s["tests"]["total"] for s in result["shards"]) == [0, 0, 1]
    logs = [orch.path(sha, f"output.{k}.log").read_text() for k in range(1, count + 1)]
    said = "taking the 1 tests from a queue shared" if split == "queue" else "of 1 tests (by test file"
    assert all(said in log for log in logs), logs


WRITES_COVERAGE = """def test_{name}():
    lines = "".join(f'<line number="{{n}}" hits="{{h}}"/>' for n, h in enumerate({hits}, start=1))
    with open("coverage.xml", "w") as fh:   # what pytest-cov writes, for this shard's share only
        fh.write('<?xml version="1.0"?><coverage line-rate="0.5"><packages><package><classes>'
                 '<class name="mod.py" filename="mod.py"><lines>' + lines + '</lines></class>'
                 '</classes></package></packages></coverage>')
"""


def test_the_coverage_of_a_split_suite_is_that_of_its_shards_together(orch) -> None:
    """Each shard's report covers half of mod.py's lines, each another half; the commit's
    coverage is of both together (75 %: three of four lines ran), not one shard's 50 %.
    The fixed split, so that each shard runs one test (with the queue, the first shard to
    start may take both, and its second report replaces its first)."""
    sha = orch.repo.commit(
        "coverage",
        {
            "tests/test_one.py": WRITES_COVERAGE.format(name="one", hits=[1, 1, 0, 0]),
            "tests/test_two.py": WRITES_COVERAGE.format(name="two", hits=[0, 1, 1, 0]),
        },
    )
    orch.configure(repository={"shards": 2, "shard_split": "fixed"})
    assert orch.cli("run", "--once").returncode == 0
    result = orch.result(sha)
    assert result["status"] == "passed" and len(result["shards"]) == 2, result
    assert result["coverage"] == 75.0


def test_cancelling_a_split_suite_stops_every_shard(orch) -> None:
    sha = orch.repo.commit(
        "slow",
        {
            "tests/test_one.py": "import time\n\ndef test_one():\n    time.sleep(60)\n",
            "tests/test_two.py": "import time\n\ndef test_two():\n    time.sleep(60)\n",
        },
    )
    orch.configure(repository={"shards": 2}, runner={"timeout": 120})
    proc = orch.start("run", "--once")
    orch.wait_for(lambda: len([c for c in orch.containers() if c.status == "running"]) == 2, timeout=60)
    assert orch.cli("cancel", sha[:12]).returncode == 0
    stderr = orch.ended(proc, timeout=60)
    result = orch.result(sha)
    assert result["status"] == "cancelled" and [s["status"] for s in result["shards"]] == ["cancelled"] * 2, stderr
    orch.wait_for(lambda: orch.containers() == [], timeout=30)
