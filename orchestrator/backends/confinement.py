"""The one spelling of what confines a container this project starts, a job's or an
environment build's: no network of its own choosing, memory without swap beyond it, a CPU
and process budget, no capability, no new privilege, a read-only root with an exec /tmp of
bounded size, an init, and a log of bounded size. docker-py's ``create_host_config``
arguments, besides the mounts."""

from __future__ import annotations

from typing import Any

from docker.types import LogConfig


def confined(
    *,
    network: str,
    memory: str,
    cpus: float,
    pids: int,
    tmp_size: str,
    log_bytes: int,
    log_files: int,
    cpu_shares: int | None = None,
    installs_packages: bool = False,
) -> dict[str, Any]:
    """``installs_packages``: an environment build's dpkg step, which runs as root in a
    container of its own with a writable root (its result is committed as an image), and
    keeps the capabilities dpkg needs to set owners; everything else holds."""
    return {
        "network_mode": network,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(cpus * 1e9),
        "cpu_shares": cpu_shares,
        "pids_limit": pids,
        "cap_drop": None if installs_packages else ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": not installs_packages,
        "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={tmp_size}"},
        "init": True,
        "log_config": LogConfig(type="json-file", config={"max-size": str(log_bytes), "max-file": str(log_files)}),
    }
