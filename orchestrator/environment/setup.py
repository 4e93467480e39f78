"""What a job's container runs in: the repository's own image, the runner image, or an
environment image built for what the commit declares; and what the entrypoint is told to
do there (install the commit, run another command, set variables)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.base import Backend, ImageInfo
from orchestrator.config import Config
from orchestrator.environment.build import Environments
from orchestrator.environment.needs import BadDeclaration, detect
from orchestrator.environment.settings import EnvironmentBroken
from runner_image import orchestrator_protocol as protocol


@dataclass(frozen=True)
class Setup:
    image: ImageInfo
    variables: dict[str, str]
    document: dict[str, Any] | None = None  # result.json's "environment"


def setup(
    config: Config,
    backend: Backend,
    environments: Environments | None,
    repository: str,
    src: Path,
    version: str | None,
    on_build: Callable[[str], None] = lambda _stage: None,
    python: str = "",
) -> Setup:
    """The image and variables for the checkout at ``src`` of ``repository``; ``version``
    (from ``git describe``) stands in for the ``.git`` the checkout does not have;
    ``python``: the variant's Python ("" for the repository's one).
    EnvironmentBroken when what the commit declares cannot be built."""
    repo = config.repository(repository)
    assert repo is not None
    variables = {
        **repo.env,
        **({protocol.COMMAND: repo.command} if repo.command else {}),
        **({protocol.RERUN_FAILURES: str(repo.rerun_failures)} if repo.rerun_failures else {}),
    }
    if repo.image:
        return Setup(backend.image(repo.image), variables)
    python = python or str(repo.python)
    runner = backend.image(config.runner.image_for(python))
    try:
        needs = dataclasses.replace(detect(src, repo.install), system_packages=tuple(sorted(repo.system_packages)))
    except BadDeclaration as exc:
        raise EnvironmentBroken(str(exc), None) from None
    if needs.empty or environments is None:
        return Setup(runner, variables)
    environment = environments.ensure(repository, needs, runner, python, on_build)
    if needs.install_project:
        variables[protocol.INSTALL] = "1"
        if version:
            for name in ("SETUPTOOLS_SCM_PRETEND_VERSION", "HATCH_VCS_PRETEND_VERSION", "PDM_BUILD_SCM_VERSION"):
                variables.setdefault(name, version)
    return Setup(environment.image, variables, environment.document())
