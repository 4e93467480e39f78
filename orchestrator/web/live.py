"""Followers of a running job's log, without a thread each.

One reader per followed container copies the engine's stream into memory (up to the log
cap); every follower is an asynchronous loop over that copy on the server's event loop,
which notices within a second when its client has gone. Followers are capped per job and
overall (429 past the caps), so no number of open log pages can stop the API answering.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from fastapi import HTTPException, Request

POLL = 0.2  # how often a follower looks for new output
DISCONNECT_EVERY = 1.0  # how often a follower asks whether its client is still there


class LiveLog:
    """One reader of one container's output, shared by all its followers."""

    def __init__(self, stream: Iterator[bytes], cap: int):
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.failed_before_output = False
        self.followers = 0
        self._cap = cap
        threading.Thread(target=self._read, args=(stream,), name="live-log", daemon=True).start()

    def _read(self, stream: Iterator[bytes]) -> None:
        try:
            for chunk in stream:
                if self.size + len(chunk) > self._cap:
                    self.chunks.append(
                        b"\n[orchestrator: the live view stops here; the saved log keeps the head and the tail]\n"
                    )
                    break
                self.chunks.append(chunk)
                self.size += len(chunk)
        except Exception:  # engine away, or the container gone (finished and removed)
            self.failed_before_output = not self.chunks
        finally:
            self.done = True


class LiveLogs:
    """The readers of the containers being followed, and the caps on their followers."""

    def __init__(self, open_stream: Callable[[str], Iterator[bytes]], cap: int, per_job: int, overall: int):
        self._open, self._cap, self.per_job, self.overall = open_stream, cap, per_job, overall
        self._logs: dict[str, LiveLog] = {}
        self._lock = threading.Lock()

    @property
    def followers(self) -> int:
        with self._lock:
            return sum(log.followers for log in self._logs.values())

    def follow(self, request: Request, container_id: str, saved: Path) -> AsyncIterator[bytes]:
        """A follower of ``container_id``'s output from its beginning, until it ends (then,
        if the container was already gone, the saved log); 429 past the caps."""
        with self._lock:
            for key in [k for k, log in self._logs.items() if log.done and not log.followers]:
                del self._logs[key]
            if sum(log.followers for log in self._logs.values()) >= self.overall:
                raise HTTPException(429, f"too many log followers (at most {self.overall}); try again later")
            live = self._logs.get(container_id)
            if live is not None and live.followers >= self.per_job:
                raise HTTPException(429, f"too many followers of this log (at most {self.per_job})")
            if live is None:
                live = self._logs[container_id] = LiveLog(self._open(container_id), self._cap)
            live.followers += 1
        return self._follow(request, live, saved)

    async def _follow(self, request: Request, live: LiveLog, saved: Path) -> AsyncIterator[bytes]:
        sent, asked = 0, asyncio.get_running_loop().time()
        try:
            while True:
                if sent < len(live.chunks):
                    new, sent = live.chunks[sent:], len(live.chunks)
                    yield b"".join(new)
                    continue
                if live.done:
                    break
                await asyncio.sleep(POLL)
                now = asyncio.get_running_loop().time()
                if now - asked >= DISCONNECT_EVERY:
                    asked = now
                    if await request.is_disconnected():
                        return
            if live.failed_before_output and saved.is_file():
                yield await asyncio.to_thread(saved.read_bytes)
        finally:
            with self._lock:
                live.followers -= 1
