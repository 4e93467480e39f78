"""Artifacts and coverage: what a suite leaves in its workspace for people to download.

Files under ``/workspace/.ci-artifacts/``, and those matching ``repositories[].artifacts``
globs (relative to the workspace), are copied into the result folder's ``artifacts/``
after the container ended. The workspace was written by the code under test, so: only
regular files are taken (a link, a device, a fifo is refused, and a linked folder is never
entered), each file at most MAX_FILE bytes, a job at most MAX_JOB bytes and MAX_FILES files;
a name that is not UTF-8 is refused (listed escaped). What was refused is listed with the
reason, the first MAX_REFUSED of it, and counted; the walk stops once that much is found,
so a folder of a million files costs no more than one of a thousand.

A Cobertura ``coverage.xml`` at the workspace's root (pytest-cov's ``--cov-report=xml``) or
among the artifacts gives the job's line coverage, in percent: read as a stream (its root's
``line-rate``, or each ``<line>`` of a split suite's reports, cleared as it is read), never
held whole in memory.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

ARTIFACTS_DIR = ".ci-artifacts"
MAX_FILE = 20 * 1024 * 1024
MAX_JOB = 100 * 1024 * 1024
MAX_FILES = 1000
MAX_REFUSED = 100  # refusals listed; the rest are counted
MAX_SHARD_LINES = 2_000_000  # lines of a split suite's reports merged (beyond: no coverage)
MAX_COVERAGE_XML = 50 * 1024 * 1024


@dataclass
class Collected:
    files: list[str] = field(default_factory=list)  # relative paths under artifacts/
    refused: list[str] = field(default_factory=list)  # "path: why", the first MAX_REFUSED
    bytes: int = 0
    more_refused: int = 0  # refusals beyond those listed
    stopped: bool = False  # the walk stopped at the cap: more were there

    def refuse(self, why: str) -> None:
        if len(self.refused) < MAX_REFUSED:
            self.refused.append(why)
        else:
            self.more_refused += 1

    def add(self, other: Collected, under: str = "") -> None:
        """``other``'s files, collected into the folder ``under`` (a shard's)."""
        prefix = f"{under}/" if under else ""
        self.files += [prefix + name for name in other.files]
        for why in other.refused:
            self.refuse(prefix + why)
        self.more_refused += other.more_refused
        self.bytes += other.bytes
        self.stopped = self.stopped or other.stopped

    def document(self) -> dict | None:
        """What ``result.json`` says (``artifacts``): None when nothing was found."""
        if not self.files and not self.refused:
            return None
        return {
            "files": self.files,
            "refused": self.refused,
            "bytes": self.bytes,
            **({"more_refused": self.more_refused} if self.more_refused else {}),
            **({"stopped": True} if self.stopped else {}),
        }


def collect(workspace: Path, target: Path, globs: list[str]) -> Collected:
    """Copy the artifacts of ``workspace`` into ``target``."""
    found = Collected()
    candidates, found.stopped = _candidates(workspace, globs)
    for relative in candidates:
        shown = _printable(relative)
        if shown != relative:
            found.refuse(f"{shown}: the name is not UTF-8")
            continue
        source = workspace / relative
        try:
            st = os.lstat(source)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            found.refuse(f"{relative}: not a regular file")
        elif st.st_size > MAX_FILE:
            found.refuse(f"{relative}: {st.st_size} bytes, more than {MAX_FILE}")
        elif found.bytes + st.st_size > MAX_JOB or len(found.files) >= MAX_FILES:
            found.refuse(f"{relative}: over the job's cap ({MAX_JOB} bytes, {MAX_FILES} files)")
        else:
            name = relative[len(ARTIFACTS_DIR) + 1 :] if relative.startswith(ARTIFACTS_DIR + "/") else relative
            if _copy(source, target / name, st.st_size):
                found.files.append(name)
                found.bytes += st.st_size
    return found


def _printable(name: str) -> str:
    """``name`` as it is shown: itself when it is UTF-8, else with its bytes escaped."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _candidates(workspace: Path, globs: list[str]) -> tuple[list[str], bool]:
    """Paths relative to ``workspace`` under .ci-artifacts or matching a glob, walked
    without entering a linked folder; and whether the walk stopped at the cap (as many as
    could be taken or listed as refused)."""
    chosen: list[str] = []
    cap = MAX_FILES + MAX_REFUSED
    for folder, dirs, files in os.walk(workspace, followlinks=False):
        rel_folder = os.path.relpath(folder, workspace)
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            relative = name if rel_folder == "." else f"{rel_folder}/{name}"
            if relative.startswith(ARTIFACTS_DIR + "/") or any(fnmatch.fnmatch(relative, g) for g in globs):
                chosen.append(relative)
                if len(chosen) >= cap:
                    return sorted(chosen), True
    return sorted(chosen), False


