"""The documentation keeps up with the code: the configuration reference is what the models
make, every page is reachable from the README, every link lands, and the README stays a
few screens long."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from orchestrator import pythons
from orchestrator.config import reference

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    """The relative targets a Markdown page links to, without their anchors."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [t.split("#")[0] for t in LINK.findall(text) if "://" not in t and not t.startswith(("#", "mailto:"))]


def test_the_configuration_reference_is_what_the_models_make() -> None:
    page = ROOT / reference.PAGE
    assert page.read_text() == reference.page(), (
        "docs/guide/configuration.md is out of date: python -m orchestrator.config.reference"
    )


def test_every_field_of_the_config_has_a_description() -> None:
    for title, model in reference.sections():
        for name, field in model.model_fields.items():
            if name not in reference.HIDDEN:
                assert field.description, f"{title}: {name} has no description (a docstring under the field)"


def test_every_page_is_reachable_from_the_readme_and_every_link_lands() -> None:
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")}
    seen: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop().resolve()
        if page in seen:
            continue
        seen.add(page)
        for target in links(page):
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            if path.is_dir():
                continue
            if path.suffix == ".md":
                todo.append(path)
    assert not pages - seen, f"pages no page links to: {sorted(str(p.relative_to(ROOT)) for p in pages - seen)}"


def test_the_readme_is_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move the rest to docs/"


def test_the_readme_names_the_command_ci_runs() -> None:
    run = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert run[-1] in (ROOT / "README.md").read_text()


def test_every_module_is_in_the_module_map() -> None:
    text = (ROOT / "docs" / "development" / "modules.md").read_text()
    missing = []
    for package in ("orchestrator", "runner_image"):
        for module in sorted((ROOT / package).rglob("*.py")):
            if module.name in ("__init__.py", "__main__.py"):
                continue
            name = str(module.relative_to(ROOT / "orchestrator" if package == "orchestrator" else ROOT))
            if f"`{name}`" not in text:
                missing.append(name)
    assert not missing, f"docs/development/modules.md does not name {missing}"


def test_the_shipped_config_builds_what_it_says() -> None:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    base = shipped.get("runner", {}).get("base_image")
    assert base in (None, pythons.OFFERED[pythons.DEFAULT].base), (
        f"config.yaml says base_image {base!r}; image build makes the default Python's from "
        f"{pythons.OFFERED[pythons.DEFAULT].base}"
    )
