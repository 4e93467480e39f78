"""Debian packages for an environment image, fetched on this host for the image's release.

``apt-get download`` runs no package script, so fetching is safe on the host; dpkg
installs the files inside the image build. The host's own apt serves its own release;
another release (trixie for Python 3.13 on a bookworm host) gets a private apt tree under
the state directory, with its own package lists from the host's mirror, checked against
Debian's archive keyring as the host's apt checks its own.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import IO

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LISTS_MAX_AGE = 24 * 3600   # seconds before a private tree's package lists are read again


def host_release() -> str | None:
    try:
        found = re.search(r"^VERSION_CODENAME=(\S+)$", Path("/etc/os-release").read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1).strip('"') if found else None


def host_mirror() -> str:
    """The Debian mirror the host's apt already uses (not its security archive)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for found in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in found.group(1):
                return found.group(1)
    return DEFAULT_MIRROR


class Apt:
    """apt-cache and apt-get for one Debian release: the host's, or a private tree."""

    def __init__(self, release: str, state_dir: Path):
        self.release = release
        self.options: list[str] = []
        if release != host_release():
            self.root = state_dir / "apt" / release
            self.options = [
                "-o", f"Dir::Etc::SourceList={self.root / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State={self.root / 'state'}", "-o", f"Dir::State::status={self.root / 'status'}",
                "-o", f"Dir::Cache={self.root / 'cache'}", "-o", "APT::Get::List-Cleanup=0",
            ]

    def refresh(self, out: IO[str]) -> str | None:
        """Read the private tree's package lists (at most once a day); None, or apt's reason."""
        if not self.options:
            return None
        lists = self.root / "state" / "lists"
        stamp = self.root / "updated"
        if stamp.is_file() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
            return None
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "sources.list").write_text(f"deb [signed-by={KEYRING}] {host_mirror()} {self.release} main\n")
        out.write(f"apt: reading the {self.release} package lists\n")
        out.flush()
        proc = subprocess.run(["apt-get", *self.options, "update", "--quiet"], stdout=out, stderr=subprocess.PIPE,
                              text=True)
        out.write(proc.stderr)
        if proc.returncode != 0:
            return reason(proc.stderr, f"apt-get update ({self.release})")
        stamp.touch()
        return None

    def closure(self, packages: tuple[str, ...]) -> tuple[set[str], str | None]:
        """``packages`` and everything they depend on (recommends left out)."""
        proc = subprocess.run(["apt-cache", *self.options, "depends", "--recurse", "--no-recommends", "--no-suggests",
                               "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return set(), reason(proc.stderr, "apt-cache depends")
        return {line.strip() for line in proc.stdout.splitlines() if line and not line.startswith((" ", "<"))}, None

    def download(self, packages: list[str], dest: Path, out: IO[str]) -> str | None:
        proc = subprocess.run(["apt-get", *self.options, "download", "--quiet", *packages], cwd=dest,
                              stdout=out, stderr=subprocess.PIPE, text=True)
        out.write(proc.stderr)
        return None if proc.returncode == 0 else reason(proc.stderr, "apt-get download")


def reason(stderr: str, what: str) -> str:
    errors = [line.removeprefix("E: ").strip() for line in stderr.splitlines() if line.startswith("E: ")]
    return (errors[0] if errors else f"{what} failed")[:500]
