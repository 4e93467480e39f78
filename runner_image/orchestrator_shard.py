"""A pytest plugin, in the runner image: run only this container's share of the suite.

The orchestrator runs one commit's suite in N containers at once. Each one collects the
whole suite (it is the same commit in the same image, so each collects the same items),
then this plugin splits the items into N groups and deselects all but its own. Every
container computes the same split from the same inputs, so the groups are a partition:
no test runs twice, none is missed. Nothing is collected on the host.

Its inputs, from the orchestrator: ``protocol.SHARD`` ("k/N", k from 1) and the plan
file ``/ci-out/shard-plan.json``: {"durations": {test id: seconds}, "unit": "test" |
"class" | "module"}. The split is the greedy longest-first one (LPT) over units: each
unit, longest first, goes to the group with the least time so far. A test with no
recorded duration counts as the median of those recorded; with none recorded at all,
units are test files weighed by their number of tests. ``unit`` keeps the tests of one
class or one module together (a costly fixture of that scope is then set up once).

On one engine the shards also share a folder (``protocol.SHARD_CLAIMS``, mounted at
/ci-claims), and then no share is fixed in advance: every shard keeps the whole collection
and takes units one at a time, in the same longest-first order, from that shared queue. A
unit is taken by creating its claim, a symbolic link named after the unit's place in the
order and pointing at the shard's index: creating it is atomic, so exactly one shard gets
each unit, and a shard that finishes early takes the next unit while a slow one is still
in its test. The recorded durations then only order the queue; a test that got slower than
recorded, or a suite with no history, no longer unbalances the split. A shard run again
(its container was lost) first takes back the units it had claimed, then goes on. A Swarm's
tasks share no folder: they keep the fixed split.

So that a split that did not match can be told (a parametrisation whose ids differ from
one container to the next), the JUnit report gets three properties: ``orchestrator-shard``,
``orchestrator-collected``, the number and a digest of the test ids collected, and
``orchestrator-ran``, how many of them this shard ran (the shards' must add up).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # as the host's checks see it
    import pytest

    from runner_image import orchestrator_protocol as protocol
else:
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


def weights(nodeids: list[str], durations: dict[str, float], unit: str, by_file: bool) -> tuple[str, list[float]]:
    """The unit to place by and each test's weight: its recorded duration (the median of
    those recorded, for a test with none), or with no history at all, 1 per test (and, if
    ``by_file``, whole test files as units: a fixed split's best guess)."""
    known = [durations[t] for t in map(test_id, nodeids) if t in durations]
    if not known:
        return "module" if by_file else unit, [1.0] * len(nodeids)
    median = statistics.median(known)
    return unit, [float(durations.get(test_id(n), median)) for n in nodeids]


def units_in_order(
    nodeids: list[str], durations: dict[str, float], unit: str = "test", by_file: bool = False
) -> list[list[int]]:
    """The tests' positions grouped into units (in collection order within each), the
    heaviest unit first, ties by their first test's id. Deterministic, so every shard
    computes the same queue."""
    unit, weight = weights(nodeids, durations, unit, by_file)
    units: dict[str, list[int]] = {}
    for position, n in enumerate(nodeids):
        units.setdefault(unit_of(n, unit), []).append(position)
    return sorted(units.values(), key=lambda members: (-sum(weight[p] for p in members), nodeids[members[0]]))


def split(nodeids: list[str], count: int, durations: dict[str, float], unit: str = "test") -> list[list[str]]:
    """``nodeids`` in ``count`` groups balanced on ``durations`` (by test id), in their
    collection order within each group. Deterministic, whatever order they come in."""
    _, weight = weights(nodeids, durations, unit, by_file=True)
    loads = [0.0] * count
    groups: list[set[int]] = [set() for _ in range(count)]
    for members in units_in_order(nodeids, durations, unit, by_file=True):
        k = min(range(count), key=lambda i: (loads[i], i))
        loads[k] += sum(weight[p] for p in members)
        groups[k].update(members)
    return [[n for p, n in enumerate(nodeids) if p in group] for group in groups]


class Claims:
    """The shared queue: unit ``number`` belongs to the shard that created
    ``<folder>/<number>``, a symbolic link to its index (creating one is atomic: of two
    shards, one gets it and the other sees it exists)."""

    def __init__(self, folder: str, index: int):
        self.folder, self.index = folder, index

    def take(self, number: int) -> bool:
        try:
            os.symlink(str(self.index), os.path.join(self.folder, str(number)))
            return True
        except FileExistsError:
            return False

    def mine(self, number: int) -> bool:
        try:
            return os.readlink(os.path.join(self.folder, str(number))) == str(self.index)
        except OSError:
            return False

    def taken(self, count: int, again: bool) -> Iterator[int]:
        """The units this shard runs, as it takes them: on a try after the first, those it
        had claimed before, then every unit no shard has, in the queue's order. Each number
        is tried once: a claim is never given back."""
        if again:
            yield from (number for number in range(count) if self.mine(number))
        yield from (number for number in range(count) if self.take(number))


def digest(nodeids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(nodeids)).encode()).hexdigest()[:16]


