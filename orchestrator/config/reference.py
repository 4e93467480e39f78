"""The configuration reference (docs/guide/configuration.md), made from the models and the
descriptions of their fields, so that it cannot drift from what the loader accepts.

    python -m orchestrator.config.reference docs/guide/configuration.md

tests/unit/test_docs.py fails when the page in the tree is not what this makes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator.config.repository import MergeQueueConfig, RepositoryConfig
from orchestrator.config.root import Config

PAGE = Path("docs/guide/configuration.md")
HIDDEN = {"source"}  # set by the loader, never written

HEADER = """# Configuration reference

<!-- Made by `python -m orchestrator.config.reference docs/guide/configuration.md` from the field
descriptions in orchestrator/config/; tests/unit/test_docs.py fails when it is out of date. -->

`config.yaml` is read once, at start. An unknown key, a wrong type or a value out of range is
refused with one line naming the file, the key and what was expected (exit 2), never a
traceback. Relative paths are relative to the config file, so it works from any folder. YAML
reads `3.14` as a number and `on` as a boolean: quote a version to mean the text. `orchestrator
init` writes a commented file for one repository.

```yaml
repositories:
  - name: myproject
    url: /srv/git/myproject.git
```

is a whole config: every other key has the default below.
"""


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Each section's path in the file and its model, in the order of the page."""
    found: list[tuple[str, type[BaseModel]]] = [("top level", Config), ("repositories[]", RepositoryConfig)]
    found.append(("repositories[].merge_queue", MergeQueueConfig))
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found.append((name, field.annotation))
    return found


def anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def kind(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON schema as a short phrase: ``integer 1–256``, ``list of text``, ``docker | swarm``."""
    if "$ref" in schema:
        return "section"
    if "anyOf" in schema:
        kinds = [kind(s, defs) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(kinds))
    if "enum" in schema or "const" in schema:
        return " \\| ".join(f"`{v}`" for v in schema.get("enum", [schema.get("const")]))
    t = schema.get("type")
    if t == "array":
        item = kind(schema.get("items", {}), defs)
        return f"list of {item}s" if item == "section" else f"list of {item}"
    if t == "object":
        values = [*schema.get("patternProperties", {}).values(), schema.get("additionalProperties") or {}]
        return f"mapping of names to {kind(values[0], defs)}" if values[0] else "mapping"
    if t in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        word = "integer" if t == "integer" else "number"
        if low is not None and high is not None:
            return f"{word} {_number(low)}–{_number(high)}"
        if low is not None:
            return f"{word} {'>' if 'exclusiveMinimum' in schema else '≥'} {_number(low)}"
        return word
    if t == "string":
        return "path" if schema.get("format") == "path" else "text"
    return {"boolean": "true \\| false"}.get(str(t), str(t))


def _number(value: float) -> str:
    return f"{value:,g}".replace(",", " ")


def default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return f"[below](#{anchor(name)})"
        return "see meaning"
    value = field.default
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, Path):
        return f"`./{value}`"
    return f"`{json.dumps(value) if isinstance(value, (list, dict, bool)) else value}`"


def table(model: type[BaseModel], prefix: str) -> list[str]:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in HIDDEN:
            continue
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(
            f"| `{prefix}{name}` | {kind(schema['properties'][name], defs)} | {default(model, name)} | {meaning} |"
        )
    return rows


def page() -> str:
    lines = HEADER.splitlines()
    for title, model in sections():
        prefix = "" if title == "top level" else f"{title}."
        about = " ".join((model.__doc__ or "").split()).replace("``", "`")
        lines += ["", f"## {title}", "", about, "", *table(model, prefix)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else PAGE
    target.write_text(page(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
