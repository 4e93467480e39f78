"""What a commit declares it needs, read from the standard places of a Python project,
as text only: nothing of the commit runs here (reading a pyproject.toml runs no code).

Test tools come from the first of: the ``[dependency-groups]`` group named test, tests,
testing or dev (PEP 735; the first of these names the project uses); the
``[project.optional-dependencies]`` extra of those names; the usual requirement files.
The project's own ``[project].dependencies`` (or setup.cfg's static ``install_requires``)
and its build backend (``[build-system].requires``) are added, so that the commit itself
can be installed in the container. An explicit ``install`` in config.yaml replaces the test tools' detection.

Every byte of it is the commit's, so what reaches pip is only what ``packaging`` reads as a
name-based PEP 508 requirement, written out again by it: a URL or a path, a pip option, a
``$`` (pip expands ``${VAR}`` from its environment) or a control character is refused with
the line that carried it. The only files read are the commit's own: ``-r`` and ``-c`` name
requirement and constraint files inside the checkout.
"""

from __future__ import annotations

import configparser
import hashlib
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from orchestrator.errors import OrchestratorError

TEST_NAMES = ("test", "tests", "testing", "dev")
REQUIREMENT_FILES = (
    "requirements/test*.txt",
    "requirements-test*.txt",
    "requirements-dev.txt",
    "test-requirements.txt",
    "requirements.txt",
)
MAX_FILE = 1 << 20
MAX_DEPTH = 10  # nested -r files, and include-group chains
MAX_REQUIREMENTS = 2000  # requirements of one commit, all sources together
_OWN = re.compile(r"^(-e\s+)?\.(\[([\w.-]+(?:\s*,\s*[\w.-]+)*)\])?/?$")  # the project itself: ".", "-e .", ".[test]"
_ARCHIVE = re.compile(r"\.(whl|zip|tar|tgz|tbz|txz|tlz|tar\.(gz|bz2|xz|lz|lzma))$", re.IGNORECASE)
_FILE_OPTIONS = {"-r": "requirement", "--requirement": "requirement", "-c": "constraint", "--constraint": "constraint"}
RECIPE = "2"  # how an environment is made from its needs: part of the fingerprint, so a new recipe builds anew


class BadDeclaration(OrchestratorError):
    """The commit's declarations cannot be read or are refused (an environment error, not a retry)."""


