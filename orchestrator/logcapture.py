"""A container log captured within a fixed budget, keeping its head and its tail.

The head is written to a spool file as it arrives; once the budget is spent, only the
last ``max_bytes / 2`` are kept, in memory, so a test suite printing gigabytes costs the
dispatcher a bounded amount of memory and disk.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import BinaryIO


class CappedLog:
    def __init__(self, spool: Path, max_bytes: int):
        self._spool_path = spool
        self._spool: BinaryIO = open(spool, "wb")
        self._head_budget = max_bytes - max_bytes // 2
        self._tail_budget = max_bytes // 2
        self._head = 0
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.total = 0

    @property
    def truncated(self) -> bool:
        return self.total > self._head + self._tail_size

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_budget - self._head
        if room > 0:
            self._spool.write(chunk[:room])
            self._head += min(room, len(chunk))
            chunk = chunk[room:]
        if not chunk:
            return
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= self._tail_budget:
            self._tail_size -= len(self._tail.popleft())

    def reset(self) -> None:
        """Start over: a re-attached container's log is read again from its beginning."""
        self._spool.seek(0)
        self._spool.truncate()
        self._head = 0
        self._tail.clear()
        self._tail_size = 0
        self.total = 0

    def write_to(self, out: BinaryIO) -> None:
        """The captured log: head, a marker line where it was cut, tail."""
        self._spool.flush()
        with open(self._spool_path, "rb") as head:
            while block := head.read(1 << 20):
                out.write(block)
        tail = b"".join(self._tail)
        excess = self._tail_size - self._tail_budget
        if excess > 0:
            tail = tail[excess:]
        if self.truncated:
            omitted = self.total - self._head - len(tail)
            out.write(f"\n[orchestrator: log truncated, {omitted} bytes omitted]\n".encode())
        out.write(tail)

    def close(self) -> None:
        self._spool.close()
        try:
            os.unlink(self._spool_path)
        except FileNotFoundError:
            pass
