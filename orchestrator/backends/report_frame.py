"""The JUnit report carried at the end of a task's log, for a backend with no folder shared
with its containers: runner_image/entrypoint.py prints it base64 between two marker lines;
the reader keeps it out of the log.

The suite writes to the same log, so the marker is a random secret of each attempt
(``new_marker``), never in the task's environment: it travels as the file FRAME_FILE in the
job's image, which the entrypoint reads and removes before the suite starts (see its
docstring). ``protocol.REPORT_FRAME=1`` only asks for the frame. Reading stops at the
first frame with the marker: a frame the suite prints has no way to carry it."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterator

from orchestrator.backends.base import MAX_REPORT_BYTES
from runner_image import orchestrator_protocol as protocol

FRAME_ENV = protocol.REPORT_FRAME
FRAME_FILE = protocol.FRAME_FILE  # in the output folder (/ci-out), read and removed by the entrypoint
frame = protocol.frame


def new_marker() -> str:
    return secrets.token_hex(16)


class Unframed:
    """The output before the frame, chunk by chunk; then ``found`` and ``report``. Reading
    stops at the frame's end: a followed engine log does not end with its task."""

    def __init__(self, chunks: Iterator[bytes], marker: str):
        self._chunks = iter(chunks)
        self._begin = frame(marker).encode() + b" begin\n"
        self._end = frame(marker).encode() + b" end"
        self.found = False
        self.report: bytes | None = None

    def __iter__(self) -> Iterator[bytes]:
        held, keep = b"", len(self._begin) + 1
        for chunk in self._chunks:
            held += chunk
            at = held.find(b"\n" + self._begin)
            if at >= 0:
                yield held[: at + 1]
                self._read_report(held[at + 1 + len(self._begin) :])
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
                if self._end in rest[-len(self._end) - len(more) :] or len(rest) > 2 * MAX_REPORT_BYTES:
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
