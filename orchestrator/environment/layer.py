"""The packages an unpack container installed into a folder, laid over the runner image as
one image layer, written on the host as a tar: no container, no commit.

The layer does what ``pip install`` into the image's own site-packages would: each package
goes to the interpreter's package folder, its scripts to its scripts folder, and of a
distribution the image has already (the runner's pytest, say) every file of the old
version's RECORD that the new one does not have is removed (a whiteout), so that one version
of each distribution is left, whole.

The folder was written by a container: it is read as data. Only folders and regular files
are taken (links, fifos and devices are left out and named), each owned by root with mode
0755 or 0644 (no setuid, setgid, sticky or world-writable bit), names that an engine would
read as whiteouts are left out, and no path leaves the folders it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

WHITEOUT = ".wh."
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]{1,400}$")
_DIST_INFO = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*?)-[^-/]+\.dist-info$")


class BadSite(ValueError):
    """site.json, or the folder, is not what an unpack leaves."""


@dataclass(frozen=True)
class Site:
    """Where the image's interpreter keeps packages (``purelib``) and scripts, and the
    RECORD of each distribution installed there already (paths relative to ``purelib``)."""

    purelib: str
    scripts: str
    present: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Site:
        try:
            data = json.loads(path.read_bytes()[: 16 * 1024 * 1024])
            purelib, scripts, present = data["purelib"], data["scripts"], data.get("present", {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadSite(f"{path.name} unreadable ({type(exc).__name__})") from None
        for where in (purelib, scripts):
            if not isinstance(where, str) or not _SAFE_PATH.match(where) or posixpath.normpath(where) != where:
                raise BadSite(f"{path.name}: not a plain absolute path: {str(where)[:100]!r}")
            if not where.startswith("/usr/"):  # an interpreter's folders: never /etc, /bin or /opt/runner
                raise BadSite(f"{path.name}: not a folder of the interpreter under /usr: {where[:100]!r}")
        if not isinstance(present, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v)
            for k, v in present.items()
        ):
            raise BadSite(f"{path.name}: 'present' is not a map of distributions to their files")
        return cls(purelib, scripts, {k: tuple(v) for k, v in present.items()})


@dataclass(frozen=True)
class Entry:
    source: Path  # on the host
    target: str  # in the image, absolute
    directory: bool
    mode: int
    mtime: int


@dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    removed: tuple[str, ...]  # paths of the image's own files the layer takes away
    left_out: tuple[str, ...]  # what the folder held that no install makes (named in the log)

    @classmethod
    def plan(cls, folder: Path, site: Site) -> Layer:
        """The layer for what the unpack put in ``folder`` (a ``--target`` folder: packages
        at its top, scripts in ``bin``) over an image described by ``site``."""
        entries: list[Entry] = []
        left_out: list[str] = []
        for source, relative in _walk(folder, left_out):
            top, _, rest = relative.partition("/")
            if top == "bin":
                if not rest:
                    continue  # the scripts folder itself is the image's
                target = posixpath.join(site.scripts, rest)
            else:
                target = posixpath.join(site.purelib, relative)
            info = source.lstat()
            directory = stat.S_ISDIR(info.st_mode)
            mode = 0o755 if directory or info.st_mode & 0o111 else 0o644
            entries.append(Entry(source, target, directory, mode, int(info.st_mtime)))
        added = {e.target for e in entries}
        new = {_project(name) for name in os.listdir(folder) if _DIST_INFO.match(name)}
        removed = set()
        for dist_info, files in site.present.items():
            if _project(dist_info) not in new or "/" in dist_info:
                continue
            record = posixpath.join(site.purelib, dist_info)
            if record not in added:  # another version's: gone whole, not left as an empty folder
                removed.add(record)
            for path in files:
                target = posixpath.normpath(posixpath.join(site.purelib, path))
                inside = any(target.startswith(root + "/") for root in (site.purelib, site.scripts))
                if inside and target not in added and _SAFE_PATH.match(target) and not target.startswith(record + "/"):
                    removed.add(target)
        return cls(tuple(entries), tuple(sorted(removed)), tuple(left_out))

    def write(self, out: IO[bytes], whiteouts: bool = True) -> str:
        """The layer as a tar into ``out`` (with ``whiteouts``, the engine's marks for what it
        removes; without, files only: the caller removes ``removed`` itself); its digest."""
        digest = _Hashing(out)
        with tarfile.open(fileobj=digest, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            if whiteouts:
                for path in self.removed:
                    head, name = posixpath.split(path)
                    tar.addfile(_info(posixpath.join(head, WHITEOUT + name), 0o644, 0, 0))
            for entry in self.entries:
                if entry.directory:
                    tar.addfile(_info(entry.target, entry.mode, entry.mtime, None))
                    continue
                with _open_plain(entry.source) as f:
                    size = os.fstat(f.fileno()).st_size
                    tar.addfile(_info(entry.target, entry.mode, entry.mtime, size), f)
        return "sha256:" + digest.sha256.hexdigest()


def _walk(folder: Path, left_out: list[str]) -> Iterator[tuple[Path, str]]:
    """Folders and regular files under ``folder``, parents first; anything else, and any
    name an engine reads as a whiteout, into ``left_out``."""
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in sorted(dirs) + sorted(files):
            path = base / name
            relative = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if name.startswith(WHITEOUT) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) or "\n" in relative:
                left_out.append(relative[:200])
                if name in dirs:
                    dirs.remove(name)
                continue
            yield path, relative
        dirs.sort()


def _project(dist_info: str) -> str:
    found = _DIST_INFO.match(dist_info)
    return re.sub(r"[-_.]+", "-", found.group("name")).lower() if found else ""


def _info(target: str, mode: int, mtime: int, size: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(target.lstrip("/"))
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, mtime, 0, 0, "root", "root"
    if size is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = size
    return info


def _open_plain(path: Path) -> IO[bytes]:
    """``path`` for reading, if it is still a regular file (never through a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadSite(f"{path.name} is no longer a regular file")
    return os.fdopen(fd, "rb")


class _Hashing:
    """A write-only file that hashes what passes through it."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.out.tell()
