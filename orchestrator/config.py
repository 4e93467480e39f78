"""config.yaml: loaded and validated once, at start, into frozen pydantic models.

Any problem is reported as one line naming the file, the key path and what was expected
(``ConfigError``, exit 2). Relative paths are resolved against the config file's folder,
so the same file works from any working directory.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator import pythons
from orchestrator.errors import ConfigError, UnknownRepository, UsageError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_MEMORY = re.compile(r"^[1-9][0-9]*[bkmg]?$", re.IGNORECASE)
_SCP_LIKE = re.compile(r"^([\w.-]+@)?[\w][\w.-]*:(?!//)")  # [user@]host:path, as git reads it
_REMOTE_URL = re.compile(r"^(https?|ssh|git|file)://[^\s-][^\s]*$")  # no option-looking host


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


MAX_SHARDS = 64


class MergeQueueConfig(_Strict):
    """A repository's merge queue (merge_queue.py): requests are tested merged onto
    ``target`` and it is moved only to a candidate that passed."""

    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,200}$")] = "main"
    strategy: Literal["merge", "rebase", "fast-forward"] = "merge"
    depth: Annotated[int, Field(ge=1, le=16)] = 4  # candidates tested at once, each on the one ahead
    branches: Annotated[str, Field(min_length=1, max_length=200)] = "merge/*"  # a push to one asks for a merge
    committer_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^<>\n]+$")] = "orchestrator"
    committer_email: Annotated[str, Field(pattern=r"^[^<>\s]+@[^<>\s]+$", max_length=200)] = "orchestrator@localhost"
    push_url: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # default: the repository's url

    @field_validator("target")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        """A plain branch name: not an option, no ``..``, no empty component, no ``.lock``."""
        parts = value.split("/")
        if value.startswith("-") or ".." in value or "" in parts or any(p.endswith((".", ".lock")) for p in parts):
            raise ValueError(f"{value[:60]!r} is not a branch name")
        return value


class RepositoryConfig(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    url: Annotated[str, Field(min_length=1, max_length=4096)]
    branches: Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]], Field(min_length=1)] = ["*"]
    python: str | Annotated[list[str], Field(min_length=1, max_length=8)] = pythons.DEFAULT  # or "auto"
    install: Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=200)] | None = None
    command: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    env: dict[Annotated[str, Field(pattern=_ENV_NAME)], Annotated[str, Field(max_length=10_000)]] = {}
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]*$")] | None = None
    system_packages: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]{0,100}$")]], Field(max_length=100)
    ] = []
    coalesce: bool = False  # under load, test only the newest queued commit of a branch, then bisect a failure
    rerun_failures: Annotated[int, Field(ge=0, le=5)] = 0  # re-runs of only the failed tests, in the same container
    artifacts: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=500)]], Field(max_length=50)
    ] = []  # globs, relative to the workspace, beyond .ci-artifacts/
    shards: int | Literal["auto"] = 1  # containers one commit's suite is split across (sharding.py)
    shard_unit: Literal["test", "class", "module"] = "test"  # what the split keeps together
    # queue: the shards take units from a queue they share as they go (one engine); fixed: each
    # shard's share is set at collection from the recorded durations (always so on a Swarm)
    shard_split: Literal["queue", "fixed"] = "queue"
    merge_queue: MergeQueueConfig | None = None  # none: no merge queue for this repository
    # cron syntax, in the dispatcher's time zone: the head of each tracked branch tested again then
    schedule: Annotated[str, Field(min_length=1, max_length=200)] | None = None

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


class DispatcherConfig(_Strict):
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8888
    api_token: Annotated[str, Field(min_length=16)] | None = None
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2000)] | None = None
    allowed_hosts: Annotated[list[Annotated[str, Field(pattern=r"^[\w.*:\[\]-]+$")]], Field(min_length=1)] | None = None
    max_followers: Annotated[int, Field(ge=1, le=10_000)] = 512  # live log followers in all
    max_followers_per_job: Annotated[int, Field(ge=1, le=10_000)] = 256  # ... of one job
    # several dispatchers on one PostgreSQL store (store.url): each one's name, and the active's lease
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63] or "dispatcher"
    )
    lease: Annotated[float, Field(ge=1, le=600)] = 10  # seconds: a standby takes over within this and a few more

    def hosts(self) -> list[str]:
        """Host headers the API answers: ``allowed_hosts``, else this machine's loopback
        names and the bound address (a page whose name resolves to 127.0.0.1 is refused),
        else, bound to every address, any."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.host in ("0.0.0.0", "::"):
            return ["*"]
        return sorted({"localhost", "127.0.0.1", "::1", self.host})

    @model_validator(mode="after")
    def _token_off_loopback(self) -> DispatcherConfig:
        if not is_loopback(self.host) and self.api_token is None:
            raise ValueError(f"binding {self.host} (not loopback) requires dispatcher.api_token")
        return self


