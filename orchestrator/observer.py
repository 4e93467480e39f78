"""Finds every new commit on the tracked branches of each repository.

The observer owns no state of its own: the last seen heads live with the dispatcher
(the store, or the store behind the HTTP API), and are advanced in the same transaction
that queues the commits found. If delivery fails, nothing advances and the next poll finds
the same commits again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from orchestrator.backoff import Backoff
from orchestrator.config import Config, RepositoryConfig
from orchestrator.errors import OrchestratorError
from orchestrator.mirror import Mirror
from orchestrator.store import NewCommit

log = logging.getLogger("orchestrator.observer")

MAX_BACKOFF = 300.0


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


def discover(mirror: Mirror, repo: RepositoryConfig, seen: dict[str, str] | None) -> Discovery | None:
    """What changed since ``seen`` (None: never observed), or None if nothing did.

    First sight queues only the branch heads. After that, every commit not reachable from
    a head already seen, parents first; a branch moved to a commit that is already known
    (a new branch at an old commit, a reset) gets that commit, so every branch has a job
    for its head.
    """
    current = {b: sha for b, sha in mirror.branches().items() if repo.tracks(b)}
    if seen is None:
        return Discovery(_heads_only(mirror, current), current)
    changed = {b: sha for b, sha in current.items() if seen.get(b) != sha}
    if not changed:
        return None if current == seen else Discovery([], current)
    exclude = sorted(set(seen.values()))
    found = mirror.new_commits(sorted(set(changed.values())), exclude)
    branches: dict[str, set[str]] = {sha: set() for sha, _ in found}
    if len(changed) == 1:
        for names in branches.values():
            names.update(changed)
    else:
        for name, head in changed.items():
            for sha in mirror.reachable(head, exclude):
                branches.setdefault(sha, set()).add(name)
    commits = [NewCommit(sha, subject, tuple(sorted(branches[sha]))) for sha, subject in found]
    known_heads = {sha: names for sha, names in _by_sha(changed).items() if sha not in branches}
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
    def __init__(self, config: Config, sink: CommitSink):
        self._config = config
        self._sink = sink
        self.mirrors = {r.name: mirror_for(config, r) for r in config.repositories}
        self._retry_at: dict[str, float] = {}
        self._backoff = {r.name: Backoff(config.poll_interval, MAX_BACKOFF) for r in config.repositories}

    def poll_once(self) -> int:
        """Fetch and deliver every repository that is not backing off; return how many
        commits were queued. A failing repository is reported and retried later, with
        growing delays, while the others go on."""
        delivered = 0
        for repo in self._config.repositories:
            if time.monotonic() < self._retry_at.get(repo.name, 0):
                continue
            try:
                delivered += self._poll(repo)
            except OrchestratorError as exc:
                delay = self._backoff[repo.name].next()
                self._retry_at[repo.name] = time.monotonic() + delay
                log.warning("%s: %s; retrying in %.0f s", repo.name, exc, delay)
            else:
                if self._backoff[repo.name].reset():
                    log.info("%s: reachable again", repo.name)
                self._retry_at.pop(repo.name, None)
        return delivered

    def poll_repository(self, name: str) -> int:
        """Poll one repository now (the instant trigger); errors are raised, not backed off."""
        repo = self._config.repository(name)
        if repo is None:
            raise KeyError(name)
        return self._poll(repo)

    def _poll(self, repo: RepositoryConfig) -> int:
        mirror = self.mirrors[repo.name]
        mirror.fetch()
        found = discover(mirror, repo, self._sink.heads(repo.name))
        if found is None:
            return 0
        self._sink.record_commits(repo.name, found.commits, found.heads)
        for commit in found.commits:
            log.info("%s: queued %s %s (%s)", repo.name, commit.sha[:12], commit.subject[:60], ", ".join(commit.branches))
        return len(found.commits)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll_once()
            stop.wait(self._config.poll_interval)


def mirror_for(config: Config, repo: RepositoryConfig) -> Mirror:
    return Mirror(config.state_dir / "mirrors" / repo.name, repo.url)
