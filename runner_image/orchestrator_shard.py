"""A pytest plugin, in the runner image: keep only this container's share of the suite.

The orchestrator runs one commit's suite in N containers at once. Each one collects the
whole suite (it is the same commit in the same image, so each collects the same items),
then this plugin splits the items into N groups and deselects all but its own. Every
container computes the same split from the same inputs, so the groups are a partition:
no test runs twice, none is missed. Nothing is collected on the host.

Its inputs, from the orchestrator: ``ORCHESTRATOR_SHARD`` ("k/N", k from 1) and the plan
file ``/ci-out/shard-plan.json``: {"durations": {test id: seconds}, "unit": "test" |
"class" | "module"}. The split is the greedy longest-first one (LPT) over units: each
unit, longest first, goes to the group with the least time so far. A test with no
recorded duration counts as the median of those recorded; with none recorded at all,
units are test files weighed by their number of tests. ``unit`` keeps the tests of one
class or one module together (a costly fixture of that scope is then set up once).

So that a split that did not match can be told (a parametrisation whose ids differ from
one container to the next), the JUnit report gets two properties: ``orchestrator-shard``
and ``orchestrator-collected``, the number and a digest of the test ids collected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics

try:
    import orchestrator_protocol as protocol  # in the runner image: beside this file
except ImportError:  # from the source tree, as the orchestrator's own tests import it
    from runner_image import orchestrator_protocol as protocol

PLAN = f"{protocol.OUTPUT_DIR}/{protocol.SHARD_PLAN}"
test_id = protocol.test_id_of_node


def unit_of(nodeid: str, unit: str) -> str:
    """What a test is placed with: itself; its class (``class``; a test outside a class
    stays alone); its file (``module``)."""
    parts = nodeid.partition("[")[0].split("::")
    if unit == "module":
        return parts[0]
    if unit == "class" and len(parts) > 2:
        return "::".join(parts[:-1])
    return nodeid


def split(nodeids: list[str], count: int, durations: dict[str, float], unit: str = "test") -> list[list[str]]:
    """``nodeids`` in ``count`` groups balanced on ``durations`` (by test id), in their
    collection order within each group. Deterministic, whatever order they come in."""
    known = [durations[t] for t in map(test_id, nodeids) if t in durations]
    if not known:  # no history: whole test files, weighed by their number of tests
        unit, weight = "module", {n: 1.0 for n in nodeids}
    else:
        median = statistics.median(known)
        weight = {n: float(durations.get(test_id(n), median)) for n in nodeids}
    units: dict[str, list[str]] = {}
    for n in nodeids:
        units.setdefault(unit_of(n, unit), []).append(n)
    loads = [0.0] * count
    groups: list[set[str]] = [set() for _ in range(count)]
    for key in sorted(units, key=lambda k: (-sum(weight[n] for n in units[k]), k)):
        k = min(range(count), key=lambda i: (loads[i], i))
        loads[k] += sum(weight[n] for n in units[key])
        groups[k].update(units[key])
    return [[n for n in nodeids if n in group] for group in groups]


def digest(nodeids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(nodeids)).encode()).hexdigest()[:16]


class Shard:
    """The plugin object, registered by the entrypoint when ``ORCHESTRATOR_SHARD`` is set."""

    def __init__(self, index: int, count: int, plan: dict):
        self.index, self.count = index, count
        self.durations = {
            str(k): float(v) for k, v in (plan.get("durations") or {}).items() if isinstance(v, (int, float))
        }
        self.unit = str(plan["unit"]) if plan.get("unit") in ("test", "class", "module") else "test"
        self.collected = 0  # tests collected in all (this shard may have none of them)

    @classmethod
    def from_environment(cls) -> Shard | None:
        spec = os.environ.get(protocol.SHARD, "")
        match = re.fullmatch(r"(\d+)/(\d+)", spec)
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            return None
        try:
            with open(PLAN, encoding="utf-8") as fh:
                plan = json.load(fh)
        except (OSError, ValueError):
            plan = {}
        return cls(int(match.group(1)), int(match.group(2)), plan if isinstance(plan, dict) else {})

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        nodeids = [item.nodeid for item in items]
        self.collected = len(nodeids)
        mine = set(split(nodeids, self.count, self.durations, self.unit)[self.index - 1])
        keep = [item for item in items if item.nodeid in mine]
        dropped = [item for item in items if item.nodeid not in mine]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        basis = "by recorded durations" if self.durations else "by test file: no durations recorded yet"
        print(
            f"\norchestrator: shard {self.index} of {self.count}: {len(keep)} of {len(nodeids)} tests ({basis})",
            flush=True,
        )
        self._tell_report(config, len(nodeids), digest(nodeids))

    def _tell_report(self, config, collected: int, ids: str) -> None:
        try:
            from _pytest.junitxml import xml_key

            xml = config.stash.get(xml_key, None)
        except ImportError:  # an older pytest: the report only lacks the check
            xml = None
        if xml is not None:
            xml.add_global_property(protocol.SHARD_PROPERTY, f"{self.index}/{self.count}")
            xml.add_global_property(protocol.COLLECTED_PROPERTY, f"{collected}:{ids}")
