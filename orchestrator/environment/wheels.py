"""The distribution files that environment builds fetched, kept on this host for every
environment after them (of any repository and Python), bounded in size.

A file is kept under the sha256 that the index page gave for it, and only if what came
matched it: a file is never served for a digest it does not have, so nothing an index, a
commit or a build container does can put into the cache a file that another build then
takes for a different one. Past ``limit`` bytes, the least recently used files go.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("orchestrator.environment")

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class WheelCache:
    def __init__(self, root: Path, limit: int):
        self.root = root
        self.limit = limit
        self._evicting = threading.Lock()

    def get(self, sha256: str) -> Path | None:
        """The kept file with this digest, marked as just used; None if there is none."""
        if not _DIGEST.match(sha256):
            return None
        path = self._path(sha256)
        try:
            os.utime(path)
        except OSError:
            return None
        return path

    @contextmanager
    def keeping(self, sha256: str) -> Iterator[Keeper | None]:
        """A keeper to write a file with this digest into as it passes; kept at the end if it
        is whole and matches (else dropped). None if the digest is not one to keep by."""
        if not _DIGEST.match(sha256) or self.limit <= 0:
            yield None
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".part-")
        keeper = Keeper(os.fdopen(fd, "wb"))
        try:
            yield keeper
            keeper.file.close()
            if keeper.ok and keeper.sha256.hexdigest() == sha256:
                target = self._path(sha256)
                target.parent.mkdir(exist_ok=True)
                os.replace(name, target)
                self.evict()
        finally:
            keeper.file.close()
            Path(name).unlink(missing_ok=True)

    def evict(self) -> list[Path]:
        """Remove the least recently used files until the rest fit ``limit``; what went."""
        with self._evicting:
            files = []
            for path in self.root.glob("??/*"):
                try:
                    info = path.stat()
                except OSError:
                    continue
                files.append((info.st_mtime, info.st_size, path))
            total = sum(size for _, size, _ in files)
            gone = []
            for _, size, path in sorted(files):
                if total <= self.limit:
                    break
                path.unlink(missing_ok=True)
                total -= size
                gone.append(path)
            if gone:
                log.info("wheel cache: %d least recently used files removed (limit %d bytes)", len(gone), self.limit)
            return gone

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256


class Keeper:
    """Where a passing file is written and hashed; ``ok`` false once anything went wrong."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.ok = True

    def write(self, data: bytes) -> None:
        if not self.ok:
            return
        try:
            self.file.write(data)
            self.sha256.update(data)
        except OSError:  # a full disk loses the copy, never the build
            self.ok = False
