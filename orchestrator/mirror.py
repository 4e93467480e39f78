"""The orchestrator's own bare mirror of each repository, under ``<state_dir>/mirrors/``.

All Git access goes through here (GitPython's ``git`` command wrapper, arguments as a
list, never a shell), so branch names, however hostile, are only ever data. Fetches take
a file lock, because the observer and the dispatcher may be separate processes sharing
a state_dir.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import git

from orchestrator.errors import RepositoryError, UnknownCommit, UsageError

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SEP = "\x1f"


class Mirror:
    def __init__(self, path: Path, url: str):
        self.path = path
        self.url = url
        self._lockfile = path.with_name(path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._lockfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lockfile, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _git(self) -> git.Git:
        return git.Git(str(self.path))

    def _run(self, *args: str, **kwargs: object) -> str:
        try:
            return self._git().execute(["git", "--git-dir", str(self.path), *args], **kwargs)
        except git.GitCommandError as exc:
            detail = (exc.stderr or "").strip().splitlines()
            raise RepositoryError(f"git {args[0]} failed in {self.path.name}: {detail[-1] if detail else exc}") from None

    def fetch(self) -> None:
        """Clone on first use, else fetch every ref, force-updated and pruned."""
        with self._locked():
            if not (self.path / "HEAD").exists():
                if self.path.exists():
                    shutil.rmtree(self.path)  # a clone interrupted by a crash
                tmp = self.path.with_name(self.path.name + ".cloning")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    git.Repo.clone_from(self.url, str(tmp), mirror=True, env={"GIT_TERMINAL_PROMPT": "0"})
                except git.GitCommandError as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    detail = (exc.stderr or "").strip().splitlines()
                    raise RepositoryError(f"cannot clone {self.url}: {detail[-1] if detail else exc}") from None
                os.replace(tmp, self.path)
                return
            self._run("fetch", "--prune", "--force", "--quiet", "origin", env={"GIT_TERMINAL_PROMPT": "0"})

    def branches(self) -> dict[str, str]:
        """Branch name -> head sha."""
        out = self._run("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
        heads = {}
        for line in out.splitlines():
            sha, ref = line.split(" ", 1)
            heads[ref[len("refs/heads/"):]] = sha
        return heads

    def new_commits(self, include: Sequence[str], exclude: Sequence[str]) -> list[tuple[str, str]]:
        """(sha, subject) of the commits reachable from ``include`` but not from
        ``exclude``, parents before children."""
        if not include:
            return []
        out = self._run(
            "log", "--ignore-missing", "--reverse", "--topo-order", f"--format=%H{_SEP}%s", *include,
            *(f"^{sha}" for sha in exclude), "--",
        )
        return [tuple(line.split(_SEP, 1)) for line in out.splitlines() if line]  # type: ignore[misc]

    def reachable(self, head: str, exclude: Sequence[str]) -> set[str]:
        out = self._run("rev-list", "--ignore-missing", head, *(f"^{sha}" for sha in exclude), "--")
        return set(out.split())

    def subjects(self, shas: Sequence[str]) -> dict[str, str]:
        if not shas:
            return {}
        out = self._run("log", "--no-walk=unsorted", f"--format=%H{_SEP}%s", *shas, "--")
        return dict(line.split(_SEP, 1) for line in out.splitlines() if line)

    def has_commit(self, sha: str) -> bool:
        try:
            self._run("cat-file", "-e", f"{sha}^{{commit}}")
            return True
        except RepositoryError:
            return False

    def resolve(self, rev: str) -> str:
        """A full commit sha for a branch name, tag or unique sha prefix."""
        if not rev or rev.startswith("-") or len(rev) > 255 or any(ord(c) < 32 for c in rev):
            raise UsageError(f"{rev[:60]!r} is not a revision")
        try:
            sha = self._run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}").strip()
        except RepositoryError:
            raise UnknownCommit(f"unknown revision {rev!r} in {self.path.name}") from None
        return sha

    def branches_containing(self, sha: str) -> list[str]:
        out = self._run("for-each-ref", "--format=%(refname)", "--contains", sha, "refs/heads/")
        return [line[len("refs/heads/"):] for line in out.splitlines()]

    def checkout(self, sha: str, dest: Path) -> None:
        """Write the tree of ``sha`` into ``dest`` (no .git: the workspace is only the
        files of that commit), with a private index so checkouts can run in parallel."""
        if not SHA_RE.match(sha):
            raise UsageError(f"{sha[:60]!r} is not a full commit sha")
        dest.mkdir(parents=True, exist_ok=True)
        index = dest.parent / (dest.name + ".index")
        try:
            self._git().execute(
                ["git", "--git-dir", str(self.path), "--work-tree", str(dest),
                 "read-tree", "--reset", "-u", sha],
                env={"GIT_INDEX_FILE": str(index)},
            )
        except git.GitCommandError as exc:
            detail = (exc.stderr or "").strip().splitlines()
            raise RepositoryError(f"checkout of {sha[:12]} failed: {detail[-1] if detail else exc}") from None
        finally:
            index.unlink(missing_ok=True)