class NextUnit:
    """The test after a unit's last one, as pytest is given it: not known until pytest asks.

    pytest wants the next test when it starts one (``nextitem``), but reads it only when it
    tears that test down, to keep the fixtures both share (``bool(nextitem)``, then
    ``nextitem.listchain()``). Handing it this instead lets a shard take its next unit from
    the queue then, after the test ran, rather than reserve a unit while the test runs; with
    nothing left it is false, and pytest tears everything down as after a last test."""

    def __init__(self, take: Callable[[], pytest.Item | None]):
        self._take = take
        self._resolved = False
        self.item: pytest.Item | None = None

    def resolve(self) -> pytest.Item | None:
        if not self._resolved:
            self._resolved = True
            self.item = self._take()
        return self.item

    def __bool__(self) -> bool:
        return self.resolve() is not None

    def listchain(self) -> list:
        item = self.resolve()
        return item.listchain() if item is not None else []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_take", "_resolved", "item"):
            raise AttributeError(name)
        item = self.resolve()
        if item is None:
            raise AttributeError(name)
        return getattr(item, name)


class Shard:
    """The plugin object, registered by the entrypoint when ``protocol.SHARD`` is set."""

    def __init__(self, index: int, count: int, plan: dict, claims: str | None = None, tries: int = 1):
        self.index, self.count, self.tries = index, count, tries
        self.claims = Claims(claims, index) if claims else None
        self.queue: list[list[int]] = []  # the shared queue's units, when it has one
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
        claims = os.environ.get(protocol.SHARD_CLAIMS) or None
        tries = os.environ.get(protocol.SHARD_TRY, "")
        return cls(
            int(match.group(1)),
            int(match.group(2)),
            plan if isinstance(plan, dict) else {},
            claims if claims and os.path.isdir(claims) else None,
            int(tries) if tries.isdigit() else 1,
        )

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        nodeids = [item.nodeid for item in items]
        self.collected = len(nodeids)
        if self.claims is not None:  # every item kept: the run loop takes units from the shared queue
            self.queue = units_in_order(nodeids, self.durations, self.unit)
            basis = "longest first, by recorded durations" if self.durations else "by id: no durations recorded yet"
            print(
                f"\norchestrator: shard {self.index} of {self.count}: taking the {len(nodeids)} tests "
                f"from a queue shared with the other shards, {len(self.queue)} units, {basis}",
                flush=True,
            )
        else:
            basis = "by recorded durations" if self.durations else "by test file: no durations recorded yet"
            mine = set(split(nodeids, self.count, self.durations, self.unit)[self.index - 1])
            keep = [item for item in items if item.nodeid in mine]
            dropped = [item for item in items if item.nodeid not in mine]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = keep
            self._tell_report(config, **{protocol.RAN_PROPERTY: str(len(keep))})
            print(
                f"\norchestrator: shard {self.index} of {self.count}: {len(keep)} of {len(nodeids)} tests ({basis})",
                flush=True,
            )
        self._tell_report(
            config,
            **{
                protocol.SHARD_PROPERTY: f"{self.index}/{self.count}",
                protocol.COLLECTED_PROPERTY: f"{len(nodeids)}:{digest(nodeids)}",
            },
        )

    def pytest_runtestloop(self, session: pytest.Session) -> object:
        """pytest's own loop, over the units this shard takes as it goes: the next unit is
        taken only once the current unit's last test has run, when pytest tears it down
        (see ``NextUnit``), so a shard never holds a unit it has not started. None (pytest's
        own loop) with no shared queue."""
        if self.claims is None:
            return None
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(f"{session.testsfailed} errors during collection")
        if session.config.option.collectonly:
            return True
        items = list(session.items)
        numbers = self.claims.taken(len(self.queue), again=self.tries > 1)
        pending: deque[int] = deque()
        ran: set[int] = set()

        def take_next() -> pytest.Item | None:
            for number in numbers:
                pending.extend(self.queue[number])
                return items[pending[0]]
            return None

        take_next()
        while pending:
            position = pending.popleft()
            nextitem = items[pending[0]] if pending else NextUnit(take_next)
            items[position].config.hook.pytest_runtest_protocol(item=items[position], nextitem=nextitem)
            if isinstance(nextitem, NextUnit):
                nextitem.resolve()  # taken now if pytest did not ask (a stop, or a plugin's own teardown)
            ran.add(position)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
        others = [item for position, item in enumerate(items) if position not in ran]
        if others:  # run by the other shards: counted as deselected here, as with the fixed split
            session.config.hook.pytest_deselected(items=others)
        self._tell_report(session.config, **{protocol.RAN_PROPERTY: str(len(ran))})
        return True

    def _tell_report(self, config: pytest.Config, **properties: str) -> None:
        try:
            from _pytest.junitxml import xml_key

            xml = config.stash.get(xml_key, None)
        except ImportError:  # an older pytest: the report only lacks the check
            xml = None
        if xml is not None:
            for name, value in properties.items():
                xml.add_global_property(name, value)
