"""A repository's entry in config.yaml: what is watched, and how its commits are tested."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator import pythons
from orchestrator.config.base import ENV_NAME, NAME_PATTERN, Strict

MAX_SHARDS = 64
_REMOTE_URL = re.compile(r"^(https?|ssh|git|file)://[^\s-][^\s]*$")  # no option-looking host


class MergeQueueConfig(Strict):
    """A repository's merge queue (docs/guide/merge-queue.md): requests are tested merged onto
    ``target``, and it is moved only to a candidate that passed."""

    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,200}$")] = "main"
    """The branch the queue merges into."""
    strategy: Literal["merge", "rebase", "fast-forward"] = "merge"
    """How a request lands on the target: a merge commit, its commits rebased, or only a fast-forward."""
    depth: Annotated[int, Field(ge=1, le=16)] = 4
    """Candidates tested at once, each on the one ahead of it."""
    branches: Annotated[str, Field(min_length=1, max_length=200)] = "merge/*"
    """A glob: a push to a branch it matches asks for that branch to be merged."""
    committer_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^<>\n]+$")] = "orchestrator"
    """The committer of the merge and rebased commits the queue writes."""
    committer_email: Annotated[str, Field(pattern=r"^[^<>\s]+@[^<>\s]+$", max_length=200)] = "orchestrator@localhost"
    """The committer's e-mail address."""
    push_url: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """Where the target is pushed (default: the repository's `url`)."""

    @field_validator("target")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        """A plain branch name: not an option, no ``..``, no empty component, no ``.lock``."""
        parts = value.split("/")
        if value.startswith("-") or ".." in value or "" in parts or any(p.endswith((".", ".lock")) for p in parts):
            raise ValueError(f"{value[:60]!r} is not a branch name")
        return value


