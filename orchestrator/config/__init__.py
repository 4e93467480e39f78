"""config.yaml: one model per section (repository.py, runner.py, sections.py, root.py), each
field described where it is declared; load.py reads and checks a file, reference.py makes
the configuration reference page from the descriptions.

May import: pythons and errors (tests/unit/test_architecture.py)."""

from orchestrator.config.base import NAME_PATTERN, is_local_url, is_loopback, memory_bytes
from orchestrator.config.load import ClientSettings, client_settings, load_config
from orchestrator.config.repository import MAX_SHARDS, MergeQueueConfig, RepositoryConfig
from orchestrator.config.root import Config
from orchestrator.config.runner import RunnerConfig
from orchestrator.config.sections import (
    DispatcherConfig,
    EnvironmentsConfig,
    NotifyConfig,
    QuarantineConfig,
    SearchConfig,
    StoreConfig,
)
from orchestrator.errors import ConfigError

__all__ = [
    "MAX_SHARDS",
    "NAME_PATTERN",
    "ClientSettings",
    "Config",
    "ConfigError",
    "DispatcherConfig",
    "EnvironmentsConfig",
    "MergeQueueConfig",
    "NotifyConfig",
    "QuarantineConfig",
    "RepositoryConfig",
    "RunnerConfig",
    "SearchConfig",
    "StoreConfig",
    "client_settings",
    "is_local_url",
    "is_loopback",
    "memory_bytes",
    "load_config",
]
