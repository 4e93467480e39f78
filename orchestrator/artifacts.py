"""Artifacts and coverage: what a suite leaves in its workspace for people to download.

Files under ``/workspace/.ci-artifacts/``, and those matching ``repositories[].artifacts``
globs (relative to the workspace), are copied into the result folder's ``artifacts/``
after the container ended. The workspace was written by the code under test, so: only
regular files are taken (a link, a device, a fifo is refused, and a linked folder is never
entered), each file at most MAX_FILE bytes, a job at most MAX_JOB bytes and MAX_FILES files.
What was refused is listed with the reason.

A Cobertura ``coverage.xml`` at the workspace's root (pytest-cov's ``--cov-report=xml``) or
among the artifacts gives the job's line coverage, in percent.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ARTIFACTS_DIR = ".ci-artifacts"
MAX_FILE = 20 * 1024 * 1024
MAX_JOB = 100 * 1024 * 1024
MAX_FILES = 1000
MAX_COVERAGE_XML = 50 * 1024 * 1024


@dataclass
class Collected:
    files: list[str] = field(default_factory=list)      # relative paths under artifacts/
    refused: list[str] = field(default_factory=list)    # "path: why"
    bytes: int = 0

    def add(self, other: "Collected", under: str = "") -> None:
        """``other``'s files, collected into the folder ``under`` (a shard's)."""
        prefix = f"{under}/" if under else ""
        self.files += [prefix + name for name in other.files]
        self.refused += [prefix + why for why in other.refused]
        self.bytes += other.bytes

    def document(self) -> dict | None:
        """What ``result.json`` says (``artifacts``): None when nothing was found."""
        return {"files": self.files, "refused": self.refused, "bytes": self.bytes} if self.files or self.refused else None


def collect(workspace: Path, target: Path, globs: list[str]) -> Collected:
    """Copy the artifacts of ``workspace`` into ``target``."""
    found = Collected()
    for relative in _candidates(workspace, globs):
        source = workspace / relative
        try:
            st = os.lstat(source)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            found.refused.append(f"{relative}: not a regular file")
        elif st.st_size > MAX_FILE:
            found.refused.append(f"{relative}: {st.st_size} bytes, more than {MAX_FILE}")
        elif found.bytes + st.st_size > MAX_JOB or len(found.files) >= MAX_FILES:
            found.refused.append(f"{relative}: over the job's cap ({MAX_JOB} bytes, {MAX_FILES} files)")
        else:
            name = relative[len(ARTIFACTS_DIR) + 1:] if relative.startswith(ARTIFACTS_DIR + "/") else relative
            if _copy(source, target / name, st.st_size):
                found.files.append(name)
                found.bytes += st.st_size
    return found


def _candidates(workspace: Path, globs: list[str]) -> list[str]:
    """Paths relative to ``workspace`` under .ci-artifacts or matching a glob, walked
    without entering a linked folder."""
    chosen: list[str] = []
    for folder, dirs, files in os.walk(workspace, followlinks=False):
        rel_folder = os.path.relpath(folder, workspace)
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            relative = name if rel_folder == "." else f"{rel_folder}/{name}"
            if relative.startswith(ARTIFACTS_DIR + "/") or any(fnmatch.fnmatch(relative, g) for g in globs):
                chosen.append(relative)
        if len(chosen) > MAX_FILES * 2:
            break
    return sorted(chosen)


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
    def __init__(self, fh, limit: int):
        self.fh, self.left = fh, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n > 0 else b""
        self.left -= len(data)
        return data


def coverage(workspace: Path, artifacts: Path) -> float | None:
    """Line coverage in percent from a Cobertura report, if the suite wrote one."""
    for report in _cobertura(workspace, artifacts):
        try:
            rate = float(report.get("line-rate", ""))
        except ValueError:
            continue
        if 0 <= rate <= 1:
            return round(rate * 100, 2)
    return None


def coverage_of_shards(folders: list[tuple[Path, Path]]) -> float | None:
    """Line coverage in percent of a suite split across containers, from each shard's
    Cobertura report ((workspace, artifacts) of each): every line any report lists, covered
    if any shard ran it. A shard's own line-rate covers only what its share of the tests ran."""
    lines: dict[tuple[str, str], bool] = {}
    for workspace, artifacts in folders:
        for report in _cobertura(workspace, artifacts)[:1]:
            for unit in report.iter("class"):
                name = unit.get("filename") or unit.get("name") or ""
                for line in unit.iter("line"):
                    key = (name, line.get("number") or "")
                    lines[key] = lines.get(key, False) or _hits(line) > 0
    return round(100 * sum(lines.values()) / len(lines), 2) if lines else None


def _hits(line: ET.Element) -> int:
    try:
        return int(line.get("hits") or 0)
    except ValueError:
        return 0


def _cobertura(workspace: Path, artifacts: Path) -> list[ET.Element]:
    """The Cobertura reports the suite wrote, at the workspace's root or among its
    artifacts: regular files only, size-capped, parsed."""
    found = []
    for path in (workspace / "coverage.xml", artifacts / "coverage.xml"):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_COVERAGE_XML:
            continue
        try:
            found.append(ET.parse(path).getroot())
        except (ET.ParseError, OSError):
            continue
    return found
