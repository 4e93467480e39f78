"""The host's side of an environment's resolution: the package indexes of config.yaml,
and nothing else, served to the resolver (uv) in a container that has no network.

uv runs in the unpack container (sandbox.py) and reaches this proxy through a unix
socket mounted into it. The proxy answers two kinds of request:

- ``/simple/<n>/<project>/``: the project's page of the n-th configured index, fetched
  here and written out again with every file link replaced by a ``/files/<token>`` of this
  proxy (its ``#sha256=`` kept, so the resolver still checks what it gets, and so does the
  wheel cache before it keeps a file: wheels.py);
- ``/files/<token>/<name>`` (and ``<name>.metadata``, PEP 658): a file that an index page
  linked, under its own name (the resolver reads a distribution's version and tags from it);
  its head is answered here, with no ranges offered.

So every URL this host fetches is an index's from config.yaml, or one an index's page named:
never one a commit chose. An index that cannot be reached, times out or answers other than
200 or 404 is *trouble*, recorded for the caller: a reason to try the build again later
(an infrastructure failure), never a verdict on the commit.
"""

from __future__ import annotations

import hashlib
import html
import http.server
import logging
import os
import re
import shutil
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit

import requests

from orchestrator.environment.wheels import WheelCache

log = logging.getLogger("orchestrator.environment")

PYPI = "https://pypi.org/simple"
MAX_PAGE = 64 * 1024 * 1024  # an index page (PyPI's largest are a few MB)
MAX_FILE = 2 * 1024 * 1024 * 1024  # one distribution file
CHUNK = 256 * 1024
_PROJECT = re.compile(r"^/simple/(\d{1,3})/([A-Za-z0-9][A-Za-z0-9._-]{0,200})/?$")
_FILE = re.compile(r"^/files/([0-9a-f]{40})/[^/]+$")
_KEPT = ("data-requires-python", "data-dist-info-metadata", "data-core-metadata", "data-yanked", "data-gpg-sig")


