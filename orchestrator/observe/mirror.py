"""The orchestrator's own bare mirror of each repository, under ``<state_dir>/mirrors/``.

All Git access goes through here (GitPython's ``git`` command wrapper, arguments as a
list, never a shell), so branch names, however hostile, are only ever data. Fetches take
a file lock, because the observer and the dispatcher may be separate processes sharing
a state_dir.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import RepositoryConfig
from orchestrator.errors import MergeRefused, RepositoryError, UnknownCommit, UsageError
from orchestrator.models import subject_line

if TYPE_CHECKING:
    import git

log = logging.getLogger("orchestrator.observe.observer")

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


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
        found: git.Git = _gitpython().Git(str(self.path))
        return found

    def _run(self, *args: str, **kwargs: Any) -> str:
        return self._bytes(*args, **kwargs).decode("utf-8", "replace")

    def _bytes(self, *args: str, **kwargs: Any) -> bytes:
        """Git's output as bytes: names and messages are parsed from NUL-separated formats
        and decoded here, never split on what Python takes for line breaks."""
        try:
            output: bytes = self._git().execute(
                ["git", "--git-dir", str(self.path), *args], stdout_as_string=False, **kwargs
            )
            return output
        except _gitpython().GitCommandError as exc:
            raise RepositoryError(f"git {args[0]} failed in {self.path.name}: {git_reason(exc)}") from None

    def fetch(self) -> None:
        """Clone on first use, else fetch every ref, force-updated and pruned."""
        with self._locked():
            if not (self.path / "HEAD").exists():
                if self.path.exists():
                    shutil.rmtree(self.path)  # a clone interrupted by a crash
                tmp = self.path.with_name(self.path.name + ".cloning")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    _gitpython().Repo.clone_from(self.url, str(tmp), mirror=True, env={"GIT_TERMINAL_PROMPT": "0"})
                except _gitpython().GitCommandError as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise RepositoryError(f"cannot clone {self.url}: {git_reason(exc)}") from None
                except _gitpython().exc.UnsafeProtocolError as exc:
                    raise RepositoryError(f"cannot clone {self.url}: {exc}") from None
                os.replace(tmp, self.path)
                return
            self._run("fetch", "--prune", "--force", "--quiet", "origin", env={"GIT_TERMINAL_PROMPT": "0"})

    def cloned(self) -> bool:
        return (self.path / "HEAD").exists()

    def refs_stamp(self) -> tuple | None:
        """For a repository on this machine: a cheap fingerprint of its branch refs (the
        size and modification time of each ref file and folder, of packed-refs and of a
        reftable), read with stat alone, no git: it changes whenever a branch moves, is made
        or deleted. None where the repository is elsewhere or laid out otherwise (it is
        then asked with ``remote_heads``)."""
        git_dir = _local_git_dir(self.url)
        if git_dir is None:
            return None
        stamp: list[tuple[str, int, int]] = []
        try:
            for name in ("packed-refs", "reftable"):
                path = git_dir / name
                if path.exists():
                    stamp.append((name, *_stat(path)))
                    if path.is_dir():
                        stamp += [(f"{name}/{f.name}", *_stat(f)) for f in sorted(path.iterdir())]
            for folder, dirs, files in os.walk(git_dir / "refs" / "heads"):
                dirs.sort()
                stamp.append((folder, *_stat(Path(folder))))
                stamp += [(f, *_stat(Path(folder) / f)) for f in sorted(files)]
        except OSError:
            return None
        return tuple(stamp)

    def remote_heads(self) -> dict[str, str]:
        """The branch heads the repository has now, asked in one round trip that fetches no
        object (``git ls-remote``): what the observer compares before it fetches."""
        out = self._bytes("ls-remote", "--heads", "origin", env={"GIT_TERMINAL_PROMPT": "0"})
        heads = {}
        for line in out.split(b"\n"):
            sha, _, ref = line.partition(b"\t")
            if not ref.startswith(b"refs/heads/"):
                continue
            try:
                heads[ref[len(b"refs/heads/") :].decode("utf-8")] = sha.decode()
            except UnicodeDecodeError:
                continue  # branches() skips it too, with its warning
        return heads

    def branches(self) -> dict[str, str]:
        """Branch name -> head sha. A name that is not UTF-8 cannot be stored or shown:
        it is skipped, with a warning."""
        fields = self._bytes("for-each-ref", "--format=%(objectname)%00%(refname)%00", "refs/heads/").split(b"\0")
        heads = {}
        for sha, ref in zip(fields[0::2], fields[1::2], strict=False):
            try:
                name = ref.decode("utf-8")[len("refs/heads/") :]
            except UnicodeDecodeError:
                log.warning("%s: branch %r skipped: its name is not UTF-8", self.path.name, ref[11:])
                continue
            heads[name] = sha.strip().decode()
        return heads

    def new_commits(self, include: Sequence[str], exclude: Sequence[str]) -> list[tuple[str, str]]:
        """(sha, subject) of the commits reachable from ``include`` but not from
        ``exclude``, parents before children."""
        if not include:
            return []
        return self._log("--ignore-missing", "--reverse", "--topo-order", *include, *(f"^{sha}" for sha in exclude))

    def parents(self, sha: str, limit: int = 200) -> dict[str, list[str]]:
        """Each of the ``limit`` commits before ``sha`` (itself included) with its parents,
        in one git call."""
        lines = self._run("rev-list", "--parents", f"--max-count={limit}", sha, "--").splitlines()
        return {line.split()[0]: line.split()[1:] for line in lines if line.strip()}

    def first_parent(self, good: str, bad: str) -> list[str]:
        """The commits after ``good`` up to ``bad`` on ``bad``'s first-parent line, oldest
        first: a merged side branch is its merge commit, one step."""
        return self._run("rev-list", "--first-parent", "--reverse", f"{good}..{bad}", "--").split()

    def reachable(self, head: str, exclude: Sequence[str]) -> set[str]:
        out = self._run("rev-list", "--ignore-missing", head, *(f"^{sha}" for sha in exclude), "--")
        return set(out.split())

    def subjects(self, shas: Sequence[str]) -> dict[str, str]:
        return dict(self._log("--no-walk=unsorted", *shas)) if shas else {}

    def _log(self, *args: str) -> list[tuple[str, str]]:
        """(sha, subject) pairs, read NUL-separated; a subject is decoded whatever its
        bytes and cut to the stored length."""
        fields = self._bytes("log", "-z", "--format=%H%x00%s", *args, "--").split(b"\0")
        return [
            (sha.strip().decode(), subject_line(subject.decode("utf-8", "replace")))
            for sha, subject in zip(fields[0::2], fields[1::2], strict=False)
        ]

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

    def version(self, sha: str) -> str | None:
        """A PEP 440 version for ``sha`` from its nearest tag, as setuptools-scm would
        guess it (``1.2.3``, ``1.2.3.post4+gabcdef1``), for checkouts without ``.git``."""
        try:
            described = self._run("describe", "--tags", "--long", "--abbrev=7", sha).strip()
        except RepositoryError:
            return f"0.0.0+g{sha[:7]}"
        match = re.match(r"^v?(\d+(?:\.\d+)*)-(\d+)-g([0-9a-f]+)$", described)
        if not match:
            return f"0.0.0+g{sha[:7]}"
        base, distance, short = match.groups()
        return base if distance == "0" else f"{base}.post{distance}+g{short}"

    def file(self, sha: str, path: str, limit: int = 1 << 20) -> str | None:
        """A file of commit ``sha`` as text, read from the object store (never a checkout, so
        a link is its target's name, never followed): None if absent, not a file, or larger
        than ``limit`` bytes."""
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return None
        spec = f"{sha}:{path}"
        try:
            if self._run("cat-file", "-t", spec).strip() != "blob" or int(self._run("cat-file", "-s", spec)) > limit:
                return None
            return self._bytes("cat-file", "blob", spec).decode("utf-8", "replace")
        except (RepositoryError, ValueError):
            return None

    def branches_containing(self, sha: str) -> list[str]:
        out = self._bytes("for-each-ref", "--format=%(refname)%00", "--contains", sha, "refs/heads/")
        return [ref.strip().decode("utf-8", "replace")[len("refs/heads/") :] for ref in out.split(b"\0") if ref.strip()]

    def checkout(self, sha: str, dest: Path) -> None:
        """Write the tree of ``sha`` into ``dest`` (no .git: the workspace is only the
        files of that commit), with a private index so checkouts can run in parallel."""
        if not SHA_RE.match(sha):
            raise UsageError(f"{sha[:60]!r} is not a full commit sha")
        dest.mkdir(parents=True, exist_ok=True)
        index = dest.parent / (dest.name + ".index")
        try:
            self._git().execute(
                ["git", "--git-dir", str(self.path), "--work-tree", str(dest), "read-tree", "--reset", "-u", sha],
                env={"GIT_INDEX_FILE": str(index)},
            )
        except _gitpython().GitCommandError as exc:
            raise RepositoryError(f"checkout of {sha[:12]} failed: {git_reason(exc)}") from None
        finally:
            index.unlink(missing_ok=True)

    # -- the merge queue's candidates: commits written here, held by no ref (the store keeps
    # their shas; a fetch prunes every ref the repository does not have)

    def candidate(self, base: str, head: str, strategy: str, message: str, identity: tuple[str, str]) -> str:
        """``head`` put onto ``base`` as ``strategy`` says, as a commit of this mirror:
        ``merge``, a merge commit of the two (``message``, made by ``identity``: name and
        e-mail); ``rebase``, each commit of ``base..head`` replayed onto ``base`` (its author
        and message kept, ``identity`` its committer); ``fast-forward``, ``head`` itself.
        MergeRefused when it does not apply cleanly (naming the files) or there is nothing
        to merge."""
        for sha in (base, head):
            if not SHA_RE.match(sha):
                raise UsageError(f"{sha[:60]!r} is not a full commit sha")
        if self._is_ancestor(head, base):
            raise MergeRefused("nothing to merge: it is in the target already")
        if strategy == "fast-forward":
            if not self._is_ancestor(base, head):
                raise MergeRefused("cannot be fast-forwarded onto the target: rebase it first")
            return head
        name, email = identity
        env = {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        if strategy == "merge":
            tree = self._merged_tree(base, head, None)
            return self._commit_tree(
                tree, [base, head], message, {**env, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}
            )
        onto = base
        for sha in self._run("rev-list", "--reverse", "--topo-order", "--no-merges", f"{base}..{head}", "--").split():
            tree = self._merged_tree(onto, sha, f"{sha}^")
            author = self._run("log", "-1", "--format=%an%x00%ae%x00%aI%x00%B", sha, "--").split("\0", 3)
            onto = self._commit_tree(
                tree,
                [onto],
                author[3].rstrip("\n") or "(no message)",
                {**env, "GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1], "GIT_AUTHOR_DATE": author[2]},
            )
        return onto

    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        try:
            self._run("merge-base", "--is-ancestor", ancestor, descendant)
            return True
        except RepositoryError:
            return False

    def _merged_tree(self, ours: str, theirs: str, merge_base: str | None) -> str:
        """The tree of ``theirs`` merged into ``ours`` (git merge-tree: no work tree, no
        index); MergeRefused naming the conflicting files."""
        args = ["merge-tree", "--write-tree", "--name-only", "--no-messages", "-z"]
        if merge_base is not None:
            args.append(f"--merge-base={merge_base}")
        status, out, err = self._git().execute(
            ["git", "--git-dir", str(self.path), *args, ours, theirs],
            with_extended_output=True,
            with_exceptions=False,
            stdout_as_string=False,
        )
        fields = [f.decode("utf-8", "replace") for f in out.split(b"\0") if f]
        if status == 0 and fields:
            return fields[0].strip()
        if status == 1 and len(fields) > 1:
            files = sorted(set(fields[1:]))
            shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
            raise MergeRefused(f"conflicts with the target in {shown}")
        reason = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
        raise RepositoryError(f"git merge-tree failed in {self.path.name}: {reason.strip()[:300]}")

    def _commit_tree(self, tree: str, parents: list[str], message: str, env: dict[str, str]) -> str:
        args = ["commit-tree", tree, *[a for p in parents for a in ("-p", p)], "-m", message]
        return self._run(*args, env=env).strip()

    def push(self, url: str, sha: str, branch: str, expected: str) -> None:
        """Move ``branch`` of the repository at ``url`` to ``sha`` if it is at ``expected``
        (``--force-with-lease``): RepositoryError if it moved meanwhile, or the push was
        refused."""
        self._run(
            "push",
            "--porcelain",
            f"--force-with-lease=refs/heads/{branch}:{expected}",
            "--end-of-options",
            url,
            f"{sha}:refs/heads/{branch}",
            env={"GIT_TERMINAL_PROMPT": "0"},
        )

    def head_of(self, url: str, branch: str) -> str | None:
        """Where ``branch`` of the repository at ``url`` is now, asked of it (not of this
        mirror, which is as old as its last fetch); None if it has no such branch."""
        out = self._bytes(
            "ls-remote", "--end-of-options", url, f"refs/heads/{branch}", env={"GIT_TERMINAL_PROMPT": "0"}
        )
        for line in out.split(b"\n"):
            sha, _, ref = line.partition(b"\t")
            if ref == f"refs/heads/{branch}".encode():
                return sha.decode()
        return None


def git_reason(exc: git.GitCommandError) -> str:
    """Git's own reason, in one line: its ``fatal:`` or ``error:`` lines, else its last."""
    stderr = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode("utf-8", "replace")
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    lines = [line.removeprefix("stderr: ").strip("'").strip() for line in lines]
    reasons = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return "; ".join(reasons or lines[-1:])[:500] or str(exc)[:500]


def _stat(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_mtime_ns, st.st_size


def _local_git_dir(url: str) -> Path | None:
    """The Git folder of a repository named by a local path or a file:// URL, bare or not."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url or re.match(r"^[^/]+@[^/]+:", url):
        return None
    path = Path(url)
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "HEAD").is_file() and (path / "refs").is_dir():
        return path
    return None


class Mirrors(Mapping[str, Mirror]):
    """This process's one mirror of each configured repository, under the state folder."""

    def __init__(self, state_dir: Path, repositories: Sequence[RepositoryConfig]):
        self._mirrors = {r.name: Mirror(state_dir / "mirrors" / r.name, r.url) for r in repositories}

    def __getitem__(self, name: str) -> Mirror:
        return self._mirrors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mirrors)

    def __len__(self) -> int:
        return len(self._mirrors)

    def first_parent(self, repository: str, good: str, bad: str) -> list[str]:
        return self._mirrors[repository].first_parent(good, bad)


def _gitpython() -> Any:
    """GitPython, loaded when Git is first used (a command that reads only the store never does)."""
    import git

    return git
