"""``orchestrator init [PATH-OR-URL]``: a commented config.yaml for one repository, written
from what its default branch declares, so that a newcomer goes from init to a tested commit
in three commands (init, ``image build``, ``run --once``).

The repository is read as the jobs will read it: its branch head's tree, fetched one commit
deep into a scratch folder, and its declarations detected by environment/needs.py, as text
(nothing of it runs). An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from orchestrator import pythons
from orchestrator.config import NAME_PATTERN, RepositoryConfig, is_local_url
from orchestrator.environment.needs import BadDeclaration, Needs, detect, requires_python
from orchestrator.errors import RepositoryError, UsageError
from orchestrator.observe.mirror import git_reason

SHOWN_BRANCHES = 8  # other branches named in a comment
COMMENT_COLUMN = 36


@dataclass(frozen=True)
class Project:
    """What init found in a repository, at the head of its default branch."""

    name: str
    url: str
    branch: str
    others: tuple[str, ...]  # its other branches
    head: str
    requires_python: str | None
    pythons: tuple[str, ...]
    needs: Needs | None  # None: the declarations are refused (``refused`` says why)
    refused: str | None
    has_tests: bool


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.config)
    if target.exists():
        raise UsageError(f"{target} exists: init never overwrites a config file (remove it, or name another with -c)")
    project = read_project(args.source)
    text = render(project)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "x", encoding="utf-8") as out:  # "x": a file made meanwhile is not overwritten either
        out.write(text)
    versions = " and ".join(", ".join(project.pythons).rsplit(", ", 1))
    print(f"Wrote {target} for {project.name}: branch {project.branch}, Python {versions}.")
    print("Next:")
    print(f"  orchestrator image build{_config_flag(target)}   # the runner images, once")
    print(f"  orchestrator run --once{_config_flag(target)}    # test the head of {project.branch} now, then exit")
    return 0


def _config_flag(target: Path) -> str:
    return "" if target == Path("config.yaml") else f" -c {target}"


def name_of(url: str) -> str:
    """A repository name (``[a-z0-9._-]``) from the last part of its path or URL."""
    last = re.split(r"[/:]", url.rstrip("/"))[-1].removesuffix(".git")
    name = re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-._")[:63]
    return name if re.match(NAME_PATTERN, name) else "project"


def read_project(source: str) -> Project:
    url = str(Path(source).expanduser().resolve()) if is_local_url(source) else source
    name = name_of(url)
    try:
        RepositoryConfig(name=name, url=url)  # what config.yaml will accept of it
    except ValidationError as exc:
        raise UsageError(f"{source[:200]}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if is_local_url(url) and not Path(url).is_dir():
        raise UsageError(f"{source[:200]}: no such folder")
    with tempfile.TemporaryDirectory(prefix="orchestrator-init-") as scratch:
        return _read(Path(scratch), name, url)


def _read(scratch: Path, name: str, url: str) -> Project:
    import git

    runner = git.Git(str(scratch))

    def run(*args: str, index: Path | None = None) -> str:
        env = {"GIT_TERMINAL_PROMPT": "0", **({"GIT_INDEX_FILE": str(index)} if index else {})}
        try:
            out: bytes = runner.execute(["git", *args], env=env, stdout_as_string=False)
        except git.GitCommandError as exc:
            raise RepositoryError(f"cannot read {url[:200]}: {git_reason(exc)}") from None
        return out.decode("utf-8", "replace")

    heads, default = _heads(run("ls-remote", "--symref", url))
    if not heads:
        raise RepositoryError(f"{url[:200]} has no branches yet: commit something first")
    branch = default if default in heads else next((b for b in ("main", "master") if b in heads), sorted(heads)[0])
    store, tree = scratch / "repo.git", scratch / "tree"
    run("init", "--quiet", "--bare", str(store))
    run("--git-dir", str(store), "fetch", "--quiet", "--depth", "1", "--no-tags", url, f"refs/heads/{branch}")
    tree.mkdir()
    run(
        "--git-dir",
        str(store),
        "--work-tree",
        str(tree),
        "read-tree",
        "-u",
        "--reset",
        "FETCH_HEAD",
        index=scratch / "i",
    )
    pyproject = tree / "pyproject.toml"
    declared = requires_python(pyproject.read_text(errors="replace")) if pyproject.is_file() else None
    needs, refused = None, None
    try:
        needs = detect(tree)
    except BadDeclaration as exc:
        refused = str(exc)
    return Project(
        name=name,
        url=url,
        branch=branch,
        others=tuple(sorted(b for b in heads if b != branch)),
        head=heads[branch],
        requires_python=declared,
        pythons=pythons.allowed_by(declared),
        needs=needs,
        refused=refused,
        has_tests=(tree / "tests").is_dir(),
    )


def _heads(listing: str) -> tuple[dict[str, str], str | None]:
    """Branch -> sha, and the branch HEAD names, from ``git ls-remote --symref``."""
    heads: dict[str, str] = {}
    default = None
    for line in listing.splitlines():
        left, _, ref = line.partition("\t")
        if left.startswith("ref: refs/heads/") and ref == "HEAD":
            default = left.removeprefix("ref: refs/heads/")
        elif ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = left
    return heads, default


def _commented(text: str, comment: str) -> str:
    """A line with its comment in the file's one comment column."""
    return f"{text:<{COMMENT_COLUMN}}# {comment}" if len(text) < COMMENT_COLUMN else f"{text}  # {comment}"


