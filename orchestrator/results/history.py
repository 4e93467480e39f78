"""Test history: every test case of every job's JUnit report, recorded in bulk when the
job ends (store/tests.py keeps it), and what it tells about a failing test: since when it
fails on the branch, and how often it failed in the runs before. A commit on several
Pythons has a history per variant: each of these reads follows one Python, and a test's
record says where else the same commit failed or passed ("fails on 3.14 only").

A test's id is what its JUnit report calls it, ``<classname>::<name>``
(``tests.test_a.TestX::test_y[1]``). Only each job's current attempt counts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from orchestrator.models import Job
from orchestrator.results.report import Report, outcome, test_id
from orchestrator.store import Store
from orchestrator.store.tests import Run

MAX_CASES = 100_000  # test cases recorded per job: a report with more is a suite of that size, or hostile
RECENT = 20  # runs a failing test's record looks back over


@dataclass(frozen=True)
class Case:
    test_id: str
    outcome: str  # passed, failed, error, skipped
    seconds: float
    rerun: bool = False  # from a counted re-run of the failed tests (verdict.suites)


_BAD = {"failed": 1, "error": 1}


def cases(report: Report, reruns: int = 0) -> list[Case]:
    """The report's test cases, its own suites' first, then its counted re-runs' (report.py)."""
    found = []
    for case, rerun in report.cases(reruns):
        try:
            seconds = max(0.0, float(case.get("time") or 0))
        except ValueError:
            seconds = 0.0
        found.append(Case(test_id(case), outcome(case), seconds, rerun))
        if len(found) >= MAX_CASES:
            break
    return found


def record(store: Store, job: Job, report: Report, reruns: int = 0) -> int:
    """The cases of ``job``'s current attempt, each as it ended (a counted re-run's outcome
    wins), ``flaky`` for one that failed and then passed when re-run; how many rows."""
    found: dict[str, Case] = {}
    for case in cases(report, reruns):  # a test named twice by its own suites: the worse
        if (
            case.rerun
            or case.test_id not in found
            or _BAD.get(case.outcome, 0) > _BAD.get(found[case.test_id].outcome, 0)
        ):
            found[case.test_id] = case
    if found:
        store.tests.record(
            job.id,
            job.attempts,
            job.repository,
            [(c.test_id, "flaky" if c.test_id in job.flaky else c.outcome, c.seconds) for c in found.values()],
            [(c.test_id, c.seconds) for c in found.values() if c.outcome == "passed"],
            job.python,
        )
    if job.rerun:  # only the failed tests ran: the suite's other outcomes are carried over
        store.tests.carry(job.id, job.rerun["of_attempt"], job.attempts, list(found))
    return len(found)


