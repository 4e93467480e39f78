"""The package's layers, read from its import statements (every one: at the top, inside
functions, under TYPE_CHECKING): each package of ``orchestrator/`` imports only the layers
below it, so imports between packages run one way and there is no circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

# top to bottom: a layer may import those after it, never those before it (nor itself
# through another). The ground floor (workspace and below) is shared by all.
LAYERS = (
    "__main__",
    "cli",
    "service",
    "web",
    "control",
    "dispatch",
    "run",
    "results",
    "environment",
    "observe",
    "backends",
    "store",
    "workspace",
    "config",
    "pythons",
    "models",
    "backoff",
    "faults",
    "errors",
)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "orchestrator" and len(parts) > 1 else None


def imports_between_layers() -> set[tuple[str, str, str]]:
    """(importing layer, imported layer, importing file) for every import that crosses a layer."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        here = _layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module == "orchestrator"  # from orchestrator import errors
                named = [f"{node.module}.{a.name}" for a in node.names] if top else [node.module]
            elif isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            else:
                continue
            for module in named:
                there = _layer(module)
                if there is not None and there != here:
                    found.add((str(here), there, str(path.relative_to(PACKAGE.parent))))
    return found


def test_every_package_and_ground_module_has_a_layer() -> None:
    on_disk = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    on_disk = {n for n in on_disk if not n.startswith(("_", ".")) or n == "__main__"} - {"__pycache__"}
    assert on_disk == set(LAYERS), f"not in LAYERS: {on_disk - set(LAYERS)}; gone: {set(LAYERS) - on_disk}"


def test_imports_between_packages_run_downwards_only() -> None:
    upwards = sorted(
        f"{where}: {here} imports {there}"
        for here, there, where in imports_between_layers()
        if LAYERS.index(there) < LAYERS.index(here)
    )
    assert not upwards, "imports against the layers:\n" + "\n".join(upwards)


def test_the_layers_are_what_the_package_docstrings_say() -> None:
    """Each package's __init__ says what it owns and what it may import."""
    for package in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert docstring and len(docstring) > 60, f"{package.name}/__init__.py says nothing of what it owns"
        assert "May import:" in docstring, f"{package.name}/__init__.py does not say what it may import"


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_no_module_and_no_function_is_past_its_size() -> None:
    """Rooms stay small: a module past 400 lines or a function past 60 is split where its
    parts have names of their own."""
    too_big = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "runner_image").rglob("*.py")]):
        text = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not too_big, "past the size limits:\n" + "\n".join(too_big)


def test_every_library_the_package_imports_is_a_declared_dependency() -> None:
    """A wheel installed without the test extras has only what pyproject.toml declares: a
    library that arrives only as another's dependency may not stay one."""
    import importlib.metadata
    import re
    import sys
    import tomllib

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    declared = {norm(re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0]) for d in pyproject["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            ours = set(sys.stdlib_module_names) | {"orchestrator", "runner_image"}
            for top in {n.split(".")[0] for n in names} - ours:
                if not {norm(d) for d in distributions.get(top, [])} & declared:
                    undeclared.add(f"{top} ({path.relative_to(PACKAGE.parent)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def test_every_orchestrator_variable_is_spelled_in_the_contract_module_only() -> None:
    """Host and container speak through runner_image/orchestrator_protocol.py: a variable's
    name written anywhere else could drift from it unseen."""
    contract = PACKAGE.parent / "runner_image" / "orchestrator_protocol.py"
    prefix = "ORCHESTRATOR" + "_"  # not spelled here either
    spelled = [
        str(path.relative_to(PACKAGE.parent))
        for folder in ("orchestrator", "runner_image", "tests", "bench", "scripts")
        for path in sorted((PACKAGE.parent / folder).rglob("*"))
        if path.suffix in (".py", ".sh") and path != contract and prefix in path.read_text()
    ]
    assert not spelled, f"{prefix}* spelled outside the contract module: {spelled}"