class RepositoryConfig(Strict):
    """One repository: where it is, which branches are tested, and how."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    """`[a-z0-9._-]`, up to 63 characters: used in paths and the API."""
    url: Annotated[str, Field(min_length=1, max_length=4096)]
    """A local path (relative to the config file) or a URL git can fetch: `file://`, `http(s)://`, `ssh://`,
    `git://` or `user@host:path`. Transport helpers (`ext::`) are refused: they run programs."""
    branches: Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]], Field(min_length=1)] = ["*"]
    """Glob patterns of the branches to test."""
    python: str | Annotated[list[str], Field(min_length=1, max_length=8)] = pythons.DEFAULT
    """The Python the commits run on: `3.11` (bookworm), `3.13` (trixie), `3.14`, `3.15` or `pypy3` (forky),
    each in its own runner image; a list of them (each commit once per Python), or `auto` (those its
    `requires-python` allows). Quote versions: YAML reads `3.14` as a number."""
    install: Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=200)] | None = None
    """Requirement lines instead of detecting the test tools: `["-e .[test]"]`, `["-r requirements/tests.txt",
    "."]`. Only requirements, `-r FILE`, `.` and `-e .` (with extras)."""
    command: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    """The test command, run by `/bin/sh` (default `python -m pytest tests`); pytest still writes the JUnit
    report the results come from."""
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], Annotated[str, Field(max_length=10_000)]] = {}
    """Environment variables of the test container."""
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]*$")] | None = None
    """An image of your own to run in, instead of an environment built for the commit."""
    system_packages: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]{0,100}$")]], Field(max_length=100)
    ] = []
    """Debian packages the environment needs (`[less, gcc, python3-dev]`), resolved against the runner
    image's own packages, fetched on the host and installed with no network."""
    coalesce: bool = False
    """Under load, test only the newest queued commit of a branch (the older end `skipped`), and bisect a
    failure (docs/guide/under-load.md)."""
    rerun_failures: Annotated[int, Field(ge=0, le=5)] = 0
    """Re-run only the failed tests, in the same container, up to N times until they pass; a job whose
    failures all passed on a re-run is `passed` with `flaky: [...]` (default command only; not over 100
    failures)."""
    artifacts: Annotated[list[Annotated[str, Field(min_length=1, max_length=500)]], Field(max_length=50)] = []
    """Globs, relative to the workspace, of files kept for download beyond `.ci-artifacts/`
    (`["dist/*.whl", "htmlcov/**"]`)."""
    shards: int | Literal["auto"] = 1
    """Split each commit's suite across N containers at once (at most `runner.parallelism`), or `auto`
    (from the recorded durations); not with `command` (docs/guide/splitting.md)."""
    shard_unit: Literal["test", "class", "module"] = "test"
    """What a split keeps together: each test, the tests of a class, or of a module (a costly fixture of
    that scope is then set up once per shard)."""
    shard_split: Literal["queue", "fixed"] = "queue"
    """`queue`: on one engine the shards take tests from a queue they share, as they go; `fixed`: each
    shard's share is set from the recorded durations before it starts (always so on a Swarm)."""
    merge_queue: MergeQueueConfig | None = None
    """A merge queue for the repository (its own section below); none by default."""
    schedule: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Cron syntax (`"0 3 * * *"`), in the dispatcher's time zone (shown on the dashboard and in
    `/healthz`): at each slot the head of each tracked branch is tested again (`trigger: schedule`)."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(
                f"{value[:80]!r} is not a cron expression (minute hour day month weekday, like '0 3 * * *')"
            )
        return value

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_count(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SHARDS):
            return value
        raise ValueError(f"{str(value)[:40]!r}: a number of containers from 1 to {MAX_SHARDS}, or auto")

    @model_validator(mode="after")
    def _shards_split_pytest(self) -> RepositoryConfig:
        if self.shards != 1 and self.command is not None:
            raise ValueError("shards splits the default pytest run: it cannot be used with command")
        return self

    @field_validator("python")
    @classmethod
    def _offered(cls, value: str | list[str]) -> str | list[str]:
        """One offered Python (the layout of results as ever), several (a matrix: each
        commit once per Python), or auto (those its ``requires-python`` allows)."""
        if isinstance(value, str):
            return value if value == pythons.AUTO else pythons.named(value)
        return list(dict.fromkeys(pythons.named(name) for name in value))

    @property
    def matrix(self) -> bool:
        """Whether each commit runs as variants, one per Python, each in a folder of its own."""
        return not isinstance(self.python, str) or self.python == pythons.AUTO

    def pythons_for(self, requires_python: str | None) -> tuple[str, ...]:
        """The Pythons a commit runs on; ``requires_python`` is read only for auto."""
        if isinstance(self.python, list):
            return tuple(self.python)
        if self.python == pythons.AUTO:
            return pythons.allowed_by(requires_python)
        return (self.python,)

    @field_validator("install")
    @classmethod
    def _requirement_lines(cls, lines: list[str] | None) -> list[str] | None:
        for line in lines or []:
            if any(ord(c) < 32 for c in line) or (line.startswith("-") and not line.startswith(("-r ", "-e ."))):
                raise ValueError(
                    f"{line[:80]!r}: only requirements, '-r FILE', '.' and '-e .' (with extras) are allowed"
                )
        return lines

    @field_validator("artifacts")
    @classmethod
    def _relative_globs(cls, globs: list[str]) -> list[str]:
        for g in globs:
            if g.startswith("/") or ".." in g.split("/") or any(ord(c) < 32 for c in g):
                raise ValueError(
                    f"{g[:80]!r}: a glob relative to the workspace, like 'dist/*.whl' "
                    "(no leading '/', no '..', no control characters)"
                )
        return globs

    @field_validator("branches")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if any(ord(c) < 32 for c in p) or p.count("[") != p.count("]"):
                raise ValueError(f"{p!r} is not a valid glob pattern")
            fnmatch.translate(p)
        return patterns

    @field_validator("url")
    @classmethod
    def _fetchable(cls, url: str) -> str:
        """What git would do with the URL, not what it looks like: a transport helper
        (``ext::``, ``fd::``, any ``name::``) runs a program, and an option-looking argument
        or host becomes an option of git or ssh. Only local paths and the plain transports
        are allowed."""
        if url.startswith("-") or any(ord(c) < 32 for c in url):
            raise ValueError(f"{url[:80]!r} looks like an option, not a repository")
        if "::" in url.split("/", 1)[0] or re.match(r"^[A-Za-z][\w+.-]*::", url):
            raise ValueError(f"{url[:80]!r}: transport helpers (name::...) run programs and are not allowed")
        if "://" in url:
            if not _REMOTE_URL.match(url):
                raise ValueError(
                    f"{url[:80]!r}: only local paths, file://, http(s)://, ssh://, git:// "
                    "and user@host:path are allowed"
                )
            host = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
            if host.startswith("-"):
                raise ValueError(f"{url[:80]!r}: a host may not begin with '-'")
        return url

    def tracks(self, branch: str) -> bool:
        return any(fnmatch.fnmatchcase(branch, p) for p in self.branches)
