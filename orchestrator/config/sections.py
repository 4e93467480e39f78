"""The smaller sections of config.yaml: the dispatcher's API, notifications, environments,
quarantine, search and the store."""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.config.base import INDEX_URL, Strict, is_loopback, is_size


class DispatcherConfig(Strict):
    """The dispatcher's HTTP API and dashboard, and its place among dispatchers sharing a store."""

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    """The address the API binds; a host that is not loopback requires `api_token`."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8888
    """The API's port."""
    api_token: Annotated[str, Field(min_length=16)] | None = None
    """A bearer token every change through the API must carry (at least 16 characters)."""
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2000)] | None = None
    """Where this dispatcher's API answers, for the job commands run elsewhere (`--server` wins) and for a
    standby's answer naming the active."""
    allowed_hosts: Annotated[list[Annotated[str, Field(pattern=r"^[\w.*:\[\]-]+$")]], Field(min_length=1)] | None = None
    """The `Host` headers the API answers (`["*"]`: any); default the loopback names and `host`, any when
    bound to every address."""
    max_followers: Annotated[int, Field(ge=1, le=10_000)] = 512
    """Live log followers at once, in all (429 past it)."""
    max_followers_per_job: Annotated[int, Field(ge=1, le=10_000)] = 256
    """Live log followers of one job at once."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63] or "dispatcher"
    )
    """This dispatcher's name among those sharing `store.url` (default: the host's name)."""
    lease: Annotated[float, Field(ge=1, le=600)] = 10
    """Seconds of the active dispatcher's lease: a standby takes over within this and a few more."""

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


class NotifyConfig(Strict):
    """Webhooks: a JSON POST when a job ends or a bisection names a culprit, sent at least once."""

    webhooks: Annotated[
        list[Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2000)]], Field(max_length=50)
    ] = []
    """URLs that receive a JSON POST when a job reaches its final status (`job.finished`), a bisection names
    a culprit (`culprit_found`) or the merge queue merges or rejects; written to an outbox with the change
    itself, so a crash never loses one: sent at least once, each with an `Idempotency-Key` header
    (`job-<id>-attempt-<n>-<event>`)."""
    on: Literal["all", "failures"] = "failures"
    """`all`, or only `failures` (failed, error, timed out) and recoveries (a pass after one of those)."""
    timeout: Annotated[float, Field(gt=0, le=300)] = 5
    """Seconds a request may take in all: connecting, sending and the answer (a receiver that trickles is
    cut there). Each receiver has a sender of its own (a slow one holds back no other), no redirect is
    followed (the body goes only to the configured URL) and at most 4 KB of an answer is read."""
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Retries with back-off on 5xx, a redirect or no answer."""


class EnvironmentsConfig(Strict):
    """Where environments come from: pip resolves only from these indexes (the index of pip
    on this host when ``index_url`` is not set, else PyPI), never from one a commit names."""

    index_url: Annotated[str, Field(pattern=INDEX_URL, max_length=2000)] | None = None
    """The package index environments resolve from (`https://…/simple`); default the one `pip config` on
    this host names, else PyPI. Never one a commit names."""
    extra_index_urls: Annotated[
        list[Annotated[str, Field(pattern=INDEX_URL, max_length=2000)]], Field(max_length=10)
    ] = []
    """More indexes, asked before `index_url`, each package taken from the first index that has it."""
    timeout: Annotated[float, Field(gt=0, le=24 * 3600)] = 900
    """Seconds an environment build may take in all; past it the job ends `error`."""
    cache_size: str = "5g"
    """The wheel files kept on this host for every environment build (`state_dir/cache/wheels`), the least
    recently used removed past it."""

    @field_validator("cache_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not is_size(value):
            raise ValueError(f"{value!r} is not a size like 500m or 5g")
        return value


class QuarantineConfig(Strict):
    """Quarantined tests still run and are recorded; their failures do not fail their jobs."""

    days: Annotated[float, Field(gt=0, le=3650)] = 14
    """How long a quarantine lasts unless it is given its own end (`--until`)."""
    auto: bool = False
    """Quarantine a test that failed or was flaky in a job when its flip rate over the newest 500 jobs
    reaches `flip_rate`, over at least `min_runs` runs; said in a `test.quarantined` webhook."""
    flip_rate: Annotated[float, Field(gt=0, le=1)] = 0.3
    """Flips per run, over the newest 500 jobs, that quarantine a test automatically."""
    min_runs: Annotated[int, Field(ge=2, le=10_000)] = 5
    """Runs a flip rate needs before it counts."""


class SearchConfig(Strict):
    """The full-text index of every job's log, failing tests and reasons."""

    log_mb: Annotated[float, Field(gt=0, le=1024)] = 1
    """What the index keeps of each job's log: its first and its last N megabytes."""


class StoreConfig(Strict):
    """Where the queue and every table of the store are."""

    url: Annotated[str, Field(pattern=r"^postgres(ql)?://", max_length=2000)] | None = None
    """`postgresql://user@host/db`: the store in PostgreSQL instead of the SQLite file in `state_dir`
    (psycopg 3 and its pool; several dispatchers may share it); `orchestrator store migrate` copies a
    SQLite store into it."""
