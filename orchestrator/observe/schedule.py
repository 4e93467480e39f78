"""Scheduled runs: at each slot of a repository's ``schedule`` (cron syntax, read by croniter,
in the dispatcher's time zone), the head of each tracked branch is tested again, even if it
was tested already: a nightly run catches what changed outside the repository (a new
release of a dependency).

The heads are the observer's progress in the store. A head's finished job is queued again
as a new attempt (``trigger: schedule``); one queued or running already is left as it is.
Scheduled jobs never coalesce a pushed commit away (coalesce.py). A slot missed while the
dispatcher was down runs once when it starts, not once per missed slot: only the newest
slot passed since the last one run counts. A schedule seen for the first time (or changed)
starts from now: it does not run for a slot before it was set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from croniter import croniter

from orchestrator.config import RepositoryConfig
from orchestrator.errors import InvalidTransition
from orchestrator.models import NORMAL_PRIORITY, SCHEDULE, JobStatus, iso
from orchestrator.store import Store

log = logging.getLogger("orchestrator.observe.schedule")

Clock = Callable[[], datetime]


def local_now() -> datetime:
    """Now, in the dispatcher's time zone (what a schedule's hours mean)."""
    return datetime.now().astimezone()


class Scheduler:
    def __init__(
        self,
        store: Store,
        repositories: Sequence[RepositoryConfig],
        queued: Callable[[], None] = lambda: None,
        clock: Clock = local_now,
    ):
        """``queued`` is told when a slot queued jobs; ``clock`` gives the time (a test's own)."""
        self.store, self.queued, self.clock = store, queued, clock
        self.schedules = {r.name: r.schedule for r in repositories if r.schedule}
        self._due: dict[str, datetime] = {}  # the next slot of each, once known

    def tick(self) -> int:
        """Run every schedule whose slot has come; how many jobs were queued."""
        queued = 0
        now = self.clock()
        for repository, expression in self.schedules.items():
            due = self._due.get(repository)
            if due is not None and now < due:
                continue
            slot = croniter(expression, now).get_prev(datetime)  # the newest slot passed
            last = self.store.schedules.last_slot(repository, expression)
            if last is not None and slot > last:
                queued += self.run(repository, expression)
            if last is None or slot > last:
                self.store.schedules.ran(repository, expression, slot)
            self._due[repository] = croniter(expression, now).get_next(datetime)
        if queued:
            self.queued()
        return queued

    def run(self, repository: str, expression: str) -> int:
        """Queue each tracked branch's head again; how many jobs."""
        count = 0
        heads = self.store.heads(repository) or {}
        for sha in dict.fromkeys(heads[b] for b in sorted(heads)):
            for job in self.store.of_commit(repository, sha):
                if not job.status.final:
                    continue
                try:
                    self.store.move(
                        job,
                        JobStatus.QUEUED,
                        trigger=SCHEDULE,
                        priority=NORMAL_PRIORITY,
                        rerun=None,
                        message=f"scheduled run ({expression})",
                    )
                    count += 1
                except InvalidTransition:  # queued by someone else meanwhile: it runs anyway
                    continue
        log.info("%s: scheduled run (%s): %d job(s) queued", repository, expression, count)
        return count


def next_runs(repositories: Sequence[RepositoryConfig], now: datetime | None = None) -> dict[str, Any]:
    """Each schedule, its time zone and its next slot (for /healthz and the dashboard)."""
    now = now or local_now()
    return {
        r.name: {
            "schedule": r.schedule,
            "time_zone": now.tzname(),
            "next": iso(croniter(r.schedule, now).get_next(datetime)),
        }
        for r in repositories
        if r.schedule
    }
