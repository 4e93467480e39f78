"""How a webhook's news reaches its receiver: a channel is a format (the bytes of a body,
and their content type) carried by one HTTP POST (``post``). The news itself (which
events, what each says) is notify.py's; a second format, a chat service's say, is one more
``Channel`` here or in a module of its own, given to the ``Notifier``.

A receiver is somebody else's server, so each request is bounded: no redirect is followed
(a 3xx is a failed try: the body goes only to the URL of config.yaml), at most
``MAX_ANSWER`` bytes of the answer are read, and the whole request, from connecting to the
last byte read, ends by ``notify.timeout`` (a receiver that answers a byte at a time is cut).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

MAX_ANSWER = 4096  # bytes of a receiver's answer that are read (none of it is used)


class Channel(Protocol):
    def payload(self, body: dict[str, Any]) -> tuple[bytes, str]:
        """The request body for the news ``body`` (notify.py's document), and its content type."""
        ...


class JsonChannel:
    """The news as it is: the JSON document, every field of it (the documented webhook)."""

    def payload(self, body: dict[str, Any]) -> tuple[bytes, str]:
        return json.dumps(body).encode(), "application/json"


JSON = JsonChannel()


def post(url: str, body: bytes, content_type: str, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to ``url``; the answer's status. The whole request ends by
    ``timeout`` (connecting has ``timeout`` of its own): past it, the connection is cut."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=ssl.create_default_context())
        if parts.scheme == "https"
        else http.client.HTTPConnection(host, parts.port, timeout=timeout)
    )
    sent = dict(headers, **{"Content-Type": content_type, "User-Agent": "orchestrator"})
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        sent["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    connection.connect()
    cut = threading.Timer(timeout, _cut, args=(connection,))
    cut.start()
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, sent)
        answer = connection.getresponse()
        answer.read(MAX_ANSWER)
        return answer.status
    finally:
        cut.cancel()
        connection.close()


def _cut(connection: http.client.HTTPConnection) -> None:
    try:
        if connection.sock is not None:
            connection.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