class IndexProxy:
    """Serves the configured ``indexes`` on a unix socket while in ``serving``."""

    def __init__(self, indexes: list[str], timeout: float = 30, cache: WheelCache | None = None):
        self.indexes = [url.rstrip("/") + "/" for url in indexes]
        self.timeout = timeout
        self.cache = cache  # files kept by digest, for every build on this host (wheels.py)
        self.trouble: list[str] = []  # what went wrong between here and an index
        self.fetched: list[str] = []  # every URL fetched, for the build's log
        self._files: dict[str, tuple[str, str]] = {}  # token -> the URL an index page named, its sha256
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._session = requests.Session()

    @contextmanager
    def serving(self, socket_path: Path) -> Iterator[IndexProxy]:
        """Listen on ``socket_path`` (connectable by any user: the container's is not ours)."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _UnixServer(str(socket_path), Handler)
        os.chmod(socket_path, 0o666)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="index-proxy", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._closed.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._session.close()

    # -- what the resolver asks for ------------------------------------------------------------

    def page(self, index: int, project: str) -> tuple[int, bytes]:
        """The project's page of index ``index``, its links made this proxy's."""
        if index >= len(self.indexes):
            return 404, b""
        url = f"{self.indexes[index]}{project}/"
        response = self._get(url, page=True)
        if response is None:
            return 502, b""
        with response:
            if response.status_code == 404:
                return 404, b""
            if response.status_code != 200:
                self._troubled(url, f"HTTP {response.status_code}")
                return 502, b""
            body = self._read(response, url, MAX_PAGE)
            if body is None:
                return 502, b""
            return 200, self._rewrite(body.decode(response.encoding or "utf-8", "replace"), response.url)

    def kept(self, token: str) -> Path | None:
        """The cache's copy of a linked file, if it has one with the digest its page gave."""
        with self._lock:
            url, sha256 = self._files.get(token, ("", ""))
        found = self.cache.get(sha256) if self.cache is not None and sha256 else None
        if found is not None:
            with self._lock:
                self.fetched.append(f"(kept) {url}")
        return found

    def known(self, token: str) -> bool:
        with self._lock:
            return token in self._files

    def digest(self, token: str) -> str:
        with self._lock:
            return self._files.get(token, ("", ""))[1]

    def file(self, token: str, metadata: bool) -> tuple[requests.Response | None, int]:
        """The upstream response for a linked file (to stream), or the status to answer."""
        with self._lock:
            url, _ = self._files.get(token, ("", ""))
        if not url:
            return None, 404
        url += ".metadata" if metadata else ""
        response = self._get(url, page=False)
        if response is None:
            return None, 502
        if response.status_code == 404 and metadata:
            response.close()
            return None, 404
        if response.status_code != 200:
            self._troubled(url, f"HTTP {response.status_code}")
            response.close()
            return None, 502
        return response, 200

    def closed(self) -> bool:
        return self._closed.is_set()

    # -- the index, from here -----------------------------------------------------------

    def _get(self, url: str, page: bool) -> requests.Response | None:
        if self._closed.is_set():
            return None
        with self._lock:
            self.fetched.append(url)
        try:
            return self._session.get(
                url, stream=True, timeout=(10, self.timeout), headers={"Accept": "text/html"} if page else {}
            )
        except requests.RequestException as exc:
            self._troubled(url, type(exc).__name__)
            return None

    def _read(self, response: requests.Response, url: str, limit: int) -> bytes | None:
        data = bytearray()
        try:
            for chunk in response.iter_content(CHUNK):
                data += chunk
                if len(data) > limit:
                    self._troubled(url, f"larger than {limit} bytes")
                    return None
                if self._closed.is_set():
                    return None
        except requests.RequestException as exc:
            self._troubled(url, type(exc).__name__)
            return None
        return bytes(data)

    def _troubled(self, url: str, what: str) -> None:
        with self._lock:
            self.trouble.append(f"{_without_credentials(url)}: {what}")

    def _rewrite(self, text: str, page_url: str) -> bytes:
        """The page's file links as links of this proxy: only http(s), each remembered."""
        anchors = _Anchors()
        anchors.feed(text)
        base = urljoin(page_url, anchors.base) if anchors.base else page_url
        out = ["<!DOCTYPE html><html><body>"]
        for attrs, label in anchors.links:
            target, fragment = urldefrag(urljoin(base, attrs.get("href") or ""))
            if urlsplit(target).scheme not in ("http", "https"):
                continue
            name = quote(unquote(urlsplit(target).path.rsplit("/", 1)[-1]) or "file", safe="")
            token = hashlib.sha1(target.encode()).hexdigest()
            algorithm, _, value = fragment.partition("=")
            with self._lock:
                self._files[token] = (target, value.lower() if algorithm == "sha256" else "")
            kept = "".join(f' {attr}="{html.escape(attrs[attr] or "", quote=True)}"' for attr in _KEPT if attr in attrs)
            href = f"/files/{token}/{name}" + (f"#{fragment}" if fragment else "")
            out.append(f'<a href="{html.escape(href, quote=True)}"{kept}>{html.escape(label)}</a><br/>')
        out.append("</body></html>\n")
        return "\n".join(out).encode()


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[dict[str, str | None], str]] = []
        self.base: str | None = None
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.links.append((self._open, "".join(self._text).strip()))
            self._open = None


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: IndexProxy
    protocol_version = "HTTP/1.0"  # one request per connection, the end of the body is the end of it
    timeout = 60

    def do_GET(self) -> None:  # http.server's name
        path = self.path.split("?", 1)[0]
        if found := _PROJECT.match(path):
            status, body = self.owner.page(int(found.group(1)), found.group(2))
            self._answer(status, body, "text/html")
        elif found := _FILE.match(path):
            metadata = path.endswith(".metadata")
            kept = None if metadata else self.owner.kept(found.group(1))
            if kept is not None:
                return self._send_kept(kept)
            response, status = self.owner.file(found.group(1), metadata)
            if response is None:
                self._answer(status, b"", "text/plain")
            else:
                self._stream(response, "" if metadata else self.owner.digest(found.group(1)))
        else:
            self._answer(404, b"", "text/plain")

    def do_HEAD(self) -> None:
        """uv asks a file's head first (to read a wheel's metadata by ranges): answered
        from here, without going upstream, and with no ranges offered, so it fetches the
        file whole."""
        found = _FILE.match(self.path.split("?", 1)[0])
        known = found is not None and self.owner.known(found.group(1))
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, response: requests.Response, sha256: str) -> None:
        """The upstream file to the client; kept by the cache as it passes, when its page
        gave a digest and what came matches it."""
        cache = self.owner.cache
        with response, cache.keeping(sha256) if cache is not None else nullcontext() as keeper:
            size = response.headers.get("Content-Length", "")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if size.isdigit():
                self.send_header("Content-Length", size)
            self.end_headers()
            sent = 0
            try:
                for chunk in response.iter_content(CHUNK):
                    sent += len(chunk)
                    if sent > MAX_FILE or self.owner.closed():
                        raise OSError("cut")
                    self.wfile.write(chunk)
                    if keeper is not None:
                        keeper.write(chunk)
            except requests.RequestException as exc:
                self.owner._troubled(response.url, type(exc).__name__)
                if keeper is not None:
                    keeper.ok = False
            except OSError:  # the resolver went away (its container ended), or the file was cut
                if keeper is not None:
                    keeper.ok = False

    def _send_kept(self, path: Path) -> None:
        try:
            f = open(path, "rb")
        except OSError:  # evicted between the look and now
            return self._answer(503, b"", "text/plain")
        with f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.end_headers()
            try:
                shutil.copyfileobj(f, self.wfile, CHUNK)
            except OSError:
                pass

    def log_message(self, format: str, *args: object) -> None:
        pass


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return (
        url.replace(f"{parts.username}:{parts.password}@", "").replace(f"{parts.username}@", "")
        if parts.username
        else url
    )


def host_index_url(pip_config: str) -> str:
    """The index that ``pip config list`` (its output: ``pip_config``, the files already
    merged by their precedence) says ``pip download`` on this host uses: PIP_INDEX_URL,
    then the ``[download]`` section, then ``[global]``; else PyPI."""
    found: dict[str, str] = {}
    for line in pip_config.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.strip().rpartition(".")
        if name == "index-url":
            found[section] = value.strip().strip("'\"")
    for section in (":env:", "download", "global"):
        if found.get(section):
            return found[section]
    return PYPI
