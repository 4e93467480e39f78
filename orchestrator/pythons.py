"""The Pythons the runner images offer, and what each one is built from.

One runner image per Python: the Debian release that ships that interpreter is the base
(pulled as the official ``python`` image where a registry answers and one exists, else
built here with mmdebstrap), and its glibc bounds which compiled wheels an environment may
use. The interpreter is the image's ``python3`` (a release's second Python, or PyPy, is
linked there), so the entrypoint and pip inside never need to know which one it is.

A repository names one Python (``python: "3.13"``), several, or ``auto``: every offered
CPython its commit's ``requires-python`` allows. PyPy is named, never chosen by ``auto``.
The default Python runs in ``runner.image`` itself, every other in that name tagged
``py<name>``.

Forky is Debian's testing release, a moving target: its base is pinned when it is built
(the tag carries the day, the labels the interpreters' package versions) and built again
only on request (``orchestrator image build --refresh-base``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.version import Version

# packaging is imported where it is used: scripts/setup.sh reads which base each Python falls
# back to from this module before anything is installed

BASE_REVISION = "r2"  # r2: pip from PyPI, not Debian's python3-pip; a release's extra interpreters are in its own name


@dataclass(frozen=True)
class Release:
    """A Debian release as a base: its glibc (manylinux_2_<glibc> wheels and older fit) and
    the packages of the interpreters it offers beside its ``python3``."""

    name: str
    glibc: int
    interpreters: tuple[str, ...] = ()
    moving: bool = False  # testing: pinned at build time, rebuilt only on request


BOOKWORM = Release("bookworm", 36)
TRIXIE = Release("trixie", 41)
FORKY = Release("forky", 42, ("python3.15", "pypy3"), moving=True)


@dataclass(frozen=True)
class Python:
    name: str  # what a repository lists: "3.14", "pypy3.11"
    release: Release
    command: str = "python3"  # the interpreter in that release, linked as the image's python3
    base: str | None = None  # the official image with this Python, where a registry answers

    @property
    def version(self) -> Version:
        """The language version it implements (PyPy's too)."""
        from packaging.version import Version

        return Version(self.name.removeprefix("pypy"))

    @property
    def pypy(self) -> bool:
        return self.name.startswith("pypy")

    @property
    def debian(self) -> str:
        return self.release.name

    @property
    def glibc(self) -> int:
        return self.release.glibc

    @property
    def fallback_base(self) -> str:
        """The base built locally by runner_image/bootstrap-base.sh when ``base`` cannot be
        pulled; the revision in its tag changes with the script, so an older base is not
        reused. A moving release's base is found by this name's label (its tag adds the day)."""
        return f"orchestrator-base:{self.debian}-{BASE_REVISION}"


DEFAULT = "3.11"
OFFERED: dict[str, Python] = {
    p.name: p
    for p in (
        Python("3.11", BOOKWORM, base="python:3.11-slim-bookworm"),
        Python("3.13", TRIXIE, base="python:3.13-slim-trixie"),
        Python("3.14", FORKY),
        Python("3.15", FORKY, command="python3.15"),
        Python("pypy3.11", FORKY, command="pypy3"),  # Debian forky's pypy3 8.0 implements 3.11
    )
}
ALIASES = {"pypy3": "pypy3.11"}
AUTO = "auto"


class NotOffered(ValueError):
    pass


def named(name: str) -> str:
    """The offered Python a repository's ``python:`` names, or NotOffered naming the offered ones."""
    name = ALIASES.get(name, name)
    if name not in OFFERED:
        raise NotOffered(
            f"Python {name[:40]!r} is not offered; the runner images offer {', '.join(OFFERED)} (and pypy3), or auto"
        )
    return name


def allowed_by(requires_python: str | None, offered: Iterable[str] = OFFERED) -> tuple[str, ...]:
    """The offered CPythons a project's ``requires-python`` allows, oldest first; without
    one (or one that allows none, or cannot be read), the default alone."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not requires_python:
        return (DEFAULT,)
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return (DEFAULT,)
    fits = tuple(n for n in offered if not OFFERED[n].pypy and spec.contains(OFFERED[n].version, prereleases=True))
    return fits or (DEFAULT,)


def folder(name: str) -> str:
    """A variant's name as a folder or a tag (``py3.14``, ``pypy3.11``): never a name a
    commit's result files could have."""
    return name if name.startswith("pypy") else f"py{name}"


def runner_image(default_image: str, name: str) -> str:
    """The runner image for the Python ``name``: ``default_image`` for the default Python,
    else that name tagged with its folder name (``ci-runner:latest`` -> ``ci-runner:py3.13``,
    ``ci-runner:pypy3.11``)."""
    if name == DEFAULT:
        return default_image
    repository, _, tag = default_image.rpartition(":")
    if not repository or "/" in tag:  # no tag (a registry port is not one)
        repository = default_image
    return f"{repository}:{folder(name)}"
