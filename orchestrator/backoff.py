"""Growing, capped delays between tries of something that failed: the engine, a
repository, a webhook receiver. One helper, so every retry loop backs off the same way."""

from __future__ import annotations


class Backoff:
    """``first``, then ``factor`` times more after each failure, never above ``cap``;
    ``reset`` after a success. Not thread-safe: one per loop."""

    def __init__(self, first: float, cap: float, factor: float = 2.0):
        self.first, self.cap, self.factor = first, cap, factor
        self._current = 0.0

    @property
    def failing(self) -> bool:
        """A failure was seen since the last reset."""
        return self._current > 0

    def next(self) -> float:
        """The delay before the next try."""
        self._current = min(self.cap, self._current * self.factor if self._current else self.first)
        return self._current

    def after(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row, for a loop whose count is kept
        elsewhere (a webhook delivery's tries, in the outbox)."""
        return min(self.cap, self.first * self.factor ** max(failures - 1, 0))

    def reset(self) -> bool:
        """Back to the first delay; True if it was failing until now."""
        was, self._current = self.failing, 0.0
        return was
