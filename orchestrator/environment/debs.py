"""Debian packages for an environment image, fetched on this host for the image's release.

The package names come from config.yaml, never from a commit. apt resolves them against
the *image's own* dpkg status, not the host's: so what it fetches is exactly what the image
lacks, including the newer versions of packages the image already has where a new package
needs them (``python3.11-dev`` of bookworm-security needs the ``python3.11`` of the same
update; the image was bootstrapped from bookworm before it). dpkg then installs that one
consistent set inside the image's install container, which configures it in dependency order.

Each release gets a private apt tree under the state directory (its own sources: the
release, its -updates and its -security suites from the host's Debian mirror, checked
against Debian's archive keyring), so the host's own release and its other sources do not
matter. ``apt-get install --download-only`` runs no package script.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import IO

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LISTS_MAX_AGE = 24 * 3600  # seconds before a tree's package lists are read again


class AptTimedOut(Exception):
    """apt did not finish before the build's deadline."""


def host_mirror() -> str:
    """The Debian mirror the host's apt already uses (not its security archive)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for found in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in found.group(1) and "debian" in found.group(1):
                return found.group(1)
    return DEFAULT_MIRROR


def security_mirror(mirror: str) -> str:
    """Debian's security archive beside ``mirror`` (deb.debian.org serves both)."""
    return (
        mirror.rstrip("/").removesuffix("/debian") + "/debian-security"
        if mirror.rstrip("/").endswith("/debian")
        else "http://deb.debian.org/debian-security"
    )


class Apt:
    """apt-get for one Debian release, in a private tree, against an image's dpkg status."""

    def __init__(self, release: str, state_dir: Path):
        self.release = release
        self.root = state_dir / "apt" / release
        self.options = [
            "-o",
            f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State={self.root / 'state'}",
            "-o",
            f"Dir::Cache={self.root / 'cache'}",
            "-o",
            "APT::Get::List-Cleanup=0",
            "-o",
            "Debug::NoLocking=1",
        ]

    def refresh(self, out: IO[str], deadline: float) -> str | None:
        """Read the tree's package lists (at most once a day); None, or apt's reason."""
        lists = self.root / "state" / "lists"
        stamp = self.root / "updated"
        if stamp.is_file() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
            return None
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        mirror = host_mirror()
        (self.root / "sources.list").write_text(
            f"deb [signed-by={KEYRING}] {mirror} {self.release} main\n"
            f"deb [signed-by={KEYRING}] {mirror} {self.release}-updates main\n"
            f"deb [signed-by={KEYRING}] {security_mirror(mirror)} {self.release}-security main\n"
        )
        out.write(f"apt: reading the {self.release} package lists\n")
        out.flush()
        failed = self._run(["update", "--quiet"], out, deadline, status=None)
        if failed is None:
            stamp.touch()
        return failed

    def fetch(self, packages: tuple[str, ...], status: Path, dest: Path, out: IO[str], deadline: float) -> str | None:
        """The .deb files that installing ``packages`` into a system whose dpkg status is
        ``status`` needs (new packages and the upgrades they call for), into ``dest``."""
        (dest / "partial").mkdir(parents=True, exist_ok=True)
        return self._run(
            [
                "install",
                "--download-only",
                "--no-install-recommends",
                "--yes",
                "--quiet",
                "-o",
                f"Dir::Cache::archives={dest}",
                *packages,
            ],
            out,
            deadline,
            status=status,
        )

    def _run(self, args: list[str], out: IO[str], deadline: float, status: Path | None) -> str | None:
        status_option = ["-o", f"Dir::State::status={status or self.root / 'empty-status'}"]
        if status is None:
            (self.root / "empty-status").touch()
        try:
            proc = subprocess.run(
                ["apt-get", *self.options, *status_option, *args],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise AptTimedOut() from None
        out.write(proc.stderr)
        return None if proc.returncode == 0 else reason(proc.stderr, f"apt-get {args[0]} ({self.release})")


def reason(stderr: str, what: str) -> str:
    errors = [line.removeprefix("E: ").strip() for line in stderr.splitlines() if line.startswith("E: ")]
    return (errors[0] if errors else f"{what} failed")[:500]