@dataclass(frozen=True)
class Needs:
    requirements: tuple[str, ...] = ()  # name-based requirements for pip, canonical, sorted, without duplicates
    install_project: bool = False  # the commit has a pyproject.toml or setup.py to install
    sources: tuple[str, ...] = ()  # where each part was found, for result.json
    extras: tuple[str, ...] = ()  # extras of the project to test with
    system_packages: tuple[str, ...] = ()  # Debian packages (config.yaml's, never the commit's)
    constraints: tuple[str, ...] = ()  # from the commit's own ``-c`` files: versions, not installs

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.install_project and not self.system_packages

    def fingerprint(self, *more: str) -> str:
        """A hash of the declarations and of ``more`` (the Python version, the runner image)."""
        text = "\n".join(
            [
                *self.requirements,
                f"project={self.install_project}",
                *(f"deb:{p}" for p in self.system_packages),
                *(f"constraint:{c}" for c in self.constraints),
                f"recipe={RECIPE}",
                *more,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()


class _Found:
    """What the reading gathers: requirements, constraints and extras, each checked."""

    def __init__(self, src: Path):
        self.src = src
        self.requirements: list[str] = []
        self.constraints: list[str] = []
        self.extras: list[str] = []

    def add(self, text: str, where: str, into: list[str] | None = None) -> None:
        (self.requirements if into is None else into).append(requirement(text, where))
        if len(self.requirements) + len(self.constraints) > MAX_REQUIREMENTS:
            raise BadDeclaration(f"more than {MAX_REQUIREMENTS} requirements")

    def strings(self, items: object, where: str) -> None:
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise BadDeclaration(f"{where} is not a list of requirement strings")
        for item in items:
            self.add(item, where)


def requirement(text: str, where: str) -> str:
    """``text`` as a name-based PEP 508 requirement, written out by ``packaging``; else
    BadDeclaration naming ``where`` and the line (cut to 80 characters, escaped)."""
    line = _lstrip(text).rstrip()
    problem = None
    if any(_is_control(c) for c in line):
        problem = "a control character"
    elif "$" in line:
        problem = "'$' (pip would fill in the host's environment)"
    elif line.startswith("-"):
        problem = "a pip option"
    else:
        try:
            parsed = Requirement(line)
        except InvalidRequirement:
            problem = "not a requirement by name (URLs and paths are refused)"
        else:
            if parsed.url is not None:
                problem = "a direct reference (name @ URL): only requirements by name are allowed"
            elif _ARCHIVE.search(parsed.name):
                problem = "names a file (pip would read it as a path)"
            else:
                return str(parsed)
    raise BadDeclaration(f"{where}: {_shown(line)}: {problem}")


def _lstrip(text: str) -> str:
    """Without the leading whitespace, Unicode's and a byte-order mark included."""
    return re.sub(r"^[\s\ufeff\u200b]+", "", text)


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char != "\t"


def _shown(line: str) -> str:
    return repr(line[:80] + ("…" if len(line) > 80 else ""))


def detect(src: Path, install: list[str] | None = None) -> Needs:
    """The needs of the checkout at ``src``; ``install`` (config.yaml) wins over detection."""
    project = _pyproject(src)
    labels = ("project.dependencies", "project.optional-dependencies")
    if "project" not in project and (static := _setup_cfg(src)):
        project = {**project, "project": static}  # setuptools' declarative config, read as text too
        labels = ("setup.cfg: install_requires", "setup.cfg: extras_require")
    if not isinstance(project.get("project", {}), dict) or not isinstance(project.get("build-system", {}), dict):
        raise BadDeclaration("pyproject.toml: [project] and [build-system] must be tables")
    install_project = (src / "pyproject.toml").is_file() or (src / "setup.py").is_file()
    found = _Found(src)
    sources: list[str] = []
    if install is not None:
        for line in install:
            _add_line(found, line, "config: install", depth=0)
        sources.append("config: install")
    else:
        sources += _test_tools(found, project, labels[1])
    meta = project.get("project", {})
    deps = meta.get("dependencies", [])
    if deps:
        found.strings(deps, labels[0])
        sources.append(labels[0])
    optional = meta.get("optional-dependencies", {})
    for extra in found.extras:
        found.strings(optional.get(extra, []) if isinstance(optional, dict) else None, f"{labels[1]}.{extra}")
    backend = project.get("build-system", {}).get("requires", ["setuptools>=61", "wheel"] if install_project else [])
    if install_project:
        found.strings(backend, "build-system.requires")
        sources.append("build-system.requires")
    return Needs(
        tuple(sorted(set(found.requirements))),
        install_project,
        tuple(sources),
        tuple(found.extras),
        constraints=tuple(sorted(set(found.constraints))),
    )


def _test_tools(found: _Found, project: dict, extras_label: str) -> list[str]:
    groups = project.get("dependency-groups", {})
    if not isinstance(groups, dict):
        raise BadDeclaration("[dependency-groups] is not a table")
    for name in TEST_NAMES:  # the first of these names that the project uses
        if name in groups:
            for item in _group(groups, name):
                found.add(item, f"dependency-groups.{name}")
            return [f"dependency-groups: {name}"]
    optional = project.get("project", {}).get("optional-dependencies", {})
    for name in TEST_NAMES:
        if isinstance(optional, dict) and name in optional:
            found.extras.append(name)
            return [f"{extras_label}: {name}"]
    for pattern in REQUIREMENT_FILES:
        files = sorted(p for p in found.src.glob(pattern) if p.is_file())
        if files:
            for path in files:
                _read_file(found, path, "requirement", depth=0)
            return [str(p.relative_to(found.src)) for p in files]
    return []


def _group(groups: dict, name: str) -> list[str]:
    """A PEP 735 group with its ``{include-group = ...}`` entries expanded (by a walk, not
    recursion: a chain of thousands is refused by its depth, not by Python's stack)."""
    out: list[str] = []
    stack: list[tuple[str, int, tuple[str, ...]]] = [(name, 0, ())]
    while stack:
        current, index, path = stack.pop()
        items = groups.get(current)
        if not isinstance(items, list):
            raise BadDeclaration(f"dependency group {current[:80]!r} is missing or not a list")
        if index == 0 and (current in path or len(path) >= MAX_DEPTH):
            raise BadDeclaration(
                f"dependency group {name!r} includes {current[:80]!r} "
                + ("in a loop" if current in path else f"more than {MAX_DEPTH} levels deep")
            )
        if index >= len(items):
            continue
        item = items[index]
        stack.append((current, index + 1, path))
        if isinstance(item, dict) and isinstance(item.get("include-group"), str):
            stack.append((item["include-group"], 0, (*path, current)))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise BadDeclaration(f"dependency group {current[:80]!r}: {str(item)[:80]!r} is not a requirement")
    return out


def _read_file(found: _Found, path: Path, kind: str, depth: int) -> None:
    """A requirement (or constraint) file of the commit: only one inside the checkout."""
    src = found.src.resolve()
    shown = _relative(path, found.src)
    if depth > MAX_DEPTH or not path.resolve().is_relative_to(src) or not path.is_file():
        raise BadDeclaration(f"{shown}: not a {kind} file of this commit")
    if path.stat().st_size > MAX_FILE:
        raise BadDeclaration(f"{shown}: larger than 1 MiB")
    lines = path.read_text(errors="replace").splitlines()
    logical: list[tuple[int, str]] = []
    held, start = "", 0
    for number, raw in enumerate(lines, 1):  # pip joins a line that ends with a backslash to the next
        if not held:
            start = number
        if raw.endswith("\\"):
            held += raw[:-1]
            continue
        logical.append((start, held + raw))
        held = ""
    if held:
        logical.append((start, held))
    for number, raw in logical:
        line = re.sub(r"(^|\s)#.*$", "", _lstrip(raw)).strip()
        if line:
            _add_line(found, line, f"{shown}:{number}", depth, path.parent, kind)


def _add_line(
    found: _Found, line: str, where: str, depth: int, base: Path | None = None, kind: str = "requirement"
) -> None:
    """One requirement line: the project itself (and its extras), a requirement or
    constraint file of the commit, or a requirement; anything else is refused."""
    line = _lstrip(line).strip()
    own = _OWN.match(line)
    if own and kind == "requirement":
        if own.group(3):
            found.extras += [e.strip() for e in own.group(3).split(",") if e.strip()]
        return
    option, _, argument = line.partition(" ") if line.startswith("-") else ("", "", "")
    if "=" in option:
        option, _, argument = line.partition("=")
    if (
        option in _FILE_OPTIONS
        and argument.strip()
        and not any(_is_control(c) for c in argument)
        and "$" not in argument
        and "://" not in argument
    ):
        target = (base or found.src) / argument.strip()
        _read_file(found, target, _FILE_OPTIONS[option], depth + 1)
        return
    found.add(line, where, found.constraints if kind == "constraint" else None)


def _relative(path: Path, src: Path) -> str:
    try:
        return str(path.resolve().relative_to(src.resolve()))
    except ValueError:
        return path.name


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


def requires_python(text: str | None) -> str | None:
    """``[project].requires-python`` of a pyproject.toml's ``text``, read as data: None if
    it is absent, unreadable, not a string, or longer than any real one."""
    if text is None:
        return None
    try:
        value = tomllib.loads(text).get("project", {}).get("requires-python")
    except (tomllib.TOMLDecodeError, RecursionError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 200 else None


def _pyproject(src: Path) -> dict:
    text = _read(src, "pyproject.toml")
    try:
        return tomllib.loads(text) if text is not None else {}
    except tomllib.TOMLDecodeError as exc:
        raise BadDeclaration(f"pyproject.toml: {str(exc)[:200]}") from None
    except RecursionError:
        raise BadDeclaration("pyproject.toml: nested too deeply to read") from None


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
        found["optional-dependencies"] = {
            name: _cfg_list(src, value) for name, value in parser.items("options.extras_require")
        }
    return found


def _cfg_list(src: Path, value: str) -> list[str]:
    """The lines of a setup.cfg list, or of the files a ``file:`` names (read, as
    requirement files, by the same rules); checked when they are added."""
    if value.strip().startswith("file:"):
        found = _Found(src)
        for name in value.strip().removeprefix("file:").split(","):
            _read_file(found, src / name.strip(), "requirement", depth=0)
        return found.requirements
    return [
        re.sub(r"(^|\s)#.*$", "", line).strip()
        for line in value.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
