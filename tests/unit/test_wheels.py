"""The wheel cache that every environment build on a host shares: a file is kept only under
the digest it has, and the least recently used go past the size limit."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from orchestrator.environment.wheels import WheelCache


def keep(cache: WheelCache, data: bytes, digest: str | None = None) -> str:
    digest = digest or hashlib.sha256(data).hexdigest()
    with cache.keeping(digest) as keeper:
        assert keeper is not None
        keeper.write(data[:10])
        keeper.write(data[10:])
    return digest


def test_a_file_is_kept_under_its_own_digest_only(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 10_000)
    digest = keep(cache, b"x" * 100)
    kept = cache.get(digest)
    assert kept is not None and kept.read_bytes() == b"x" * 100
    liar = hashlib.sha256(b"what the page promised").hexdigest()
    keep(cache, b"something else", liar)
    assert cache.get(liar) is None
    assert cache.get("../../etc/passwd") is None and cache.get("ab") is None
    with cache.keeping("not a digest") as keeper:
        assert keeper is None
    assert [p.name for p in (tmp_path / "wheels").rglob("*") if p.is_file()] == [digest]  # no leftovers


def test_a_file_that_did_not_come_whole_is_not_kept(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 10_000)
    data = b"y" * 100
    digest = hashlib.sha256(data).hexdigest()
    with cache.keeping(digest) as keeper:
        assert keeper is not None
        keeper.write(data)
        keeper.ok = False  # the upstream broke off (the proxy says so)
    assert cache.get(digest) is None


def test_past_the_limit_the_least_recently_used_go(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels", 250)
    first, second = keep(cache, b"1" * 100), keep(cache, b"2" * 100)
    old = time.time() - 60
    for digest, age in ((first, 20), (second, 10)):
        path = cache.get(digest)
        assert path is not None
        os.utime(path, (old + age, old + age))
    assert cache.get(first) is not None  # used just now: the second is the least recently used
    third = keep(cache, b"3" * 100)
    assert cache.get(second) is None
    assert cache.get(first) is not None and cache.get(third) is not None
