"""What a commit declares it needs, read from the standard places of a Python project,
as text only: nothing of the commit runs here (reading a pyproject.toml runs no code).

Test tools come from the first of: the ``[dependency-groups]`` group named test, tests,
testing or dev (PEP 735; the first of these names the project uses); the
``[project.optional-dependencies]`` extra of those names; the usual requirement files.
The project's own ``[project].dependencies`` (or setup.cfg's static ``install_requires``)
and its build backend (``[build-system].requires``) are added, so that the commit itself
can be installed in the container. An explicit ``install`` in config.yaml replaces the test tools' detection.
"""

from __future__ import annotations

import configparser
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError

TEST_NAMES = ("test", "tests", "testing", "dev")
REQUIREMENT_FILES = ("requirements/test*.txt", "requirements-test*.txt", "requirements-dev.txt",
                     "test-requirements.txt", "requirements.txt")
MAX_FILE = 1 << 20
_OWN = re.compile(r"^(-e\s+)?\.(\[[\w,\s-]+\])?$")   # the project itself: ".", "-e .", ".[test]"


class BadDeclaration(OrchestratorError):
    """The commit's declarations cannot be read (an environment error, not a retry)."""


@dataclass(frozen=True)
class Needs:
    requirements: tuple[str, ...] = ()      # requirement lines for pip, sorted, without duplicates
    install_project: bool = False           # the commit has a pyproject.toml or setup.py to install
    sources: tuple[str, ...] = ()           # where each part was found, for result.json
    extras: tuple[str, ...] = ()             # extras of the project to test with
    system_packages: tuple[str, ...] = ()   # Debian packages (config.yaml's, never the commit's)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.install_project and not self.system_packages

    def fingerprint(self, *more: str) -> str:
        """A hash of the declarations and of ``more`` (the Python version, the runner image)."""
        text = "\n".join([*self.requirements, f"project={self.install_project}",
                          *(f"deb:{p}" for p in self.system_packages), *more])
        return hashlib.sha256(text.encode()).hexdigest()


def detect(src: Path, install: list[str] | None = None) -> Needs:
    """The needs of the checkout at ``src``; ``install`` (config.yaml) wins over detection."""
    project = _pyproject(src)
    labels = ("project.dependencies", "project.optional-dependencies")
    if "project" not in project and (static := _setup_cfg(src)):
        project = {**project, "project": static}   # setuptools' declarative config, read as text too
        labels = ("setup.cfg: install_requires", "setup.cfg: extras_require")
    install_project = (src / "pyproject.toml").is_file() or (src / "setup.py").is_file()
    found: list[str] = []
    sources: list[str] = []
    extras: list[str] = []
    if install is not None:
        for line in install:
            _add_line(src, line, found, extras)
        sources.append("config: install")
    else:
        tools, where = _test_tools(src, project, extras, labels[1])
        found += tools
        sources += where
    deps = project.get("project", {}).get("dependencies", [])
    if deps:
        found += _strings(deps, labels[0])
        sources.append(labels[0])
    for extra in extras:
        found += _strings(project.get("project", {}).get("optional-dependencies", {}).get(extra, []),
                          f"{labels[1]}.{extra}")
    backend = project.get("build-system", {}).get("requires", ["setuptools>=61", "wheel"] if install_project else [])
    if install_project:
        found += _strings(backend, "build-system.requires")
        sources.append("build-system.requires")
    return Needs(tuple(sorted(set(found))), install_project, tuple(sources), tuple(extras))


def _test_tools(src: Path, project: dict, extras: list[str], extras_label: str) -> tuple[list[str], list[str]]:
    groups = project.get("dependency-groups", {})
    for name in TEST_NAMES:  # the first of these names that the project uses
        if name in groups:
            return _group(groups, name, set()), [f"dependency-groups: {name}"]
    optional = project.get("project", {}).get("optional-dependencies", {})
    for name in TEST_NAMES:
        if name in optional:
            extras.append(name)
            return [], [f"{extras_label}: {name}"]
    for pattern in REQUIREMENT_FILES:
        files = sorted(p for p in src.glob(pattern) if p.is_file())
        if files:
            lines: list[str] = []
            for path in files:
                _read_requirements(src, path, lines, extras, depth=0)
            return lines, [str(p.relative_to(src)) for p in files]
    return [], []


