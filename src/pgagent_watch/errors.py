"""The exceptions of pgagent-watch: one root, thin subclasses."""

from __future__ import annotations


class PgAgentWatchError(Exception):
    """Root of every error pgagent-watch raises on purpose."""


class ConfigError(PgAgentWatchError, ValueError):
    """The configuration file or an environment variable is invalid."""


class CaptureError(PgAgentWatchError, RuntimeError):
    """The capture schema could not be installed, upgraded or removed."""


class ReplayMarkError(PgAgentWatchError, RuntimeError):
    """A stored replay mark lies ahead of the server's transaction counter.

    This happens when a database is restored into a fresh cluster with
    pg_dump: the stored transaction ids belong to the old cluster.
    """


class StateUnavailable(PgAgentWatchError, ConnectionError):
    """The state database (users, sessions) cannot be reached right now.

    Nobody can be signed in or refused for sure: the API answers 503, not 401.
    """
