"""Finds every new commit on the tracked branches of each repository.

The observer owns no state of its own: the last seen heads live with the dispatcher
(the store, or the store behind the HTTP API), and are advanced in the same transaction
that queues the commits found. If delivery fails, nothing advances and the next poll finds
the same commits again.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from orchestrator.backoff import Backoff
from orchestrator.config import RepositoryConfig
from orchestrator.errors import OrchestratorError, RepositoryError
from orchestrator.models import utcnow
from orchestrator.observe.mirror import Mirror, Mirrors
from orchestrator.store import NewCommit

log = logging.getLogger("orchestrator.observe.observer")

MAX_BACKOFF = 300.0
POLLERS = 8  # repositories polled at a time
TICK = 0.5  # seconds between looks at the refs of repositories on this machine (stat only)


class CommitSink(Protocol):
    """Where found commits go: the store itself, or the dispatcher's HTTP API."""

    def heads(self, repository: str) -> dict[str, str] | None: ...

    def record_commits(
        self, repository: str, commits: list[NewCommit], heads: dict[str, str] | None = None
    ) -> object: ...


@dataclass(frozen=True)
class Discovery:
    commits: list[NewCommit]
    heads: dict[str, str]


@dataclass(frozen=True)
class RepositoryHealth:
    """How the last poll of a repository went: what /healthz and the dashboard show."""

    ok: bool = True
    error: str | None = None
    since: datetime | None = None  # the first failure of the current run of them


def discover(
    mirror: Mirror, repo: RepositoryConfig, seen: dict[str, str] | None, branches: dict[str, str] | None = None
) -> Discovery | None:
    """What changed since ``seen`` (None: never observed), or None if nothing did.

    First sight queues only the branch heads. After that, every commit not reachable from
    a head already seen, parents first; a branch moved to a commit that is already known
    (a new branch at an old commit, a reset) gets that commit, so every branch has a job
    for its head.
    """
    current = {b: sha for b, sha in (mirror.branches() if branches is None else branches).items() if repo.tracks(b)}
    if seen is None:
        return Discovery(_heads_only(mirror, current), current)
    changed = {b: sha for b, sha in current.items() if seen.get(b) != sha}
    if not changed:
        return None if current == seen else Discovery([], current)
    exclude = sorted(set(seen.values()))
    found = mirror.new_commits(sorted(set(changed.values())), exclude)
    on: dict[str, set[str]] = {sha: set() for sha, _ in found}  # each new commit's branches
    if len(changed) == 1:
        for names in on.values():
            names.update(changed)
    else:
        for name, head in changed.items():
            for sha in mirror.reachable(head, exclude):
                on.setdefault(sha, set()).add(name)
    commits = [NewCommit(sha, subject, tuple(sorted(on[sha]))) for sha, subject in found]
    known_heads = {sha: names for sha, names in _by_sha(changed).items() if sha not in on}
    commits += _with_subjects(mirror, known_heads)
    return Discovery(commits, current)