class RunnerConfig(_Strict):
    docker_host: str | None = None
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:-]*$")] = "ci-runner:latest"
    base_image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]*$")] = str(pythons.OFFERED[pythons.DEFAULT].base)
    parallelism: Annotated[int, Field(ge=1, le=256)] = 2
    warm: Annotated[int, Field(ge=0, le=256)] | None = None  # jobs started ahead of a free slot; None: parallelism
    timeout: Annotated[float, Field(gt=0)] = 600
    memory: str = "1g"
    cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0
    pids: Annotated[int, Field(ge=16)] = 512
    network: Annotated[str, Field(min_length=1)] = "none"
    max_log_bytes: Annotated[int, Field(ge=1024)] = 10_000_000
    disk: str = "2g"
    tmp_size: str = "1g"
    backend: Literal["docker", "swarm"] = "docker"
    registry: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9._-]+)*$")] | None = None
    constraints: Annotated[
        list[Annotated[str, Field(pattern=r"^[\w.-]+ *(==|!=) *[^\s]+$", max_length=500)]], Field(max_length=50)
    ] = []
    # Swarm, network none: an internal network of its own per job (a service cannot join none);
    # false where the workers' engines give a task without networks none (dockerd --bridge=none)
    swarm_job_networks: bool = True

    @model_validator(mode="after")
    def _swarm_needs_a_registry(self) -> RunnerConfig:
        if self.backend == "swarm" and self.registry is None:
            raise ValueError("backend swarm needs runner.registry (host:port of a registry every node reaches)")
        return self

    @field_validator("memory", "disk", "tmp_size")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.match(value) or memory_bytes(value) < 6 * 1024**2:
            raise ValueError(f"{value!r} is not a memory size of at least 6m like 512m or 1g")
        return value

    def image_for(self, python: str) -> str:
        """The runner image of a Python version (``base_image`` is the default version's FROM)."""
        return pythons.runner_image(self.image, python)


class NotifyConfig(_Strict):
    webhooks: Annotated[
        list[Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2000)]], Field(max_length=50)
    ] = []
    on: Literal["all", "failures"] = "failures"
    timeout: Annotated[float, Field(gt=0, le=300)] = 5
    retries: Annotated[int, Field(ge=0, le=10)] = 3


_INDEX_URL = r"^https?://[^\s/$]+(/[^\s$]*)?$"


class EnvironmentsConfig(_Strict):
    """Where environments come from: pip resolves only from these indexes (the index of pip
    on this host when ``index_url`` is not set, else PyPI), never from one a commit names."""

    index_url: Annotated[str, Field(pattern=_INDEX_URL, max_length=2000)] | None = None
    extra_index_urls: Annotated[
        list[Annotated[str, Field(pattern=_INDEX_URL, max_length=2000)]], Field(max_length=10)
    ] = []
    timeout: Annotated[float, Field(gt=0, le=24 * 3600)] = 900  # seconds for a whole build
    cache_size: str = "5g"  # the wheel files kept for every environment on this machine

    @field_validator("cache_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a size like 500m or 5g")
        return value


class QuarantineConfig(_Strict):
    """Quarantined tests (quarantine.py): how long an entry lasts unless given its own end,
    and whether tests that flip often are quarantined automatically (off by default)."""

    days: Annotated[float, Field(gt=0, le=3650)] = 14
    auto: bool = False
    flip_rate: Annotated[float, Field(gt=0, le=1)] = 0.3  # flips per run, over the last 500 jobs
    min_runs: Annotated[int, Field(ge=2, le=10_000)] = 5  # a rate over fewer runs is not one


class SearchConfig(_Strict):
    """What the full-text index keeps of each job's log (search.py): its first and its last
    ``log_mb`` megabytes, each line up to 2000 characters."""

    log_mb: Annotated[float, Field(gt=0, le=1024)] = 1


