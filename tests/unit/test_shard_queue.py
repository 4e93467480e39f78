"""The shared queue of a split suite on one engine (runner_image/orchestrator_shard.py),
with real pytest processes on the host standing in for the shard containers: they take
units from one claims folder at once. The real containers are in
tests/integration/test_shards.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from orchestrator.results.report import Report
from orchestrator.run.sharding import unrun
from runner_image import orchestrator_protocol as protocol
from runner_image import orchestrator_shard as plugin

RUNNER = Path(__file__).resolve().parents[2] / "runner_image"

# what the entrypoint does with the plugin, in a process of its own
SHARD_MAIN = textwrap.dedent(
    """
    import sys, pytest
    from orchestrator_shard import Shard
    shard = Shard.from_environment()
    assert shard is not None and shard.claims is not None
    sys.exit(int(pytest.main(["tests", "-p", "no:cacheprovider", "-q", "--junitxml", sys.argv[1]], plugins=[shard])))
    """
)


def write_suite(root: Path, events: Path, slow: float = 1.0) -> None:
    """Two files of tests sharing a session and a module fixture that log their set-ups
    and tear-downs, one slow test, and a test that says which shard ran it."""
    tests = root / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import os, pytest

            def note(what):
                with open({str(events)!r}, "a") as fh:
                    fh.write(f"{{os.environ['{protocol.SHARD}']}} {{what}}\\n")

            @pytest.fixture(scope="session")
            def session_thing():
                note("session-up")
                yield
                note("session-down")

            @pytest.fixture(scope="module")
            def module_thing(request):
                note(f"module-up {{request.module.__name__}}")
                yield
                note(f"module-down {{request.module.__name__}}")
            """
        )
    )
    for name in ("a", "b"):
        body = ["import time", ""]
        for i in range(6):
            seconds = slow if (name, i) == ("a", 0) else 0.02
            body += [
                f"def test_{name}{i}(session_thing, module_thing):",
                f"    time.sleep({seconds})",
                "",
            ]
        (tests / f"test_{name}.py").write_text("\n".join(body))


def run_shards(root: Path, claims: Path, count: int, only: int | None = None, tries: int = 1) -> list[Path]:
    """``count`` shards at once over ``root``'s suite (or shard ``only`` of them, on its
    try ``tries``), each a pytest process; their reports."""
    procs, reports = [], []
    for k in [only] if only else range(1, count + 1):
        report = root / f"junit-{k}.xml"
        env = {
            **os.environ,
            "PYTHONPATH": str(RUNNER),
            protocol.SHARD: f"{k}/{count}",
            protocol.SHARD_CLAIMS: str(claims),
            protocol.SHARD_TRY: str(tries),
        }
        procs.append(subprocess.Popen([sys.executable, "-c", SHARD_MAIN, str(report)], cwd=root, env=env))
        reports.append(report)
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    return reports


def ran(report: Path) -> list[str]:
    return [case.get("name") for case in ET.parse(report).getroot().iter("testcase")]


def test_shards_take_each_test_once_from_the_queue_and_an_idle_one_takes_more(tmp_path: Path) -> None:
    """Two shards, no history: every test runs exactly once; the one that got the slow
    test runs few others, the other takes the rest; fixtures are torn down as they were
    set up, the session's once per shard; the counts add up for the host's check."""
    events, claims = tmp_path / "events", tmp_path / "claims"
    claims.mkdir()
    write_suite(tmp_path, events, slow=1.5)
    reports = run_shards(tmp_path, claims, 2)
    everything = Counter(name for report in reports for name in ran(report))
    assert sorted(everything) == sorted(f"test_{f}{i}" for f in "ab" for i in range(6))
    assert set(everything.values()) == {1}
    slow_shard = next(r for r in reports if "test_a0" in ran(r))
    other = next(r for r in reports if r is not slow_shard)
    assert len(ran(other)) >= 9, (ran(slow_shard), ran(other))  # took the rest while the slow one slept
    lines = events.read_text().splitlines()
    for k in ("1/2", "2/2"):
        own = [line.split(" ", 1)[1] for line in lines if line.startswith(k + " ")]
        assert own.count("session-up") == own.count("session-down") == 1, own
        for module in ("test_a", "test_b"):
            assert own.count(f"module-up {module}") == own.count(f"module-down {module}"), own
    owners = Counter(os.readlink(claims / name) for name in os.listdir(claims))  # one claim per unit (test)
    assert sum(owners.values()) == 12 and owners[slow_shard.name[-5]] == len(ran(slow_shard))
    assert unrun([Report(r.read_bytes()) for r in reports]) is None


def test_a_shard_run_again_takes_back_its_own_claims_first(tmp_path: Path) -> None:
    """Shard 2's first container claimed units 0 and 3 and was lost; shard 1 had unit 1.
    Run again, shard 2 runs its own two, then every unit nobody has, and never unit 1."""
    events, claims = tmp_path / "events", tmp_path / "claims"
    claims.mkdir()
    write_suite(tmp_path, events, slow=0.02)
    nodeids = sorted(f"tests/test_{f}.py::test_{f}{i}" for f in "ab" for i in range(6))
    queue = plugin.units_in_order(nodeids, {})
    os.symlink("2", claims / "0")
    os.symlink("1", claims / "1")
    os.symlink("2", claims / "3")
    (report,) = run_shards(tmp_path, claims, 2, only=2, tries=2)
    names = [n.rpartition("::")[2] for n in nodeids]
    expected = [names[p] for number in (0, 3) for p in queue[number]]
    expected += [names[p] for number in range(len(queue)) if number not in (0, 1, 3) for p in queue[number]]
    assert ran(report) == expected
    assert sorted(os.listdir(claims), key=int) == [str(n) for n in range(len(queue))]
    assert {os.readlink(claims / str(n)) for n in range(len(queue)) if n != 1} == {"2"}


def test_with_nothing_left_the_next_unit_is_false_and_its_chain_empty() -> None:
    taken = iter([])
    nothing = plugin.NextUnit(lambda: next(taken, None))
    assert not nothing and nothing.listchain() == [] and nothing.resolve() is None

    class Item:
        name = "test_x"

        def listchain(self) -> list[str]:
            return ["session", "module", "test_x"]

    calls = []
    later = plugin.NextUnit(lambda: calls.append(1) or Item())
    assert calls == []  # nothing is taken until pytest asks
    assert later and later.listchain() == ["session", "module", "test_x"] and later.name == "test_x"
    assert calls == [1]  # taken once, however often it is asked


def test_the_host_tells_shards_whose_counts_do_not_add_up() -> None:
    def report(ran: int, collected: str = "4:abc") -> Report:
        props = (
            f'<property name="{protocol.COLLECTED_PROPERTY}" value="{collected}"/>'
            f'<property name="{protocol.RAN_PROPERTY}" value="{ran}"/>'
        )
        return Report(
            f'<testsuites><testsuite tests="{ran}"><properties>{props}</properties></testsuite></testsuites>'.encode()
        )

    assert unrun([report(1), report(3)]) is None
    assert unrun([report(2), report(3)]) == "the shards ran 5 tests in all, not once each of the 4 they collected"
    assert unrun([report(2), Report(b"<testsuite/>")]) is None  # a shard that stopped early says nothing
