"""Who may change what through the API.

Every request that changes something must come from this site, not from a page of
another origin that a user's browser happens to show: a cross-site ``Sec-Fetch-Site`` or
a foreign ``Origin`` is refused, and such a request must carry ``Content-Type:
application/json`` or the header ``X-Orchestrator: 1``, which no HTML form can send (and
which a script of another origin cannot send without a CORS preflight, which the API never
grants). With an api token, it must also carry ``Authorization: Bearer <token>``.

Observer progress (``heads`` in ``POST /api/commits``) can re-queue a whole history, so
it is the observer's alone: with a token, whoever has the token; without one (the API then
listens on loopback only), whoever can read ``<state_dir>/observer.key`` (mode 0600), which
is the orchestrator's own user, and not every local user.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

OBSERVER_KEY_FILE = "observer.key"
CLIENT_HEADER = "X-Orchestrator"


def observer_key(state_dir: Path) -> str:
    """The key a local observer proves itself with, made on first use, readable only by
    the orchestrator's user."""
    path = state_dir / OBSERVER_KEY_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


class Guard:
    def __init__(self, token: str | None, observer_key: str | None):
        self.token, self.observer_key = token, observer_key

    def change(self, request: Request) -> None:
        """A request that changes something: same-site, and with the token if one is set."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site requests cannot change anything here")
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, f"requests from {origin[:100]} cannot change anything here")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and CLIENT_HEADER.lower() not in request.headers:
            raise HTTPException(
                403,
                f"a request that changes something needs Content-Type: application/json "
                f"or the header {CLIENT_HEADER}: 1",
            )
        if self.token is not None and not _matches(request.headers.get("authorization"), "Bearer", self.token):
            raise HTTPException(401, "missing or wrong api token (Authorization: Bearer <token>)")

    def progress(self, request: Request) -> None:
        """Observer progress: the token's holder, else the holder of the observer key."""
        if self.token is not None:
            return  # change() has checked the token
        if self.observer_key is None or not _matches(request.headers.get("x-observer-key"), None, self.observer_key):
            raise HTTPException(
                403,
                f"only the observer may record progress (heads): it sends the key in "
                f"<state_dir>/{OBSERVER_KEY_FILE} as X-Observer-Key",
            )


def _matches(header: str | None, scheme: str | None, secret: str) -> bool:
    """``header`` is ``<scheme> <secret>`` (or just the secret), compared in constant time."""
    given = header or ""
    if scheme is not None:
        found, _, given = given.partition(" ")
        if found != scheme:
            return False
    return hmac.compare_digest(given.encode(), secret.encode())