class StoreConfig(_Strict):
    """Where the queue and every table of the store are: by default the SQLite file in
    ``state_dir``; ``url: postgresql://user@host/db`` keeps them in PostgreSQL (store/postgres.py)."""

    url: Annotated[str, Field(pattern=r"^postgres(ql)?://", max_length=2000)] | None = None


class Config(_Strict):
    repositories: Annotated[list[RepositoryConfig], Field(min_length=1)]
    poll_interval: Annotated[float, Field(gt=0)] = 5
    state_dir: Path = Path(".orchestrator")
    results_dir: Path = Path("test_results")
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    retries: Annotated[int, Field(ge=0, le=100)] = 2
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    environments: EnvironmentsConfig = Field(default_factory=EnvironmentsConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    stop_grace: Annotated[float, Field(ge=0)] = 0
    source: Path = Path("config.yaml")

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [r.name for r in self.repositories]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"repository name {sorted(dup)[0]!r} is used twice")
        return self

    def repository(self, name: str) -> RepositoryConfig | None:
        return next((r for r in self.repositories if r.name == name), None)

    def named_repository(self, name: str | None) -> RepositoryConfig:
        """The named repository, or the only one configured; a usage error otherwise."""
        if name is None:
            if len(self.repositories) == 1:
                return self.repositories[0]
            raise UsageError("several repositories are configured: name one with --repo")
        repo = self.repository(name)
        if repo is None:
            raise UnknownRepository(f"unknown repository {name[:64]!r}")
        return repo

    @property
    def store_location(self) -> Path | str:
        """What ``Store`` opens: the PostgreSQL URL, or the SQLite file."""
        return self.store.url or self.db_path

    @property
    def db_path(self) -> Path:
        return self.state_dir / "orchestrator.db"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def memory_bytes(value: str) -> int:
    """Bytes in a size like ``512m`` or ``1g``, as the engine reads it."""
    from docker.utils import parse_bytes  # here: loading config.yaml should not load docker-py

    return int(parse_bytes(value))


def is_local_url(url: str) -> bool:
    return "://" not in url and not _SCP_LIKE.match(url)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads a bare ``on``, ``off``, ``yes`` or ``no`` as a boolean: as a *key*
    (``notify: {on: all}``) it is always meant as the word, and is kept as one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        for key, _value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:bool" and key.style is None:
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config file, or raise ConfigError with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    if "source" in raw:
        raise ConfigError(f"{path}: source: unknown key")
    base = path.resolve().parent
    try:
        raw = _resolve_paths(raw, base)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config = Config.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    for i, repo in enumerate(config.repositories):
        if is_local_url(repo.url) and not Path(repo.url).is_dir():
            raise ConfigError(f"{path}: repositories[{i}].url: no such repository directory {repo.url}")
    return config


@dataclass(frozen=True)
class ClientSettings:
    url: str | None
    api_token: str | None


def client_settings(path: str | Path) -> ClientSettings | None:
    """What a command run against a dispatcher elsewhere reads of a local config:
    ``dispatcher.url`` and ``dispatcher.api_token``, nothing else (its repositories are the
    dispatcher machine's, and their paths need not exist here). None: no file to read."""
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError):
        return None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    dispatcher = raw.get("dispatcher") if isinstance(raw, dict) else None
    if not isinstance(dispatcher, dict):
        return ClientSettings(None, None)
    url, token = dispatcher.get("url"), dispatcher.get("api_token")
    for key, value in (("url", url), ("api_token", token)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: dispatcher.{key}: expected a string")
    return ClientSettings(url, token)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = dict(raw)
    for key in ("state_dir", "results_dir"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise ValueError(f"{key}: expected a directory path, got {raw[key]!r}"[:120])
            raw[key] = base / raw[key]
        else:
            raw[key] = base / Config.model_fields[key].default
    repos = raw.get("repositories")
    if isinstance(repos, list):
        resolved = []
        for repo in repos:
            if isinstance(repo, dict) and isinstance(repo.get("url"), str) and is_local_url(repo["url"]):
                repo = {**repo, "url": str((base / Path(repo["url"]).expanduser()).resolve())}
            resolved.append(repo)
        raw["repositories"] = resolved
    return raw


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif first["type"] != "missing":
        got = first.get("input")
        msg = f"{msg} (got {repr(got)[:60]})"
        if first["type"] == "string_type" and isinstance(got, (bool, int, float)):
            msg += f": YAML read it as a {type(got).__name__}; quote it to mean the text"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{loc or 'config'}: {msg}{more}"
