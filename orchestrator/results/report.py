"""A JUnit report, parsed once, and everything read from it: the counts, the flaky tests,
the failures with their messages, each test case as it ended, the errors that name a
cause, a shard's collection property; and the shards' reports merged into one.

The report was written by the code under test, so it is read as untrusted data (its bytes
are read elsewhere as a regular file, size-capped): a report that does not parse is an
empty one, never an exception. Re-run suites count only as ``suites`` says.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.models import TestCounts
from runner_image import orchestrator_protocol as protocol


def test_id(case: ET.Element) -> str:
    """A test case's id, as everything here names it: ``<classname>::<name>`` (the protocol's rule)."""
    return protocol.test_id(case.get("classname") or "", case.get("name") or "")


def outcome(case: ET.Element) -> str:
    """passed, failed, error or skipped."""
    return next(
        (
            o
            for tag, o in (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))
            if case.find(tag) is not None
        ),
        "passed",
    )


class Report:
    __test__ = False  # not a pytest test class

    def __init__(self, data: bytes | None):
        self.data = data
        try:
            root = ET.fromstring(data) if data else None
        except ET.ParseError:
            root = None
        self.root = root if root is not None and root.tag in ("testsuite", "testsuites") else None

    def __bool__(self) -> bool:
        return self.root is not None

    def suites(self, reruns: int) -> tuple[list[ET.Element], list[ET.Element]]:
        """The report's own test suites, and the re-runs of its failed tests that the
        entrypoint appended: a suite counts as a re-run only when ``reruns`` are configured,
        only if it is named ``orchestrator-rerun-<k>`` for k from 1 to ``reruns``, and each k
        only once (the first); any other suite is the suite's own, whatever its name."""
        if self.root is None:
            return [], []
        found = [self.root] if self.root.tag == "testsuite" else self.root.findall("testsuite")
        own: list[ET.Element] = []
        rerun: dict[int, ET.Element] = {}
        for suite in found:
            name = suite.get("name") or ""
            k = name.removeprefix(protocol.RERUN_SUITE)
            if (
                reruns
                and name.startswith(protocol.RERUN_SUITE)
                and k.isdigit()
                and 1 <= int(k) <= reruns
                and int(k) not in rerun
            ):
                rerun[int(k)] = suite
            else:
                own.append(suite)
        return own, [rerun[k] for k in sorted(rerun)]

    def counts(self, reruns: int = 0) -> TestCounts | None:
        """The counts of its own suites; a test that failed and then passed when re-run is
        counted as passed. None for a report that cannot be read."""
        if self.root is None:
            return None
        own, rerun = self.suites(reruns)
        totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for suite in own:
            for key in totals:
                try:
                    totals[key] += int(suite.get(key, "0"))
                except ValueError:
                    return None
        passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
        counts = TestCounts(
            total=totals["tests"],
            passed=max(passed, 0),
            failed=totals["failures"],
            errors=totals["errors"],
            skipped=totals["skipped"],
        )
        recovered = _recovered(own, rerun)
        if recovered:
            failed = sum(1 for kind in recovered.values() if kind == "failed")
            errors = len(recovered) - failed
            counts = TestCounts(
                total=counts.total,
                passed=counts.passed + len(recovered),
                failed=max(counts.failed - failed, 0),
                errors=max(counts.errors - errors, 0),
                skipped=counts.skipped,
            )
        return counts

    def flaky(self, reruns: int = 0) -> list[str]:
        """The tests that failed and then passed when re-run in the same container."""
        return sorted(_recovered(*self.suites(reruns)))

    def failing(self, reruns: int = 0) -> set[str]:
        """The tests that failed or erred in the end: a counted re-run's outcome wins."""
        ended: dict[str, str] = {}
        for case, rerun in self.cases(reruns):
            test, now = test_id(case), outcome(case)
            if rerun or ended.get(test) not in ("failed", "error"):
                ended[test] = now
        return {test for test, now in ended.items() if now in ("failed", "error")}

    def cases(self, reruns: int = 0) -> Iterator[tuple[ET.Element, bool]]:
        """Every test case, and whether it is a counted re-run's: its own suites' first,
        then the re-runs' (so that, read in order, a re-run's outcome comes last)."""
        own, rerun = self.suites(reruns)
        for suite in own:
            yield from ((case, False) for case in suite.iter("testcase"))
        for suite in rerun:
            yield from ((case, True) for case in suite.iter("testcase"))

    def errors(self) -> list[ET.Element]:
        return list(self.root.iter("error")) if self.root is not None else []

    def failures(self, limit: int = 50) -> list[dict[str, Any]]:
        """The failed and errored tests, each once with how many of its runs failed
        (``tries``: a test that failed again when re-run is one entry, not two), with the
        first failure's message, for the job page: what a user wants to see first."""
        found: dict[str, dict[str, Any]] = {}
        for case in self.root.iter("testcase") if self.root is not None else ():
            node = next((n for n in (case.find("failure"), case.find("error")) if n is not None), None)
            if node is None:
                continue
            test = test_id(case)
            if test in found:
                found[test]["tries"] += 1
            elif len(found) < limit:
                found[test] = {
                    "test": test,
                    "kind": node.tag,
                    "message": (node.get("message") or "")[:2000],
                    "details": (node.text or "")[:8000],
                    "tries": 1,
                }
        return list(found.values())

    def property(self, name: str) -> str | None:
        """The value of a ``<property>`` of the report (a shard's ``orchestrator-collected``)."""
        for prop in self.root.iter("property") if self.root is not None else ():
            if prop.get("name") == name:
                return prop.get("value")
        return None


def merge(reports: Sequence[Report]) -> Report:
    """The shards' reports as one: every testsuite of each, in shard order."""
    merged = ET.Element("testsuites")
    for report in reports:
        if report.root is not None:
            for suite in [report.root] if report.root.tag == "testsuite" else report.root.findall("testsuite"):
                merged.append(suite)
    return Report(ET.tostring(merged, encoding="utf-8", xml_declaration=True) if len(merged) else None)


def _recovered(own: list[ET.Element], rerun: list[ET.Element]) -> dict[str, str]:
    """test id -> how it failed first ("failed" or "error"), for each test whose last re-run passed."""
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for suite in own:
        for case in suite.iter("testcase"):
            if (ended := outcome(case)) in ("failed", "error"):
                first[test_id(case)] = ended
    for suite in rerun:
        for case in suite.iter("testcase"):
            last[test_id(case)] = outcome(case)
    return {test: kind for test, kind in first.items() if last.get(test) == "passed"}