def _by_sha(heads: dict[str, str]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = defaultdict(set)
    for name, sha in heads.items():
        grouped[sha].add(name)
    return grouped


def _heads_only(mirror: Mirror, heads: dict[str, str]) -> list[NewCommit]:
    return _with_subjects(mirror, _by_sha(heads))


def _with_subjects(mirror: Mirror, grouped: dict[str, set[str]]) -> list[NewCommit]:
    subjects = mirror.subjects(sorted(grouped))
    return [NewCommit(sha, subjects.get(sha, ""), tuple(sorted(names))) for sha, names in grouped.items()]


class Observer:
    def __init__(
        self, repositories: Sequence[RepositoryConfig], poll_interval: float, mirrors: Mirrors, sink: CommitSink
    ):
        self._repositories = {r.name: r for r in repositories}
        self._poll_interval = poll_interval
        self._sink = sink
        self.mirrors = mirrors
        self._retry_at: dict[str, float] = {}
        self._backoff = {r.name: Backoff(poll_interval, MAX_BACKOFF) for r in repositories}
        self._health = {r.name: RepositoryHealth() for r in repositories}
        self.failures: Counter[str] = Counter()  # polls that failed, per repository (for /metrics)
        # each repository's heads when its commits were last delivered: the cheap check's reference
        self._delivered: dict[str, dict[str, str]] = {}
        self._stamps: dict[str, tuple] = {}  # a local repository's refs when last looked at (watch_once)
        self._next_at: dict[str, float] = {}  # when a repository elsewhere is looked at next
        self._unmatched_said: set[tuple[str, str]] = set()

    def health(self) -> dict[str, RepositoryHealth]:
        return dict(self._health)

    def poll_once(self) -> int:
        """Fetch and deliver every repository that is not backing off; return how many
        commits were queued. A failing repository, whatever the failure, is reported and
        retried later, with growing delays, while the others go on."""
        return self._poll_all([name for name in self._repositories if time.monotonic() >= self._retry_at.get(name, 0)])

    def _poll_all(self, due: list[str]) -> int:
        if len(due) <= 1:
            return sum(self._poll_due(name) for name in due)
        # git waits on the network or the disk, not on this process: several at a time, so
        # that a round of many repositories takes a fraction of the poll interval
        with ThreadPoolExecutor(min(POLLERS, len(due)), thread_name_prefix="poll") as pool:
            return sum(pool.map(self._poll_due, due))

    def _poll_due(self, name: str) -> int:
        try:
            delivered = self.poll_repository(name)
        except RepositoryError as exc:
            self._stamps.pop(name, None)  # looked at again once the back-off is over, changed or not
            delay = self._backoff[name].next()
            self._retry_at[name] = time.monotonic() + delay
            log.warning("%s; retrying in %.0f s", exc, delay)
            return 0
        self._retry_at.pop(name, None)
        return delivered

    def poll_repository(self, name: str) -> int:
        """Poll one repository now (also the instant trigger). Any failure is recorded as
        the repository's state and raised as a RepositoryError naming it."""
        repo = self._repositories.get(name)
        if repo is None:
            raise KeyError(name)
        try:
            queued = self._poll(repo)
        except Exception as exc:  # one repository's trouble, whatever it is, stays its own
            if not isinstance(exc, OrchestratorError):
                log.exception("%s: unexpected error while polling", name)
            reason = str(exc) if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"
            self._failed(name, reason)
            raise RepositoryError(f"{name}: {reason}") from None
        if self._backoff[name].reset():
            log.info("%s: reachable again", name)
        self._health[name] = RepositoryHealth()
        return queued

    def _failed(self, name: str, reason: str) -> None:
        self.failures[name] += 1
        before = self._health[name]
        self._health[name] = RepositoryHealth(ok=False, error=reason[:500], since=before.since or utcnow())

    def _poll(self, repo: RepositoryConfig) -> int:
        """The cheap check first: the repository's heads, asked without fetching; when they
        are what this observer last delivered, nothing moved and nothing is fetched. Else
        fetch, find the new commits, deliver them with the heads they advance to."""
        mirror = self.mirrors[repo.name]
        if repo.name in self._delivered and mirror.cloned():
            if mirror.remote_heads() == self._delivered[repo.name]:
                return 0
        mirror.fetch()
        branches = mirror.branches()
        self._say_unmatched(repo, branches)
        found = discover(mirror, repo, self._sink.heads(repo.name), branches)
        if found is not None:
            self._sink.record_commits(repo.name, found.commits, found.heads)
        self._delivered[repo.name] = branches  # what the store now holds for them
        if found is None:
            return 0
        for commit in found.commits:
            log.info(
                "%s: queued %s %s (%s)", repo.name, commit.sha[:12], commit.subject[:60], ", ".join(commit.branches)
            )
        return len(found.commits)

    def _say_unmatched(self, repo: RepositoryConfig, branches: dict[str, str]) -> None:
        """Warn (once) about a branch pattern that matches no branch: a typo tests nothing."""
        for pattern in repo.branches:
            if not any(fnmatch.fnmatchcase(b, pattern) for b in branches):
                if (repo.name, pattern) not in self._unmatched_said:
                    self._unmatched_said.add((repo.name, pattern))
                    log.warning("%s: branch pattern %r matches no branch", repo.name, pattern)

    def watch_once(self) -> int:
        """One look of the watching loop: a repository on this machine is polled when its
        refs' stamp changed (read with stat alone, every TICK), one elsewhere every
        ``poll_interval``; each only once its back-off is over."""
        now = time.monotonic()
        due = []
        for name in self._repositories:
            if now < self._retry_at.get(name, 0):
                continue
            stamp = self.mirrors[name].refs_stamp()
            if stamp is None:
                if now >= self._next_at.get(name, 0):
                    due.append(name)
                    self._next_at[name] = now + self._poll_interval
            elif stamp != self._stamps.get(name):
                due.append(name)
                self._stamps[name] = stamp  # taken before the poll: a push during it is seen next time
        return self._poll_all(due)

    def run(self, stop: threading.Event) -> None:
        local = any(self.mirrors[name].refs_stamp() is not None for name in self._repositories)
        tick = min(TICK, self._poll_interval) if local else self._poll_interval
        while not stop.is_set():
            try:
                self.watch_once()
            except Exception:  # never the end of watching: the next round tries again
                log.exception("observer: unexpected error")
            stop.wait(tick)
