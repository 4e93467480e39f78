"""What every section of config.yaml shares: strict, frozen models whose field docstrings are
their descriptions (the configuration reference is made from them), and the value checks
more than one section uses."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
INDEX_URL = r"^https?://[^\s/$]+(/[^\s$]*)?$"
_MEMORY = re.compile(r"^[1-9][0-9]*[bkmg]?$", re.IGNORECASE)
_SCP_LIKE = re.compile(r"^([\w.-]+@)?[\w][\w.-]*:(?!//)")  # [user@]host:path, as git reads it


class Strict(BaseModel):
    """Unknown keys and wrong types are refused (YAML's ``"2"`` is not the number 2)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


def is_size(value: str) -> bool:
    """A size as the engine reads one: ``512m``, ``1g``, ``2048k``, a number of bytes."""
    return bool(_MEMORY.match(value))


_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(value: str) -> int:
    """Bytes in a size like ``512m`` or ``1g`` (``is_size``), as the engine reads it: binary
    units, a bare number of bytes. Not docker-py's parse_bytes: loading config.yaml would
    load all of docker-py, a command that never meets the engine included."""
    unit = value[-1].lower()
    return int(value[:-1]) * _UNITS[unit] if unit in _UNITS else int(value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_url(url: str) -> bool:
    return "://" not in url and not _SCP_LIKE.match(url)
