"""Reading config.yaml: loaded and validated once, at start, into frozen pydantic models.

Any problem is reported as one line naming the file, the key path and what was expected
(``ConfigError``, exit 2). Relative paths are resolved against the config file's folder,
so the same file works from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.base import is_local_url
from orchestrator.config.root import Config
from orchestrator.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads a bare ``on``, ``off``, ``yes`` or ``no`` as a boolean: as a *key*
    (``notify: {on: all}``) it is always meant as the word, and is kept as one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        for key, _value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:bool" and key.style is None:
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config file, or raise ConfigError with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    if "source" in raw:
        raise ConfigError(f"{path}: source: unknown key")
    base = path.resolve().parent
    try:
        raw = _resolve_paths(raw, base)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config = Config.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    for i, repo in enumerate(config.repositories):
        if is_local_url(repo.url) and not Path(repo.url).is_dir():
            raise ConfigError(f"{path}: repositories[{i}].url: no such repository directory {repo.url}")
    return config


@dataclass(frozen=True)
class ClientSettings:
    url: str | None
    api_token: str | None


def client_settings(path: str | Path) -> ClientSettings | None:
    """What a command run against a dispatcher elsewhere reads of a local config:
    ``dispatcher.url`` and ``dispatcher.api_token``, nothing else (its repositories are the
    dispatcher machine's, and their paths need not exist here). None: no file to read."""
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError):
        return None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    dispatcher = raw.get("dispatcher") if isinstance(raw, dict) else None
    if not isinstance(dispatcher, dict):
        return ClientSettings(None, None)
    url, token = dispatcher.get("url"), dispatcher.get("api_token")
    for key, value in (("url", url), ("api_token", token)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: dispatcher.{key}: expected a string")
    return ClientSettings(url, token)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = dict(raw)
    for key in ("state_dir", "results_dir"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise ValueError(f"{key}: expected a directory path, got {raw[key]!r}"[:120])
            raw[key] = base / raw[key]
        else:
            raw[key] = base / Config.model_fields[key].default
    repos = raw.get("repositories")
    if isinstance(repos, list):
        resolved = []
        for repo in repos:
            if isinstance(repo, dict) and isinstance(repo.get("url"), str) and is_local_url(repo["url"]):
                repo = {**repo, "url": str((base / Path(repo["url"]).expanduser()).resolve())}
            resolved.append(repo)
        raw["repositories"] = resolved
    return raw


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif first["type"] != "missing":
        got = first.get("input")
        msg = f"{msg} (got {repr(got)[:60]})"
        if first["type"] == "string_type" and isinstance(got, (bool, int, float)):
            msg += f": YAML read it as a {type(got).__name__}; quote it to mean the text"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{loc or 'config'}: {msg}{more}"