class History:
    def __init__(self, store: Store):
        self.store = store

    def runs(
        self,
        repository: str,
        test_id: str,
        branch: str | None = None,
        before: int | None = None,
        limit: int = 100,
        python: str | None = None,
    ) -> list[Run]:
        """The test's outcome in the newest jobs of ``branch`` (any, if None) on ``python``
        (any variant, if None), newest first."""
        return self.store.tests.runs(repository, test_id, branch, before, limit, python)

    def flaky(self, repository: str, jobs: int = 500, limit: int = 50) -> list[dict]:
        """Tests that flip, ranked by flip rate over the newest ``jobs`` jobs: a flip is a
        change of outcome between two consecutive runs (in job order, whatever the branch),
        or a run that passed only when re-run; a test that never failed there is left out."""
        rows = self.store.tests.failing_tests_runs(repository, jobs)
        by_test: dict[tuple[str, str], list[tuple[str, str]]] = {}  # a variant's runs flip on their own
        for test, python, ended, commit in rows:
            by_test.setdefault((test, python), []).append((ended, commit))
        ranked: list[dict[str, Any]] = []
        for (test, python), runs in by_test.items():
            outcomes = ["failed" if o == "error" else o for o, _ in runs]
            flips = sum(1 for a, b in itertools.pairwise(outcomes) if a != b and "skipped" not in (a, b))
            flips += outcomes.count("flaky")
            if flips:
                ranked.append(
                    {
                        "test_id": test,
                        "python": python or None,
                        "runs": len(runs),
                        "flips": flips,
                        "flip_rate": round(flips / len(runs), 3),
                        "flaky_runs": outcomes.count("flaky"),
                        "last": runs[-1][0],
                        "last_commit": runs[-1][1],
                    }
                )
        return sorted(ranked, key=lambda r: (-r["flip_rate"], -r["flips"], r["test_id"]))[:limit]

    def outcomes(self, repository: str, test_id: str, commits: list[str], python: str = "") -> dict[str, str]:
        """The test's outcome at each of ``commits`` tested on ``python`` (its job's current attempt)."""
        return self.store.tests.outcomes(repository, test_id, commits, python)

    def record_of(self, job: Job, test_id: str, parents: dict[str, list[str]] | None = None) -> dict:
        """What the job page says of one failing test: ``since`` (the first commit of the
        failing streak that ends with this job, and its length) or None for a new failure;
        how many of the RECENT runs before failed; their outcomes, oldest first.

        With ``parents`` (the commit graph before the job's commit, mirror.parents) the
        streak follows Git history: back through each parent where the test failed too, so
        that a failure merged in from a side branch is dated from where it began there;
        commits that were never tested (skipped) are stepped over. Without, it follows the
        branch's jobs in the order they were tested."""
        branch = job.branches[0] if job.branches else None
        earlier = self.runs(job.repository, test_id, branch, before=job.id, limit=RECENT, python=job.python)
        if parents:
            since, streak = self._streak_in_history(job, test_id, parents)
        else:
            streak, since = 1, job.commit
            for run in earlier:
                if run.outcome not in ("failed", "error"):
                    break
                streak, since = streak + 1, run.commit
        return {
            "test_id": test_id,
            "since": {"commit": since, "commits": streak} if streak > 1 else None,
            "failed_recent": sum(1 for r in earlier if r.outcome in ("failed", "error")),
            "recent": [r.outcome for r in reversed(earlier)],
            "branch": branch,
            **self._elsewhere(job, test_id),
        }

    def _elsewhere(self, job: Job, test_id: str) -> dict[str, Any]:
        """Of a variant's failing test: on which of the commit's Pythons it failed, and on
        which it passed, and that in words ("fails on 3.14 only (passes on 3.11, 3.13)")."""
        if not job.python:
            return {}
        from orchestrator.results import variants

        found = self.store.tests.by_python(job.repository, test_id, job.commit)
        order = [j.python for j in variants.ordered(self.store.of_commit(job.repository, job.commit))]
        failed = [p for p in order if found.get(p) in ("failed", "error")]
        passed = [p for p in order if found.get(p) in ("passed", "flaky")]
        words = None
        if failed and passed:
            words = f"fails on {', '.join(failed)} only (passes on {', '.join(passed)})"
        elif failed and len(failed) > 1:
            words = f"fails on every Python it ran on ({', '.join(failed)})"
        return {"pythons": {"failed": failed, "passed": passed, "words": words}}

    def _streak_in_history(self, job: Job, test_id: str, parents: dict[str, list[str]]) -> tuple[str, int]:
        known = self.outcomes(job.repository, test_id, list(parents), job.python)
        since, streak, current = job.commit, 1, job.commit
        for _ in range(len(parents)):
            step = None
            for parent in parents.get(current, []):
                cursor = parent  # past untested commits, along their first parents
                while cursor in parents and cursor not in known and parents[cursor]:
                    cursor = parents[cursor][0]
                if known.get(cursor) in ("failed", "error"):
                    step = cursor
                    break
            if step is None:
                break
            since, streak, current = step, streak + 1, step
        return since, streak