def _copy(source: Path, dest: Path, size: int) -> bool:
    """Copy the file ``source`` was when looked at: opened without following a link it may
    have become since, and no more than ``size`` bytes."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            shutil.copyfileobj(_Limited(src, size), out)
    os.chmod(dest, 0o644)
    return True


class _Limited:
    def __init__(self, fh: BinaryIO, limit: int):
        self.fh, self.left = fh, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n > 0 else b""
        self.left -= len(data)
        return data


def coverage(workspace: Path, artifacts: Path) -> float | None:
    """Line coverage in percent from a Cobertura report, if the suite wrote one: its root's
    ``line-rate``, read without reading further."""
    for report in _cobertura(workspace, artifacts):
        try:
            with _open_regular(report) as fh:
                for _event, root in ET.iterparse(fh, events=("start",)):
                    rate = float(root.get("line-rate", ""))
                    if 0 <= rate <= 1:
                        return round(rate * 100, 2)
                    break
        except (ET.ParseError, OSError, ValueError):
            continue
    return None


def coverage_of_shards(folders: list[tuple[Path, Path]]) -> float | None:
    """Line coverage in percent of a suite split across containers, from each shard's
    Cobertura report ((workspace, artifacts) of each): every line any report lists, covered
    if any shard ran it. A shard's own line-rate covers only what its share of the tests ran."""
    lines: dict[tuple[str, str], bool] = {}
    for workspace, artifacts in folders:
        for report in _cobertura(workspace, artifacts)[:1]:
            try:
                if not _merge_lines(report, lines):
                    return None
            except (ET.ParseError, OSError):
                continue
    return round(100 * sum(lines.values()) / len(lines), 2) if lines else None


def _merge_lines(report: Path, lines: dict[tuple[str, str], bool]) -> bool:
    """Each ``<line>`` of each ``<class>`` into ``lines``, element by element: an element
    read is taken out of the tree, which never holds more than the path to the current one.
    False past MAX_SHARD_LINES."""
    unit, open_elements = "", []
    with _open_regular(report) as fh:
        for event, element in ET.iterparse(fh, events=("start", "end")):
            if event == "start":
                open_elements.append(element)
                if element.tag == "class":
                    unit = element.get("filename") or element.get("name") or ""
                continue
            open_elements.pop()
            if element.tag == "line":
                key = (unit, element.get("number") or "")
                lines[key] = lines.get(key, False) or _hits(element) > 0
                if len(lines) > MAX_SHARD_LINES:
                    return False
            if open_elements:
                del open_elements[-1][-1]  # the element just ended is its parent's last child
    return True


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading only if it is (still) a regular file, never through a link."""
    fh = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise OSError(f"{path.name} is not a regular file")
    return fh


def _hits(line: ET.Element) -> int:
    try:
        return int(line.get("hits") or 0)
    except ValueError:
        return 0


def _cobertura(workspace: Path, artifacts: Path) -> list[Path]:
    """The Cobertura reports the suite wrote, at the workspace's root or among its
    artifacts: regular files only, size-capped."""
    found = []
    for path in (workspace / "coverage.xml", artifacts / "coverage.xml"):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_COVERAGE_XML:
            found.append(path)
    return found
