"""A container log captured within a fixed budget, keeping its head and its tail.

The head is written to a spool file as it arrives; once the budget is spent, only the
last ``max_bytes / 2`` are kept, in memory, so a test suite printing gigabytes costs the
dispatcher a bounded amount of memory and disk.

The engine's copy of the output may have to be read again from its start: after the
live stream was cut (an engine outage), or by the next dispatcher after a crash (the
spool file, and a note of how much had been seen, survive it). That copy is bounded by
rotation, so it may begin later than the output did. ``restart`` reads it against the head
already captured: if it begins with that head, it is the whole output and the count stays
exact; if not, the head is kept, what the engine still has becomes the tail, and the
count of what is missing is given as a lower bound, never as a made-up exact number.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import BinaryIO

_NOTE_EVERY = 1 << 18  # how often (bytes seen) the count is noted beside the spool for a successor


class CappedLog:
    def __init__(self, spool: Path, max_bytes: int, resume: bool = False):
        """With ``resume``, the head an earlier process captured in ``spool`` is kept, and
        the engine's copy is then read against it (``restart``)."""
        self._spool_path = spool
        self._note_path = spool.with_name(spool.name + ".seen")
        self._head_budget = max_bytes - max_bytes // 2
        self._tail_budget = max_bytes // 2
        kept = spool.read_bytes()[: self._head_budget] if resume and spool.is_file() else b""
        self._spool: BinaryIO = open(spool, "wb")
        self._spool.write(kept)
        self._head = len(kept)
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.total = self._head  # bytes of the output counted so far
        self._floor = max(self._head, self._noted()) if resume else 0  # the output was at least this long
        self._exact = True
        self._compare: int | None = None  # while re-reading: how much of the head the copy matched
        if resume:
            self.restart()

    @property
    def truncated(self) -> bool:
        return not self._exact or self.total > self._head + self._tail_size

    def restart(self) -> None:
        """The engine's copy of the output is read next, from its beginning."""
        self._floor = max(self._floor, self.total)
        self._tail.clear()
        self._tail_size = 0
        self.total = 0
        self._compare = 0
        self._spool.flush()

    def write(self, chunk: bytes) -> None:
        if self._compare is not None:
            chunk = self._against_head(chunk)
            if not chunk:
                return
        before = self.total
        self.total += len(chunk)
        if self.total // _NOTE_EVERY != before // _NOTE_EVERY:
            self._note()
        room = self._head_budget - self._head
        if room > 0 and self._exact:
            self._spool.write(chunk[:room])
            self._head += min(room, len(chunk))
            chunk = chunk[room:]
            if self._head >= self._head_budget:  # the head is whole: on disk now, for a successor after a crash
                self._spool.flush()
        if not chunk:
            return
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= self._tail_budget:
            self._tail_size -= len(self._tail.popleft())

    def _against_head(self, chunk: bytes) -> bytes:
        """While the copy still matches the head: skip what matches, and return what
        comes after the head (the copy is then the whole output, counted exactly). At the
        first difference the copy began later: keep the head, count from the copy on."""
        assert self._compare is not None
        with open(self._spool_path, "rb") as head:
            head.seek(self._compare)
            expected = head.read(min(len(chunk), self._head - self._compare))
        if chunk.startswith(expected):
            self._compare += len(expected)
            if self._compare < self._head:
                return b""
            self._compare = None
            self.total = self._head
            return chunk[len(expected) :]
        matched, self._compare = self._compare, None
        self._exact = False  # what the copy lacks lies between the head and what follows
        self.total = self._head
        return chunk if not matched else self._replay(matched) + chunk

    def _replay(self, length: int) -> bytes:
        with open(self._spool_path, "rb") as head:
            return head.read(length)

    def head(self, limit: int = 1 << 18) -> bytes:
        """The beginning of the captured log (where pytest says why it could not start)."""
        self._spool.flush()
        with open(self._spool_path, "rb") as head:
            return head.read(limit)

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
        if self._exact and self.truncated:
            omitted = self.total - self._head - len(tail)
            out.write(f"\n[orchestrator: log truncated, {omitted} bytes omitted]\n".encode())
        elif not self._exact:
            at_least = max(self._floor, self.total) - self._head - len(tail)
            out.write(
                f"\n[orchestrator: log truncated, at least {max(at_least, 0)} bytes omitted (the engine had "
                f"rotated its copy of the log while the dispatcher could not read it)]\n".encode()
            )
        out.write(tail)

    def _note(self) -> None:
        try:
            self._note_path.write_text(str(max(self.total, self._floor)))
        except OSError:
            pass  # only a hint for a successor

    def _noted(self) -> int:
        try:
            return int(self._note_path.read_text())
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._spool.close()
        for path in (self._spool_path, self._note_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
