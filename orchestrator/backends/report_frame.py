"""The JUnit report carried at the end of a task's log, for a backend with no folder shared
with its containers: runner_image/entrypoint.py prints it base64 between two marker lines
(``ORCHESTRATOR_REPORT_FRAME`` names them); the reader keeps it out of the log."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

from orchestrator.backends.base import MAX_REPORT_BYTES

FRAME_ENV = "ORCHESTRATOR_REPORT_FRAME"


def frame(name: str) -> str:
    return f"--- orchestrator report {name}"


class Unframed:
    """The output before the frame, chunk by chunk; then ``found`` and ``report``. Reading
    stops at the frame's end: a followed engine log does not end with its task."""

    def __init__(self, chunks: Iterator[bytes], name: str):
        self._chunks = iter(chunks)
        self._begin = frame(name).encode() + b" begin\n"
        self._end = frame(name).encode() + b" end"
        self.found = False
        self.report: bytes | None = None

    def __iter__(self) -> Iterator[bytes]:
        held, keep = b"", len(self._begin) + 1
        for chunk in self._chunks:
            held += chunk
            at = held.find(b"\n" + self._begin)
            if at >= 0:
                yield held[:at + 1]
                self._read_report(held[at + 1 + len(self._begin):])
                return
            if len(held) > keep:
                yield held[:-keep]
                held = held[-keep:]
        if held:
            yield held

    def _read_report(self, rest: bytes) -> None:
        if self._end not in rest:
            for more in self._chunks:
                rest += more
                if self._end in rest[-len(self._end) - len(more):] or len(rest) > 2 * MAX_REPORT_BYTES:
                    break
        self.found = True
        self.report = _decode(rest, self._end)


def _decode(framed: bytes, end_marker: bytes) -> bytes | None:
    end = framed.find(end_marker)
    if end < 0:
        return None
    try:
        report = base64.b64decode(framed[:end], validate=False)
    except (binascii.Error, ValueError):
        return None
    return report[:MAX_REPORT_BYTES] or None