def _wrapped(prefix: str, text: str) -> list[str]:
    return textwrap.wrap(text, width=96, initial_indent=prefix, subsequent_indent=prefix, break_on_hyphens=False)


def _python_lines(project: Project) -> list[str]:
    if project.requires_python is None:
        why = "no requires-python found: the default Python."
    else:
        why = f"requires-python {project.requires_python!r} allows these: each commit runs once on each."
    offered = ", ".join(pythons.OFFERED)
    value = json.dumps(project.pythons[0]) if len(project.pythons) == 1 else json.dumps(list(project.pythons))
    return [
        *_wrapped("    # ", f"{why} Offered: {offered} (each a runner image to build, the first time)."),
        f"    python: {value}",
    ]


def _needs_lines(project: Project) -> list[str]:
    at = f"{project.branch} at {project.head[:12]}"
    if project.needs is None:
        return [
            *_wrapped("    # ", f"The jobs would refuse what {at} declares: {project.refused}"),
            "    # Fix it there, or name the requirements here:",
            _commented('    # install: ["pytest", "."]', "requirement lines instead of detection"),
        ]
    needs = project.needs
    lines = [f"    # What the jobs install, detected as they detect it ({at}):"]
    lines += _wrapped("    #   ", f"from {', '.join(needs.sources) or 'no declaration'}:")
    lines += _wrapped("    #     ", ", ".join(needs.requirements) or "nothing")
    if needs.install_project:
        lines.append("    #   and the project itself, installed in its container")
    lines.append(_commented('    # install: ["-e .[test]"]', "requirement lines instead of that detection"))
    return lines


def render(project: Project) -> str:
    """The commented config.yaml: the keys a user most often changes, set or shown."""
    shown = ", ".join(project.others[:SHOWN_BRANCHES]) + (" ..." if len(project.others) > SHOWN_BRANCHES else "")
    if project.has_tests:
        command = _commented("    # command: python -m pytest tests", "the test command (this is the default)")
    else:  # pytest finds the tests by the project's own settings (testpaths), or in its whole tree
        command = _commented("    command: python -m pytest", f"there is no tests/ folder on {project.branch}")
    lines = [
        f"# config.yaml for {project.name}, written by `orchestrator init` on {datetime.now(UTC):%Y-%m-%d}.",
        "# Next: `orchestrator image build` (the runner images, once), then `orchestrator run --once`",
        "# (test the branch heads now) or `orchestrator run` (keep watching, with a dashboard).",
        "# Every key is in docs/guide/configuration.md; a key not written here has its default.",
        "repositories:",
        _commented(f"  - name: {project.name}", "[a-z0-9._-]: in paths and the API"),
        _commented(f"    url: {json.dumps(project.url)}", "a folder, or any URL git can fetch"),
        _commented(  # a branch name is its own glob: git allows none of *?[ in one
            f"    branches: [{json.dumps(project.branch)}]",
            f"globs; its other branches: {shown}" if shown else "globs of the branches to test",
        ),
        *_python_lines(project),
        *_needs_lines(project),
        command,
        _commented("    # system_packages: []", "Debian packages the tests need: [gcc, libpq-dev]"),
        _commented("    # env: {}", "variables of the test container"),
        _commented("state_dir: ./.orchestrator", "the queue (SQLite), mirrors, checkouts"),
        _commented("results_dir: ./test_results", "<repository>/<sha>/: result.json, output.log, junit.xml"),
        "runner:",
        _commented("  parallelism: 2", "containers at once"),
        _commented("  timeout: 600", "seconds a job may run"),
        _commented("  memory: 1g", "each container's memory (and cpus: 1.0, pids: 512)"),
        _commented("  network: none", "the tests reach no network"),
        "dispatcher:",
        _commented("  host: 127.0.0.1", "the dashboard and API, while `run` runs: http://127.0.0.1:8888/"),
        _commented("  port: 8888", "a non-loopback host needs an api_token"),
    ]
    return "\n".join(lines) + "\n"
