"""The Python versions the runner images offer, and what each one is built from.

One runner image per Python version: the Debian release that ships that Python is the
base (pulled as the official ``python`` image where a registry answers, else built here
with debootstrap), and its glibc bounds which compiled wheels an environment may use. A
repository picks its version with ``python:``; the default version runs in
``runner.image`` itself, every other in the same image name tagged ``py<version>``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Python:
    version: str
    debian: str  # the Debian release whose python3 this is
    glibc: int  # that release's glibc minor version: manylinux_2_<glibc> wheels and older fit
    base: str  # the official image with this Python on that release, where a registry answers

    @property
    def fallback_base(self) -> str:
        """The base built locally by runner_image/bootstrap-base.sh when ``base`` cannot be
        pulled; the revision in its tag changes with the script, so an older base is not reused."""
        return f"orchestrator-base:{self.debian}-{BASE_REVISION}"


BASE_REVISION = "r2"  # r2: pip from PyPI, not Debian's python3-pip and its packages
DEFAULT = "3.11"
OFFERED = {
    "3.11": Python("3.11", "bookworm", 36, "python:3.11-slim-bookworm"),
    "3.13": Python("3.13", "trixie", 41, "python:3.13-slim-trixie"),
}


def runner_image(default_image: str, version: str) -> str:
    """The runner image for ``version``: ``default_image`` for the default Python, else that
    name tagged ``py<version>`` (``ci-runner:latest`` -> ``ci-runner:py3.13``)."""
    if version == DEFAULT:
        return default_image
    name, _, tag = default_image.rpartition(":")
    if not name or "/" in tag:  # no tag (a registry port is not one)
        name = default_image
    return f"{name}:py{version}"