def _group(groups: dict, name: str, seen: set[str]) -> list[str]:
    """A PEP 735 group with its ``{include-group = ...}`` entries expanded."""
    if name in seen:
        raise BadDeclaration(f"dependency group {name!r} includes itself")
    seen.add(name)
    out: list[str] = []
    for item in groups.get(name, []):
        if isinstance(item, dict) and isinstance(item.get("include-group"), str):
            out += _group(groups, item["include-group"], seen)
        elif isinstance(item, str):
            out.append(item)
        else:
            raise BadDeclaration(f"dependency group {name!r}: {str(item)[:80]!r} is not a requirement")
    return out


def _read_requirements(src: Path, path: Path, out: list[str], extras: list[str], depth: int) -> None:
    if depth > 5 or not path.is_file() or not path.resolve().is_relative_to(src.resolve()) or \
            path.stat().st_size > MAX_FILE:
        raise BadDeclaration(f"{path.name}: not a requirements file of this commit")
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            _read_requirements(src, path.parent / line.split(None, 1)[1], out, extras, depth + 1)
        elif line:
            _add_line(src, line, out, extras)


def _add_line(src: Path, line: str, out: list[str], extras: list[str]) -> None:
    """One requirement line: the project itself (and its extras), a file to read, a
    requirement; pip options (an index, say) are dropped: builds are offline."""
    own = _OWN.match(line)
    if own:
        if own.group(2):
            extras += [e.strip() for e in own.group(2)[1:-1].split(",") if e.strip()]
    elif line.startswith(("-r ", "--requirement ")):
        _read_requirements(src, src / line.split(None, 1)[1], out, extras, 0)
    elif not line.startswith("-"):
        out.append(line)


def _strings(items: object, where: str) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadDeclaration(f"{where} is not a list of requirement strings")
    return list(items)


def _read(src: Path, name: str) -> str | None:
    """A declaration file of the commit, as text: None if absent."""
    path = src / name
    if not path.is_file():
        return None
    if not path.resolve().is_relative_to(src.resolve()):
        raise BadDeclaration(f"{name} is a link out of the commit")
    if path.stat().st_size > MAX_FILE:
        raise BadDeclaration(f"{name} is larger than 1 MiB")
    return path.read_text(errors="replace")


def _pyproject(src: Path) -> dict:
    text = _read(src, "pyproject.toml")
    try:
        return tomllib.loads(text) if text is not None else {}
    except tomllib.TOMLDecodeError as exc:
        raise BadDeclaration(f"pyproject.toml: {exc}") from None


def _setup_cfg(src: Path) -> dict:
    """``[options] install_requires`` and ``[options.extras_require]`` of setup.cfg, as
    ``[project]``'s dependencies and optional-dependencies (``file:`` names requirement
    files); what only setup.py knows stays unknown: running it would run the commit's code."""
    text = _read(src, "setup.cfg")
    if text is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise BadDeclaration(f"setup.cfg: {str(exc).splitlines()[0][:200]}") from None
    found: dict = {}
    if parser.has_option("options", "install_requires"):
        found["dependencies"] = _cfg_list(src, parser.get("options", "install_requires"))
    if parser.has_section("options.extras_require"):
        found["optional-dependencies"] = {name: _cfg_list(src, value)
                                          for name, value in parser.items("options.extras_require")}
    return found


def _cfg_list(src: Path, value: str) -> list[str]:
    if value.strip().startswith("file:"):
        lines: list[str] = []
        for name in value.strip().removeprefix("file:").split(","):
            _read_requirements(src, src / name.strip(), lines, [], depth=0)
        return lines
    return [line.split(" #", 1)[0].strip() for line in value.splitlines()
            if line.strip() and not line.strip().startswith("#")]
