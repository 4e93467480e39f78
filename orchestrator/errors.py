"""The one exception root of the orchestrator.

Every error a user can cause or meet derives from ``OrchestratorError`` and carries the
exit status the command line uses for it, so the edge (``cli/``) prints one line and
exits without a traceback. Library exceptions (docker-py, GitPython, sqlite3) are turned
into these at the module that calls the library.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the orchestrator reports to a user."""

    exit_code = 3


class ConfigError(OrchestratorError):
    """config.yaml is unreadable or invalid: exit 2, as for bad usage."""

    exit_code = 2


class UsageError(OrchestratorError):
    """The command line or a request names something malformed."""

    exit_code = 2


class UnknownCommit(OrchestratorError):
    """A revision, sha prefix or job that does not exist (or is ambiguous)."""


class UnknownRepository(UsageError):
    """A repository name that config.yaml does not list."""


class Conflict(UsageError):
    """An operation the job's current status does not allow (retry a running job, say)."""


class MergeRefused(OrchestratorError):
    """A merge request that cannot become a candidate: it conflicts with its target, cannot
    be fast-forwarded, or has nothing to merge. The request is rejected, nothing tested."""


class NotActive(OrchestratorError):
    """This dispatcher no longer holds the active lease (another took over): it writes
    nothing, and steps down (store/leases.py)."""


class InfrastructureError(OrchestratorError):
    """Not the code under test speaking: a job that meets one is retried as a new attempt."""


class RepositoryError(InfrastructureError):
    """A repository could not be fetched or read."""


class EngineUnavailable(InfrastructureError):
    """The Docker engine did not answer."""


class ResultsUnwritable(InfrastructureError):
    """The result files could not be written (a full disk, a folder made unwritable)."""


class ContainerGone(InfrastructureError):
    """A job's container disappeared before it could be collected."""


class ImageMissing(OrchestratorError):
    """The runner image is not on the engine: the user has to build it."""


class InvalidTransition(Conflict):
    """A job status change that the lifecycle does not allow (or the job changed meanwhile):
    to a user, a conflict with the job's status (409, exit 2)."""


class DispatcherUnavailable(OrchestratorError):
    """The dispatcher's HTTP API did not answer or refused a request."""
