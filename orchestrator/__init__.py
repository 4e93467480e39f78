"""A self-hosted continuous-integration system: every new commit tested in its own container."""

__version__ = "0.1.0"
